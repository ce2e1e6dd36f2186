"""A worker's photo processes: untrusted bytes are parsed only there, where the worker can stop them.

`Sandboxes` asks a warm parent process (bbt.serving.sandbox_process.zygote, the model loaded once) for a few
processes forked from it: the service's, which the supervisor started and every worker shares (a worker starting
up only connects to it), or one of its own. `await sandboxes.classify(data, name, deadline, reserve)` hands a photo to an idle one
and returns its faces and size. The photo's deadline is the process's: when it passes, the process is killed
(SIGKILL through a pidfd) and a fresh fork takes its place, so no work outlives its 504. The process first
reads the photo's header and says what decoding may take; `reserve(cost)` admits that into the worker's memory
budget (or raises Busy), and the process then caps itself at what was reserved. An ordinary photo is granted
what it needs before it is sent, so it costs one exchange with its process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bbt.errors import ModelError
from bbt.model.face_prediction import FacePrediction
from bbt.serving.sandbox_process import (
    FORK,
    FRAME,
    MAX_REPLY_BYTES,
    RETIRE_AFTER_BYTES,
    recv_frame,
    send_frame,
    start_warm_parent,
)
from bbt.vision.faces import Box
from bbt.vision.images import ImageError

log = logging.getLogger("bbt.serving.sandbox")

MB = 1024 * 1024
# What reading a photo's header may take in its process (Pillow's parse of its metadata): a camera's EXIF is
# under 64 KB; an EXIF bomb (a 64x64 JPEG with a 9 MB orientation array) wanted +150-290 MiB, and is refused.
HEADER_BYTES = 32 * MB
# What classifying the decoded pixels may take beyond decoding them (detector input, crops, embeddings batch).
WORK_BYTES = 96 * MB
# What a photo is granted for decoding before its header is read: a JPEG decoded at up to 1280x1280 (what the
# detector needs) or a 1.6 MP image of another format. Larger photos ask for their cost (one more round trip).
GRANTED_DECODE_BYTES = 24 * MB
START_TIMEOUT_S = 300  # loading the model in the warm parent
# The environment variable naming the service's warm parent (an abstract unix socket's name) in its workers.
SHARED_PARENT_ENV = "BBT_PHOTO_PARENT"


class TimedOut(Exception):
    """The photo's deadline passed; its process was killed."""


@dataclass
class Classified:
    faces: list[FacePrediction]
    size: tuple[int, int]
    stages: dict[str, float] = field(default_factory=dict)


@dataclass
class PhotoProcess:
    pid: int
    pidfd: int
    sock: socket.socket

    @property
    def alive(self) -> bool:
        """False once it has ended: its pidfd turns readable then. (poll, not select: a busy worker's descriptors
        can be past select's 1024.)"""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had ended already (e.g. its CPU limit)
        os.close(self.pidfd)
        self.sock.close()


def abstract_address(name: str) -> str:
    """The abstract unix socket (Linux: no file, gone with its last descriptor) of a warm parent's name."""
    return "\0" + name


def face_from_dict(raw: dict[str, Any]) -> FacePrediction:
    """A face as its photo process sent it (FacePrediction.as_dict), every field back."""
    return FacePrediction(Box(**{k: int(v) for k, v in raw["box"].items()}), str(raw["label"]),
                          str(raw["closest_actor"]), float(raw["confidence"]),
                          {str(k): float(v) for k, v in raw["probabilities"].items()},
                          float(raw["distance"]), float(raw["threshold"]), str(raw.get("reason", "")))


