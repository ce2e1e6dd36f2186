"""SIGTERM runs the same cleanup as Ctrl-C in the long-running commands (bbt/deploy/shutdown.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

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
