"""A worker's admission of photos, by count and by memory, without a server."""

from __future__ import annotations

import pytest

from bbt.serving.admission import MB, Admission, Busy


def test_photos_are_admitted_up_to_the_count_and_the_memory_and_released() -> None:
    admission = Admission(max_pending=3, memory_bytes=100 * MB, threads=2)
    first = admission.admit(60 * MB)
    busy = admission.check(50 * MB)
    assert busy is not None and busy.why == "the photos in this worker already hold 60 of its 100 MB"
    second = admission.admit(30 * MB)
    admission.grow(second, 10 * MB)  # exactly fills the budget
    with pytest.raises(Busy):
        admission.grow(second, 1)
    assert second.cost == 40 * MB and admission.reserved == 100 * MB  # the ticket keeps what it had
    admission.release(first)
    third, fourth = admission.admit(10 * MB), admission.admit(0)
    busy = admission.check(0)
    assert busy is not None and busy.why == "3 photos are already in this worker"
    for ticket in (second, third, fourth):
        admission.release(ticket)
    assert admission.pending == 0 and admission.reserved == 0


def test_an_idle_worker_takes_a_photo_larger_than_its_budget() -> None:
    """Params validation checks that the largest photo the limits admit fits the budget; an idle worker never
    refuses a photo, so a client is not told to retry what can never fit."""
    admission = Admission(max_pending=4, memory_bytes=10 * MB, threads=2)
    ticket = admission.admit(8 * MB)
    admission.grow(ticket, 3 * MB)
    assert admission.check(1) is not None


def test_retry_after_is_the_queue_drained_threads_at_a_time() -> None:
    admission = Admission(max_pending=16, memory_bytes=MB, threads=2)
    admission.seconds_per_photo = 0.5
    assert admission.retry_after(16) == 4 and admission.retry_after(0) == 1
    admission.observe(1.5)  # a moving average: one slow photo moves it a tenth of the way
    assert abs(admission.seconds_per_photo - 0.6) < 1e-9