class Sandboxes:
    """`processes` photo processes forked from one warm parent that loaded `factory(argument)`
    (bbt.serving.sandbox_process.load_work).

    `info`: what the warm parent told of its work (classes, open-set rule, decode side). The async methods run on
    the worker's event loop; forking runs on a thread (it waits on the warm parent).
    """

    def __init__(self, factory: str, argument: str, processes: int, max_pixels: int, cpu_seconds: float,
                 retire_after_bytes: int = RETIRE_AFTER_BYTES, shared_parent: str | None = None) -> None:
        self.max_pixels = max_pixels
        self.processes = processes
        self.zygote: subprocess.Popen[bytes] | None = None
        shared_parent = shared_parent if shared_parent is not None else os.environ.get(SHARED_PARENT_ENV)
        if shared_parent:  # the service's, which the supervisor started (bbt/serving/supervisor.py)
            self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._control.connect(abstract_address(shared_parent))
            except OSError as err:
                self._control.close()
                raise ModelError(f"the service's photo processes' parent ({shared_parent}) is not running ({err}): "
                                 "restart the service") from None
        else:  # a parent of its own (tests, benchmarks, a service not started by `bentoml serve`)
            self._control, theirs = socket.socketpair()
            self.zygote = start_warm_parent(factory, argument, connection=theirs)
            theirs.close()
        parent_pid = struct.unpack("3i", self._control.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        self._parent = os.pidfd_open(parent_pid)
        self._control.settimeout(START_TIMEOUT_S)
        try:
            send_frame(self._control, {"factory": factory, "argument": argument, "cpu_seconds": cpu_seconds,
                                       "retire_after_bytes": retire_after_bytes})
            hello, _ = recv_frame(self._control)
        except (EOFError, OSError, TimeoutError) as err:
            self.close()
            raise ModelError(f"the photo processes' parent did not start ({err}): see the log above") from None
        if "error" in hello:
            self.close()
            raise ModelError(f"the photo processes' parent could not load the model: {hello['error']}")
        self.info: dict[str, Any] = hello["ready"]
        if self.info.get("threads", 1) != 1:
            log.warning("the photo processes' parent runs %s Python threads; forking it copies only one",
                        self.info["threads"])
        log.debug("the photo processes' parent runs %s threads in all", self.info.get("native_threads"))
        self._control.settimeout(None)
        self._fork_lock = threading.Lock()
        self._idle = [self._fork() for _ in range(processes)]
        self._waiters: list[asyncio.Future[PhotoProcess]] = []

    # ---- processes ------------------------------------------------------------------------------------------

    def _fork(self) -> PhotoProcess:
        """A new photo process from the warm parent (blocking: a few milliseconds)."""
        with self._fork_lock:
            self._control.sendall(FORK)
            message, fds, _, _ = socket.recv_fds(self._control, 64, 2)
        if len(fds) != 2:
            raise ModelError("the photo processes' parent has ended: restart the service")
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        return PhotoProcess(int(message), fds[1], sock)

    async def _take(self) -> PhotoProcess:
        while self._idle:
            process = self._idle.pop()
            if process.alive:
                return process
            self._replace(process)  # ended while idle (killed from outside)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed one just as the wait was cancelled
                self._give(waiter.result())
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _give(self, process: PhotoProcess) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(process)
                return
        self._idle.append(process)

    def _replace(self, process: PhotoProcess) -> None:
        """Kill a process whose state is unknown (past its deadline, cancelled, or dead) and fork another on a
        thread, which hands it to the pool on the event loop (or straight to the idle list once the loop is gone)."""
        process.kill()
        loop = asyncio.get_running_loop()

        def refill() -> None:
            try:
                fresh = self._fork()
            except (OSError, ModelError) as err:
                log.error("could not fork a new photo process: %s", err)
                return
            try:
                loop.call_soon_threadsafe(self._give, fresh)
            except RuntimeError:  # the loop has closed (a test's asyncio.run): no photo waits on it
                self._idle.append(fresh)

        threading.Thread(target=refill, name="photo-process-refill", daemon=True).start()

    @property
    def alive(self) -> bool:
        """Whether the warm parent still runs (its pidfd turns readable when it ends)."""
        poller = select.poll()
        poller.register(self._parent, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        """Kill the photo processes and end their parent (tests; a worker's exit does the same)."""
        for process in getattr(self, "_idle", []):
            process.kill()
        self._idle = []
        self._control.close()
        if hasattr(self, "_parent"):
            os.close(self._parent)
            del self._parent
        if self.zygote is None:
            return  # the service's parent outlives this worker
        try:
            self.zygote.wait(10)
        except subprocess.TimeoutExpired:
            self.zygote.kill()
            self.zygote.wait()

    # ---- a photo --------------------------------------------------------------------------------------------

    async def classify(self, data: bytes, name: str, deadline: float, reserve: Callable[[int], None],
                       ) -> Classified:
        """Decode and classify `data` in a photo process before `deadline` (time.monotonic()).

        ImageError for anything that is not a usable image (or needs more memory than its size justifies);
        Busy from `reserve` when the decoding's memory does not fit; TimedOut past the deadline.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                process = await self._take()
        except TimeoutError:
            raise TimedOut from None
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                outcome, retire = await self._exchange(loop, process, data, name, reserve)
        except TimeoutError:
            self._replace(process)
            raise TimedOut from None
        except (EOFError, ConnectionError, ValueError) as err:  # it died: its CPU limit, a crash, the OOM killer
            self._replace(process)
            log.warning("a photo process ended while reading %s: %s", name, err)
            raise ImageError(f"{name} could not be decoded within the service's limits: re-save it as an "
                             "ordinary JPEG or PNG") from None
        except BaseException:
            self._replace(process)  # cancelled mid-photo: its state is unknown
            raise
        if retire:
            self._replace(process)  # it answered, and ends
        else:
            self._give(process)  # it answered, and waits for the next photo
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _exchange(self, loop: asyncio.AbstractEventLoop, process: PhotoProcess, data: bytes, name: str,
                        reserve: Callable[[int], None]) -> tuple[Classified | BaseException, bool]:
        """One photo's conversation with its process, and whether the process ends after it (it has grown: see
        sandbox_process.RETIRE_AFTER_BYTES). A refusal that leaves the process waiting for the next photo (a bad
        image, the memory budget's Busy) is returned, not raised.

        The photo is granted what an ordinary photo takes before it is sent; only a larger one asks for more
        once its header is read (one more round trip), so most photos cost one exchange.
        """
        granted = HEADER_BYTES + GRANTED_DECODE_BYTES + WORK_BYTES
        try:
            reserve(granted)
        except Exception as refused:  # noqa: BLE001 - whatever the budget raises (Busy) is the caller's answer
            return refused, False
        sock = process.sock
        await _send(loop, sock, {"name": name, "max_pixels": self.max_pixels, "header_bytes": HEADER_BYTES,
                                 "work_bytes": WORK_BYTES, "granted": granted}, data)
        answer = await _receive(loop, sock)
        if "cost" in answer:  # a photo larger than the grant
            try:
                reserve(HEADER_BYTES + int(answer["cost"]) + WORK_BYTES - granted)
            except Exception as refused:  # noqa: BLE001 - as above
                await _send(loop, sock, {"go": False})
                return refused, False
            await _send(loop, sock, {"go": True})
            answer = await _receive(loop, sock)
        retire = bool(answer.get("retire"))
        if "error" in answer:
            return ImageError(str(answer["error"])), retire
        width, height = answer["size"]
        return Classified([face_from_dict(face) for face in answer["faces"]], (int(width), int(height)),
                          {str(k): float(v) for k, v in answer["stages"].items()}), retire


async def _send(loop: asyncio.AbstractEventLoop, sock: socket.socket, message: dict[str, Any],
                payload: bytes = b"") -> None:
    head = json.dumps(message).encode()
    await loop.sock_sendall(sock, FRAME.pack(len(head), len(payload)) + head)
    if payload:
        await loop.sock_sendall(sock, payload)


async def _receive_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        read = await loop.sock_recv_into(sock, view[got:])
        if not read:
            raise EOFError("the photo process ended")
        got += read
    return buffer  # no copy: a photo's bytes are up to 10 MB


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> dict[str, Any]:
    head_size, payload_size = FRAME.unpack(await _receive_exactly(loop, sock, FRAME.size))
    if payload_size or head_size > MAX_REPLY_BYTES:
        raise ValueError("a photo process sent more than an answer")
    message = json.loads(await _receive_exactly(loop, sock, head_size))
    if not isinstance(message, dict):
        raise ValueError("a photo process sent something other than an answer")  # noqa: TRY004 - a dead process's kind
    return message
