"""BentoML's supervisor checks its workers every second and runs the service's warm parent
(bbt/serving/supervisor.py), so a dead worker is replaced within a second of its death plus a start-up that loads
no model (benchmarks/worker_restart.py measures both)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from bbt.serving.sandbox import Sandboxes
from bbt.serving.supervisor import ParentKeeper, start_shared_parent
from tests.bombs import jpeg

STAND_IN = ("tests.unit.serving.sandbox_work:one_face", "0")


def test_the_arbiter_bentoml_serve_makes_after_importing_the_service_checks_every_second() -> None:
    from bentoml._internal.utils.circus import create_standalone_arbiter

    import bbt.serving.service  # what `bentoml serve` imports before it makes the arbiter
    from bbt.serving.supervisor import CHECK_DELAY_S, supervise

    assert CHECK_DELAY_S <= 1
    arbiter = create_standalone_arbiter([])  # as `bentoml serve` calls it (BentoML's own default: every 10 s)
    assert arbiter.check_delay == CHECK_DELAY_S and arbiter.ctrl.check_delay == CHECK_DELAY_S * 1000
    assert not hasattr(arbiter, "photo_parent")  # no workers: no warm parent
    patched = type(arbiter)
    supervise(bbt.serving.service.shared_photo_work)  # again: nothing changes
    assert type(create_standalone_arbiter([])) is patched


def wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_workers_share_one_warm_parent_and_their_photo_processes_end_with_them() -> None:
    name, parent = start_shared_parent(STAND_IN)
    try:
        first = Sandboxes(*STAND_IN, processes=2, max_pixels=40_000_000, cpu_seconds=31, shared_parent=name)
        assert first.zygote is None and first.alive
        result = asyncio.run(first.classify(jpeg(), "the photo", time.monotonic() + 30, lambda cost: None))
        assert result.size == (160, 120)
        # A worker in another process, killed while it holds photo processes (one of them busy).
        worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from bbt.serving.sandbox import Sandboxes
            pool = Sandboxes({STAND_IN[0]!r}, "0", 2, 40_000_000, 31, shared_parent={name!r})
            print(" ".join(str(p.pid) for p in pool._idle), flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        theirs = [psutil.Process(int(pid)) for pid in worker.stdout.readline().split()]
        warm = psutil.Process(parent.pid)
        assert {p.pid for p in warm.children()} == {p.pid for p in theirs} | {p.pid for p in first._idle}
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in theirs), 5)
        assert {p.pid for p in warm.children()} == {p.pid for p in first._idle}  # the other worker's stay
        first.close()
        assert parent.poll() is None  # the service's parent outlives a worker
    finally:
        parent.kill()
        parent.wait()


def test_the_shared_warm_parent_ends_with_the_supervisor() -> None:
    supervisor = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from bbt.serving.supervisor import ParentKeeper, start_shared_parent
        from bbt.serving.sandbox import Sandboxes
        name, parent = start_shared_parent({STAND_IN!r})
        pool = Sandboxes({STAND_IN[0]!r}, "0", 1, 40_000_000, 31, shared_parent=name)
        print(parent.pid, pool._idle[0].pid, flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    processes = [psutil.Process(int(pid)) for pid in supervisor.stdout.readline().split()]
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes), 5)


def test_a_worker_imports_no_model_library() -> None:
    """What a new worker imports is its start-up: the model's libraries stay in the warm parent."""
    imported = subprocess.run([sys.executable, "-c", "import sys, bbt.serving.service; print(' '.join(sys.modules))"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert not {"sklearn", "scipy", "pandas", "mlflow", "onnxruntime", "dlib"} & set(imported)


def test_the_supervisor_starts_a_dead_warm_parent_again_and_the_workers_reconnect() -> None:
    """Issue 26: if the service's warm parent died, every worker stayed not ready for good. The arbiter's check
    (ParentKeeper.check, every second) starts it again under the same name; a worker reconnects by itself."""
    keeper = ParentKeeper(STAND_IN)
    pool = Sandboxes(*STAND_IN, processes=1, max_pixels=40_000_000, cpu_seconds=31, shared_parent=keeper.name)
    try:
        first, name = keeper.process.pid, keeper.name
        keeper.check()
        assert keeper.process.pid == first  # alive: left alone
        os.kill(first, signal.SIGKILL)
        keeper.process.wait()
        wait_for(lambda: not pool.alive, 5)

        def restarted() -> bool:  # the arbiter checks every second; the old socket's name may take a moment to free
            keeper.check()
            return keeper.process.pid != first

        wait_for(restarted, 10)
        assert keeper.name == name
        wait_for(lambda: pool.alive, 60)
        result = asyncio.run(pool.classify(jpeg(), "the photo", time.monotonic() + 30, lambda cost: None))
        assert result.size == (160, 120)
        assert {p.pid for p in psutil.Process(keeper.process.pid).children()} == {p.pid for p in pool._idle}
    finally:
        pool.close()
        keeper.process.kill()
        keeper.process.wait()
