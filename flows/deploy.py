"""The `retrain/weekly` deployment, and the one command that runs a local Prefect server and serves it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from uuid import UUID

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from bbt.deploy.shutdown import sigterm_as_interrupt
from bbt.errors import BbtError
from bbt.serving.ready import wait_until_ready
from flows.retrain import retrain

# The one place the schedule is set: Mondays 03:00 UTC (`bbt prefect serve --cron` overrides it per run).
WEEKLY_CRON = "0 3 * * 1"
TIMEZONE = "UTC"
DEPLOYMENT = "weekly"


class PrefectServerError(BbtError):
    """The Prefect server is not reachable or did not start."""


def weekly_deployment(cron: str = WEEKLY_CRON) -> RunnerDeployment:
    """The deployment `retrain/weekly`: the flow with its cron schedule and default parameters."""
    return retrain.to_deployment(
        name=DEPLOYMENT, schedule=Cron(cron, timezone=TIMEZONE), tags=["bbt", "retrain"],
        description="Retrain weekly; finishes at once with 'up to date' when data and params are unchanged.",
    )


def apply_deployment(cron: str = WEEKLY_CRON) -> UUID:
    """Create or update the deployment on the server at PREFECT_API_URL (cron needs a real server)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise PrefectServerError("PREFECT_API_URL is not set: start a server with `bbt prefect serve` "
                                 "(or `prefect server start`) and export PREFECT_API_URL=http://127.0.0.1:4200/api")
    return weekly_deployment(cron).apply()


def start_server(host: str, port: int) -> subprocess.Popen:
    """`prefect server start` on host:port, its SQLite database under PREFECT_HOME (default ~/.prefect)."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    # Prefect's banner, all it prints on stdout, says to `prefect config set PREFECT_API_URL`, which prefect.toml
    # makes needless: it is kept aside, and shown only if the server does not start (its reasons go there too).
    with tempfile.TemporaryFile() as said:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host,
                                   "--port", str(port)], env=env, stdout=said)
        try:
            wait_until_ready(f"http://{host}:{port}/api/health", 120, 0.5, alive=lambda: server.poll() is None,
                             what="the Prefect server", hint=f"is port {port} in use?")
        except BaseException:
            server.terminate()
            server.wait(30)
            said.seek(0)
            sys.stderr.write(said.read().decode(errors="replace"))
            raise
    return server


def serve_locally(host: str = "127.0.0.1", port: int = 4200, cron: str = WEEKLY_CRON) -> None:
    """Run the Prefect server and serve `retrain/weekly` from this process until Ctrl-C."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, Settings, temporary_settings

    configured = Settings().api.url  # what a shell in the project root gives Prefect commands (prefect.toml)
    with sigterm_as_interrupt():
        server = start_server(host, port)
        api_url = f"http://{host}:{port}/api"
        # The served runs are subprocesses: they find the server through the environment.
        os.environ["PREFECT_API_URL"] = api_url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                print(f"Prefect UI on http://{host}:{port}; serving retrain/{DEPLOYMENT} on cron '{cron}' "
                      f"({TIMEZONE})")
                if configured != api_url:
                    print(f"Prefect commands in another shell need: export PREFECT_API_URL={api_url}")
                serve(weekly_deployment(cron))
        finally:
            server.terminate()
            server.wait(30)
