"""How long a killed serving worker takes to be replaced: kill -9 a worker of `bbt serve`, then time until its
supervisor starts another (spawned) and until the service answers /readyz again (ready). With `--kill parent`,
the photo processes' warm parent is killed instead (the supervisor starts another; the workers reconnect).

    python benchmarks/worker_restart.py --project . --rounds 5 [--kill parent]

The server runs one worker, so /readyz needs the replacement: a request sent after the kill waits in the
listening socket's backlog (the supervisor holds the socket) until the replacement accepts it, so `ready` is
what a client waits. The champion is imported into a BentoML store of the script's own (a temporary folder), not
the machine's. The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bbt.deploy.shutdown import stop_process_tree
from bbt.serving.ready import free_port
from bbt.serving.supervisor import YOUNG_S

WORKER_MODULE = "_bentoml_impl.worker"  # in the command line of each BentoML worker process
PARENT_MODULE = "bbt.serving.sandbox_process"  # the warm parent's (and its forks') command line


def workers(server: psutil.Process) -> set[int]:
    found = set()
    for process in server.children(recursive=True):
        try:
            if any(WORKER_MODULE in part for part in process.cmdline()):
                found.add(process.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def warm_parents(server: psutil.Process) -> set[int]:
    """The warm parents under `server`: processes running PARENT_MODULE that are not forks of one."""
    found = set()
    for process in server.children(recursive=True):
        try:
            if (process.status() != psutil.STATUS_ZOMBIE and PARENT_MODULE in " ".join(process.cmdline())
                    and PARENT_MODULE not in " ".join(process.parent().cmdline())):
                found.add(process.pid)
        except psutil.Error:
            continue
    return found


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def wait(condition, timeout_s: float = 120) -> float:
    """Seconds until condition() is true (polled every 10 ms); exits when it never is."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            sys.exit(f"not within {timeout_s:g} s")
        time.sleep(0.01)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kill", choices=("worker", "parent"), default="worker",
                        help="What is killed each round: the worker, or the photo processes' warm parent.")
    parser.add_argument("--log", type=Path, default=Path(os.devnull), help="Where the server's output goes.")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    venv = Path(sys.executable).parent
    home = tempfile.mkdtemp(prefix="bbt-restart-bentoml-")
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}", "BENTOML_HOME": home,
           "BENTOML_CONFIG_OPTIONS": "services.ActorService.workers=1"}
    with args.log.open("wb") as log:
        server = subprocess.Popen([str(venv / "bbt"), "serve", "--port", str(port)], cwd=args.project, env=env,
                                  start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = wait(lambda: ready(url), 300)
        supervisor = psutil.Process(server.pid)
        wait(lambda: len(workers(supervisor)) == 1)
        victims = workers if args.kill == "worker" else warm_parents
        print(f"bbt serve ready in {started:.1f} s; load average {os.getloadavg()[0]:.1f}")
        spawned, answered = [], []
        for round_ in range(1, args.rounds + 1):
            # The replacement of the previous round has settled; a warm parent that ends young is started
            # again only after a pause (a crash loop: bbt/serving/supervisor.py YOUNG_S), so let it age past that.
            time.sleep(2 if args.kill == "worker" else YOUNG_S + 1)
            before = victims(supervisor)
            [victim] = before
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait(lambda: bool(victims(supervisor) - before))  # noqa: B023 - used within the iteration
            spawned.append(time.monotonic() - killed)
            wait(lambda: ready(url))
            answered.append(time.monotonic() - killed)
            print(f"round {round_}: {args.kill} {victim} killed; another spawned after {spawned[-1]:.2f} s, "
                  f"/readyz 200 after {answered[-1]:.2f} s (load average {os.getloadavg()[0]:.1f})")
        print(f"spawned after: median {statistics.median(spawned):.2f} s, max {max(spawned):.2f} s; "
              f"ready after: median {statistics.median(answered):.2f} s, max {max(answered):.2f} s")
    finally:
        stop_process_tree(server)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
