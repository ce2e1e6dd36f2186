"""SIGTERM runs the same cleanup as Ctrl-C in the long-running commands, and a server stops with every process
under it (bbt/deploy/shutdown.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bbt.deploy.shutdown import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                Path(sys.argv[1]).write_text("cleaned up")
    except KeyboardInterrupt:
        print("stopped", flush=True)
""")


def test_sigterm_runs_the_cleanup_ctrl_c_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(marker)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[3])
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and out.strip() == "stopped"
    assert marker.read_text() == "cleaned up"


def test_the_previous_handler_comes_back() -> None:
    from bbt.deploy.shutdown import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


# A stand-in for `bentoml serve`: a supervisor whose two workers run in process groups of their own (as
# BentoML's do) and, busy on a photo, ignore SIGTERM. The supervisor either leaves at once (its workers become
# orphans) or waits for them. It prints the workers' pids.
SUPERVISOR = textwrap.dedent("""
    import signal, subprocess, sys, time

    busy = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    workers = [subprocess.Popen([sys.executable, "-c", busy], start_new_session=True, stdout=subprocess.PIPE)
               for _ in range(2)]
    for worker in workers:
        worker.stdout.readline()  # its SIGTERM handler is in place
    if sys.argv[1] == "waits":
        signal.signal(signal.SIGTERM, lambda *_: [w.wait() for w in workers])
    print(*(w.pid for w in workers), flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("supervisor", ["leaves", "waits"])
def test_a_server_stops_with_its_workers_in_their_own_process_groups(supervisor: str) -> None:
    from bbt.deploy.shutdown import is_running, stop_process_tree

    server = subprocess.Popen([sys.executable, "-c", SUPERVISOR, supervisor], stdout=subprocess.PIPE,
                              start_new_session=True)
    assert server.stdout is not None
    workers = [psutil.Process(int(pid)) for pid in server.stdout.readline().split()]
    try:
        assert len(workers) == 2 and all(os.getpgid(w.pid) != server.pid for w in workers)
        stop_process_tree(server, grace_s=0.5)
        assert server.poll() is not None
        assert [w.pid for w in workers if is_running(w)] == []
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
