"""What a command really reads, recorded so a test can hold dvc.yaml to it.

With BBT_RECORD_READS=<folder> set, the process records the params.yaml keys its code reads (`section.key`, not
counting params.yaml's own parsing and validation), the `bbt` modules whose functions it calls, and the files it
opens under the working directory, and writes them as JSON to <folder>/<command>.<pid>.json when it exits
(<command> is the `bbt` subcommand, e.g. `clean`). Forked workers (clean's process pool) write their own file.
Nothing is recorded otherwise.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RECORD_ENV = "BBT_RECORD_READS"

params_read: set[str] | None = None
_paused = 0
_in_forked_child = None


def start_recording(folder: str) -> None:
    """Record from now until exit (once per process; audit hooks cannot be removed)."""
    global params_read
    if params_read is not None:
        return
    from multiprocessing.util import Finalize, register_after_fork

    params_read = set()
    root = Path.cwd().resolve()
    package = Path(__file__).resolve().parent
    opened: set[str] = set()
    called: set[str] = set()

    def on_call(frame, event: str, arg: object) -> None:
        # Importing a module runs its body, class bodies and module-level comprehensions: that is not using it.
        if event == "call" and frame.f_code.co_name != "<module>" and \
                not (frame.f_back is not None and frame.f_back.f_code.co_name == "<module>"):
            called.add(frame.f_code.co_filename)

    def on_event(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            if "r" in mode and "+" not in mode:
                opened.add(os.fsdecode(args[0]))

    command = Path(sys.argv[1]).name if len(sys.argv) > 1 else "python"
    Path(folder).mkdir(parents=True, exist_ok=True)
    destination = [f"{folder}/{command}.{os.getpid()}.json"]

    def write() -> None:
        files = set()
        for name in opened:
            path = (root / name).resolve() if not os.path.isabs(name) else Path(name).resolve()
            if path.is_relative_to(root) and path.is_file():
                files.add(path.relative_to(root).as_posix())
        modules = sorted(Path(name).resolve().relative_to(root).as_posix() for name in called
                         if Path(name).resolve().is_relative_to(package) and Path(name).resolve().is_relative_to(root))
        Path(destination[0]).write_text(json.dumps({"params": sorted(params_read or ()), "modules": modules,
                                            "files": sorted(files)}, indent=1))

    def in_forked_child() -> None:
        # Pool workers leave through os._exit, past atexit; multiprocessing's own finalizers still run.
        destination[0] = f"{folder}/{command}.{os.getpid()}.json"
        opened.clear()
        called.clear()
        Finalize(None, write, exitpriority=100)

    sys.addaudithook(on_event)
    sys.settrace(on_call)
    threading.settrace(on_call)
    global _in_forked_child
    _in_forked_child = in_forked_child  # multiprocessing keeps only a weak reference
    register_after_fork(in_forked_child, lambda hook: hook())
    atexit.register(write)


def note_param(key: str) -> None:
    if params_read is not None and not _paused:
        params_read.add(key)


@contextmanager
def paused() -> Iterator[None]:
    """Reads inside are not noted: params.yaml's parsing and validation read every key."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
