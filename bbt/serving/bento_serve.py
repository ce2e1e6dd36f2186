"""`python -m bbt.serving.bento_serve <bentoml serve arguments>`: `bentoml serve` with a Prometheus folder of its own.

BentoML's default folder, under BENTOML_HOME, is shared by every server started on that home, and wiped by each
one as it starts, so /metrics would count (and lose) other servers' requests. `bbt serve` replaces itself with
this module, in a fresh interpreter that has not imported what importing the champion needed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile


def serve(arguments: list[str]) -> None:
    """Run `bentoml serve <arguments>` in this process: Ctrl-C and SIGTERM reach its supervisor directly."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    metrics = tempfile.mkdtemp(prefix="bbt-serve-metrics-")
    BentoMLContainer.prometheus_multiproc_dir.set(metrics)
    try:
        cli.main(["serve", *arguments], prog_name="bentoml")
    finally:
        shutil.rmtree(metrics, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1:])
