"""Prefect flows over the bbt stages: `retrain` (flows/retrain.py), its schedule and server (flows/deploy.py)."""

import os

import bbt  # noqa: F401  (offline defaults: no Prefect analytics or promotions; set before Prefect is imported)

# Set before Prefect is imported: the bbt stage loggers (counts, progress) go to the Prefect task logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bbt")
# Without PREFECT_API_URL, `bbt prefect run` starts a temporary server: give it time on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
