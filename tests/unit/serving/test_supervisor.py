"""BentoML's supervisor checks its workers every second (bbt/serving/supervisor.py), so a dead one is replaced
within a second of its death plus its start-up (benchmarks/worker_restart.py measures both)."""

from __future__ import annotations


def test_the_arbiter_bentoml_serve_makes_after_importing_the_service_checks_every_second() -> None:
    from bentoml._internal.utils.circus import create_standalone_arbiter

    import bbt.serving.service  # noqa: F401 - what `bentoml serve` imports before it makes the arbiter
    from bbt.serving.supervisor import CHECK_DELAY_S, respawn_promptly

    assert CHECK_DELAY_S <= 1
    arbiter = create_standalone_arbiter([])  # as `bentoml serve` calls it (BentoML's own default: every 10 s)
    assert arbiter.check_delay == CHECK_DELAY_S and arbiter.ctrl.check_delay == CHECK_DELAY_S * 1000
    patched = type(arbiter)
    respawn_promptly()  # again: nothing changes
    assert type(create_standalone_arbiter([])) is patched
