"""What one worker process takes on: photos in flight, bounded by their number and by the memory they need.

A photo is admitted once its request's body has arrived, with the memory its upload takes; once its photo
process (bbt.serving.sandbox) has read its header, it grows by the most its decoding and classification can
allocate, which the process then cannot exceed. Its ticket is released when its request ends: its work has ended
then, since a photo past its deadline has its process killed. Past either bound the worker answers Busy with a
Retry-After estimate at once, so it never holds more than its memory budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MB = 1024 * 1024


class Busy(Exception):
    """This worker cannot take the photo now; the client should come back in `retry_after` seconds."""

    def __init__(self, retry_after: int, why: str) -> None:
        super().__init__(f"busy ({why}): retry after {retry_after} s")
        self.retry_after = retry_after
        self.why = why


@dataclass
class Ticket:
    """One admitted photo: the bytes reserved for it."""

    cost: int


class Admission:
    """The photos a worker holds (classified or waiting) and the bytes reserved for them.

    Everything but `observe` (a Retry-After hint) runs on the event loop's thread only.
    """

    def __init__(self, max_pending: int, memory_bytes: int, threads: int) -> None:
        self.max_pending = max_pending
        self.memory_bytes = memory_bytes
        self.threads = threads  # photos classified at once (photo processes)
        self.pending = 0
        self.reserved = 0
        self.seconds_per_photo = 0.1

    def check(self, cost: int = 0) -> Busy | None:
        """Busy when a new photo of `cost` bytes does not fit now. A worker with nothing in flight takes any
        photo (params validation checks that the largest photo the limits admit fits the whole budget)."""
        if self.pending >= self.max_pending:
            return Busy(self.retry_after(self.pending), f"{self.pending} photos are already in this worker")
        return self._out_of_memory(cost) if self.pending else None

    def admit(self, cost: int) -> Ticket:
        """A ticket for a new photo of `cost` bytes, or Busy."""
        busy = self.check(cost)
        if busy is not None:
            raise busy
        self.pending += 1
        self.reserved += cost
        return Ticket(cost)

    def grow(self, ticket: Ticket, extra: int) -> None:
        """Reserve `extra` bytes more for an admitted photo, or Busy (the ticket keeps what it had)."""
        busy = self._out_of_memory(extra) if self.pending > 1 else None
        if busy is not None:
            raise busy
        ticket.cost += extra
        self.reserved += extra

    def _out_of_memory(self, extra: int) -> Busy | None:
        if self.reserved + extra <= self.memory_bytes:
            return None
        return Busy(self.retry_after(self.pending), f"the photos in this worker already hold "
                                                    f"{self.reserved / MB:.0f} of its {self.memory_bytes / MB:.0f} MB")

    def release(self, ticket: Ticket) -> None:
        """The photo is done: free its place and its bytes."""
        self.pending -= 1
        self.reserved -= ticket.cost

    def observe(self, seconds: float) -> None:
        """A photo's work took `seconds` (not its wait): a moving average for the Retry-After estimate."""
        self.seconds_per_photo += 0.1 * (seconds - self.seconds_per_photo)

    def retry_after(self, queued: int) -> int:
        # The queue drains `threads` photos at a time.
        return max(1, math.ceil(queued * self.seconds_per_photo / self.threads))
