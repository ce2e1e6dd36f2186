"""Prefect flows over the bbt stages: `retrain` (flows/retrain.py), its schedule and server (flows/deploy.py)."""

import os

# Set before Prefect is imported: no telemetry or promotions from a server that must work offline,
# and the bbt stage loggers (counts, progress) go to the Prefect task logs.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bbt")
# Without PREFECT_API_URL, `bbt prefect run` starts a temporary server: give it time on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
