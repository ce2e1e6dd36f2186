"""Import each named module on its own, with none of its package's other modules loaded: a cycle shows.

    python tests/isolated_imports.py ROOT MODULE...   # prints one JSON object: {module: traceback} of failures

A fresh interpreter per module would take minutes on 2 cores (bbt.service alone imports BentoML, ~10 s), so this
one imports the third-party modules the project's modules name first, then forks a child per module: each child
starts with no module of ROOT's packages loaded, which is what a fresh interpreter would see of them.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import sys
import traceback
from pathlib import Path


def module_file(root: Path, module: str) -> Path:
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def third_party_imports(root: Path, modules: list[str]) -> set[str]:
    """Absolute imports of the modules that are neither the standard library nor ROOT's own packages."""
    ours = {module.split(".")[0] for module in modules}
    named: set[str] = set()
    for module in modules:
        for node in ast.walk(ast.parse(module_file(root, module).read_text())):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                named.add(node.module)
    return {name for name in named
            if name.split(".")[0] not in ours and name.split(".")[0] not in sys.stdlib_module_names}


def import_alone(module: str) -> str | None:
    """Import `module` in a forked child; its traceback when the import fails, else None."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, leave without running the parent's exit handlers
        os.close(read)
        try:
            importlib.import_module(module)
            message = b""
        except BaseException:  # noqa: BLE001  (an exit at import time is a failure too)
            message = traceback.format_exc().encode()
        with os.fdopen(write, "wb") as out:
            out.write(message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        message = answer.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        message = message or f"the child importing {module} exited with status {status}"
    return message or None


def main(root: Path, modules: list[str]) -> dict[str, str]:
    sys.path.insert(0, str(root))
    for name in sorted(third_party_imports(root, modules)):
        with contextlib.suppress(Exception):  # the child importing it will say what is wrong
            importlib.import_module(name)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {n.split(".")[0] for n in modules})
    if loaded:
        raise SystemExit(f"the third-party imports loaded project modules {loaded}: no isolation")
    return {module: error for module in modules if (error := import_alone(module)) is not None}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2:])))
