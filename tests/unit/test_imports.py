"""Layers point one way and nothing imports in a cycle: each module of bbt/ and flows/ imports on its own, and
the import-linter contracts in pyproject.toml (the layers, the flows kept out of the library, no circles) hold."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert {"bbt.cli", "bbt.deploy.cli", "bbt.serving.service", "flows.cli", "flows.retrain"} <= set(modules)
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


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter's contracts of `root`/pyproject.toml (the layers, the flows kept out, no circles) on its code."""
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_layer_contracts_hold() -> None:
    checked = lint_imports(REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 kept, 0 broken" in checked.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("bbt/vision/images.py", "from bbt.serving import service", "layers point one way"),
    ("bbt/model/openset.py", "import flows.retrain", "never imports the orchestration package"),
    ("bbt/monitoring/logs.py", "from bbt.monitoring import report", "no import circles"),
])
def test_the_contracts_catch_an_import_that_breaks_them(tmp_path: Path, module: str, line: str, broken: str) -> None:
    for part in ("bbt", "flows"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "web"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as code:
        code.write(f"\n{line}\n")
    checked = lint_imports(tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert broken in checked.stdout.split("Broken contracts")[1]


def test_the_top_level_keeps_the_cli_config_errors_and_few_helpers() -> None:
    top = sorted(path.name for path in (REPO / "bbt").glob("*.py"))
    assert len(top) <= 8, top
    assert {"cli.py", "config.py", "errors.py"} <= set(top)
    packages = sorted(path.parent for path in (REPO / "bbt").glob("*/__init__.py"))
    assert len(packages) >= 8
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "Imports" in doc, f"{package.name}/__init__.py: say what it owns and what it may import"
