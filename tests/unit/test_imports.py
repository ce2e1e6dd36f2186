"""Layers point one way and nothing imports in a cycle: each module of bbt/ and flows/ imports on its own,
and the library (bbt/) never imports the orchestration package (flows/)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).resolve().parents[1] / "isolated_imports.py"


def modules_of(root: Path, *packages: str) -> list[str]:
    """The dotted names of every module of `packages` under `root`, entry scripts (__main__) left out."""
    names = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__main__":  # runs the CLI when imported
                continue
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def start_import_check(root: Path, modules: list[str]) -> subprocess.Popen:
    """Import each module on its own (isolated_imports.py) in a fresh interpreter; read with `failed_imports`."""
    return subprocess.Popen([sys.executable, str(HELPER), str(root), *modules], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def failed_imports(process: subprocess.Popen) -> dict[str, str]:
    """{module: traceback} of the modules that failed to import on their own."""
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return json.loads(stdout.splitlines()[-1])


def test_every_module_imports_on_its_own(import_check: subprocess.Popen) -> None:
    modules = import_check.args[3:]
    assert {"bbt.cli", "bbt.deploy.cli", "bbt.service", "flows.cli", "flows.retrain"} <= set(modules)
    failures = failed_imports(import_check)
    assert not failures, "\n\n".join(f"{module}:\n{error}" for module, error in failures.items())


def test_the_check_finds_an_import_cycle(tmp_path: Path) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    # The shape bbt/cli.py and bbt/deploy/cli.py had: each takes a name from the other, one at its end.
    (package / "main.py").write_text("import json\n\ndef helper():\n    pass\n\nfrom cyclic.sub import sub_app\n")
    (package / "sub.py").write_text("from cyclic.main import helper\n\nsub_app = helper\n")
    failures = failed_imports(start_import_check(tmp_path, ["cyclic", "cyclic.main", "cyclic.sub"]))
    assert set(failures) == {"cyclic.sub"}
    assert "partially initialized module" in failures["cyclic.sub"]


def test_the_library_never_imports_the_flows() -> None:
    offenders = []
    for path in sorted((REPO / "bbt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {name}" for name in names
                          if name.split(".")[0] == "flows"]
    assert not offenders, "\n".join(offenders)
