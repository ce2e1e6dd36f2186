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
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bbt.errors import ModelError
from bbt.model.face_prediction import FacePrediction
from bbt.serving.admission import Busy
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
RECONNECT_DELAY_S = 0.2  # between tries to reach a warm parent's replacement
# What a photo whose process died with its parent is told: a new parent loads the model first (7-10 s measured
# on a loaded 2-core machine, benchmarks/worker_restart.py --kill parent).
RESTART_RETRY_AFTER_S = 10


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
    parent: int = 0  # which warm parent forked it (Sandboxes counts the parents it has connected to)

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
        self._work = {"factory": factory, "argument": argument, "cpu_seconds": cpu_seconds,
                      "retire_after_bytes": retire_after_bytes}
        self._shared_parent = shared_parent if shared_parent is not None else os.environ.get(SHARED_PARENT_ENV)
        self._fork_lock = threading.Lock()
        self._closed = threading.Event()
        self._up = threading.Event()  # connected to a live warm parent
        self._parents = 0  # how many warm parents this worker has connected to: the current one's number
        self._connect()
        self._idle = [self._fork() for _ in range(processes)]
        self._waiters: list[asyncio.Future[PhotoProcess]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop photos last waited on
        threading.Thread(target=self._keep_parent, name="photo-parent-keeper", daemon=True).start()

    # ---- the warm parent ------------------------------------------------------------------------------------

    def _connect(self) -> None:
        """Connect to the warm parent (the service's, or a new one of this worker's own) and wait for its model."""
        if self._shared_parent:  # the service's, which the supervisor started (bbt/serving/supervisor.py)
            self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._control.connect(abstract_address(self._shared_parent))
            except OSError as err:
                self._control.close()
                raise ModelError(f"the service's photo processes' parent ({self._shared_parent}) is not running "
                                 f"({err}): restart the service") from None
        else:  # a parent of its own (tests, benchmarks, a service not started by `bentoml serve`)
            self._control, theirs = socket.socketpair()
            self.zygote = start_warm_parent(self._work["factory"], self._work["argument"], connection=theirs)
            theirs.close()
        self._control.settimeout(START_TIMEOUT_S)
        try:
            send_frame(self._control, self._work)
            hello, _ = recv_frame(self._control)
        except (EOFError, OSError, TimeoutError) as err:
            self._disconnect()
            raise ModelError(f"the photo processes' parent did not start ({err}): see the log above") from None
        if "error" in hello:
            self._disconnect()
            raise ModelError(f"the photo processes' parent could not load the model: {hello['error']}")
        # Its pid from its hello: the socket's peer credentials name whoever made the socket (the supervisor).
        try:
            self._parent = os.pidfd_open(int(hello["pid"]))
        except ProcessLookupError:
            self._disconnect()
            raise ModelError("the photo processes' parent ended as it started: see the log above") from None
        self.info: dict[str, Any] = hello["ready"]
        if self.info.get("threads", 1) != 1:
            log.warning("the photo processes' parent runs %s Python threads; forking it copies only one",
                        self.info["threads"])
        log.debug("the photo processes' parent runs %s threads in all", self.info.get("native_threads"))
        self._control.settimeout(None)
        self._parents += 1
        self._up.set()

    def _disconnect(self) -> None:
        self._up.clear()
        self._control.close()
        if hasattr(self, "_parent"):
            os.close(self._parent)
            del self._parent
        if self.zygote is not None:  # this worker's own: it ends once its control socket closes
            try:
                self.zygote.wait(10)
            except subprocess.TimeoutExpired:
                self.zygote.kill()
                self.zygote.wait()
            self.zygote = None

    def _keep_parent(self) -> None:
        """When the warm parent ends (killed, out of memory), connect to its replacement: the supervisor starts
        the service's again under the same name (bbt/serving/supervisor.py); a worker's own is started anew. Its
        photo processes died with it; each is replaced when next taken, from the new parent."""
        while not self._closed.is_set():
            poller = select.poll()
            with self._fork_lock:
                if self._closed.is_set() or not self._up.is_set():
                    return
                poller.register(self._parent, select.POLLIN)
            if not poller.poll(1000):
                continue
            self._up.clear()
            log.warning("the photo processes' parent has ended; connecting to its replacement")
            deadline = time.monotonic() + START_TIMEOUT_S
            with self._fork_lock:
                while not self._closed.is_set():
                    self._disconnect()
                    try:
                        self._connect()
                        break
                    except ModelError as err:
                        if time.monotonic() > deadline:
                            log.error("no photo processes' parent to connect to: %s", err)
                            return
                        # The supervisor checks its processes every second; its new parent then loads the model.
                        self._closed.wait(RECONNECT_DELAY_S)
            log.warning("connected to the photo processes' new parent")
            self._refill_dead()

    def _refill_dead(self) -> None:
        """Replace the idle processes that died with the old parent now, not when a photo next needs one."""
        for process in [p for p in list(self._idle) if not p.alive]:
            try:
                self._idle.remove(process)
            except ValueError:  # a photo took it meanwhile, and replaces it itself
                continue
            process.kill()
            try:
                self._idle.append(self._fork())
            except ModelError as err:
                log.error("could not fork a new photo process: %s", err)
                return
            self._wake_soon()

    def _wake_soon(self) -> None:
        """From a thread: wake the photos waiting on the event loop, if any (_wake)."""
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop has closed: no photo waits on it
            pass

    # ---- processes ------------------------------------------------------------------------------------------

    def _fork(self) -> PhotoProcess:
        """A new photo process from the warm parent (blocking: a few milliseconds)."""
        with self._fork_lock:
            if self._closed.is_set():
                raise ModelError("the photo processes are closed")
            parent = self._parents
            try:
                self._control.sendall(FORK)
                message, fds, _, _ = socket.recv_fds(self._control, 64, 2)
            except OSError:
                fds = []
        if len(fds) != 2:
            raise ModelError("the photo processes' parent has ended: restart the service")
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        return PhotoProcess(int(message), fds[1], sock, parent)

    async def _take(self) -> PhotoProcess:
        # Before looking at the idle list: a refill that finds it empty-handed then wakes this loop (tests run
        # several loops in turn; a service, one).
        self._loop = asyncio.get_running_loop()
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

    def _wake(self) -> None:
        """Hand idle processes to the photos waiting for one (on the event loop)."""
        while self._waiters and self._idle:
            process = self._idle.pop()
            if process.alive:
                self._give(process)
            else:
                self._replace(process)

    def _replace(self, process: PhotoProcess) -> None:
        """Kill a process whose state is unknown (past its deadline, cancelled, or dead) and fork another on a
        thread, which puts it in the idle list and wakes a photo waiting for one."""
        process.kill()

        def refill() -> None:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    fresh = self._fork()
                    break
                except ModelError as err:  # the warm parent ended: the keeper connects to its replacement
                    if self._closed.is_set() or time.monotonic() > deadline:
                        log.error("could not fork a new photo process: %s", err)
                        return
                    self._closed.wait(RECONNECT_DELAY_S)
            # Idle first, then a photo waiting for it is woken on the loop: a loop that ends before the wake-up runs
            # (a test's asyncio.run) loses no process.
            self._idle.append(fresh)
            self._wake_soon()

        threading.Thread(target=refill, name="photo-process-refill", daemon=True).start()

    @property
    def alive(self) -> bool:
        """Whether the warm parent runs: False from its end until this worker is connected to its replacement."""
        parent = getattr(self, "_parent", None) if self._up.is_set() else None
        if parent is None:
            return False
        poller = select.poll()
        poller.register(parent, select.POLLIN)  # readable once it has ended (before the keeper wakes)
        return not poller.poll(0)  # (a descriptor the keeper has just closed polls as POLLNVAL: not alive)

    def close(self) -> None:
        """Kill the photo processes and end their parent if it is this worker's own (tests; a worker's exit does
        the same)."""
        self._closed.set()
        with self._fork_lock:
            for process in getattr(self, "_idle", []):
                process.kill()
            self._idle = []
            self._disconnect()

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
            # It died with its parent, not of the photo: the parent is dead, or already replaced (the keeper can
            # connect to the new one before this photo reads its process's end).
            if process.parent != self._parents or not self.alive:
                raise Busy(RESTART_RETRY_AFTER_S, "its photo processes are restarting") from None
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
