"""BentoML's supervisor (a circus arbiter) replaces a dead worker promptly.

The arbiter notices a dead worker only when it next checks its processes, and BentoML sets that check to every
10 s (circus' own default is 1 s): a worker killed by the kernel (out of memory, kill -9) was replaced 0-10 s
late, on top of the new worker's start-up. `respawn_promptly` makes the arbiter `bentoml serve` creates in this
process check every CHECK_DELAY_S. bbt/serving/service.py calls it when imported: `bentoml serve` (bbt serve,
staging, the EC2 unit) imports the service in its supervisor process before it creates the arbiter.
"""

from __future__ import annotations

from typing import Any

CHECK_DELAY_S = 1.0


def respawn_promptly(check_delay_s: float = CHECK_DELAY_S) -> None:
    """Before `bentoml serve` runs in this process: its arbiter checks its workers every `check_delay_s`."""
    from bentoml._internal.utils import circus

    if getattr(circus.Arbiter, "check_delay_s", None) == check_delay_s:
        return

    class PromptArbiter(circus.Arbiter):  # type: ignore[misc,name-defined]
        """BentoML's arbiter, checking its workers every `check_delay_s`."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "check_delay": check_delay_s})

    PromptArbiter.check_delay_s = check_delay_s
    # create_standalone_arbiter (what `bentoml serve` calls) looks the class up in its module when it runs.
    circus.Arbiter = PromptArbiter
