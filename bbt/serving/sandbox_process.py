"""Inside the photo processes: the warm parent (`zygote`) that forks them, and the loop each one runs.

Everything that parses an uploaded photo runs here, in a process the serving worker can kill: the header read
for the memory estimate, the decode, detection, the crops, the features and the classifier. Only small JSON
messages come back (the faces, the photo's size, each stage's seconds), never pixels and never pickles.

Each photo runs under limits the process sets on itself before touching its bytes: RLIMIT_DATA (the heap and
every private writable mapping) at what the worker reserved for it in its memory budget, so a photo cannot take
more than was admitted, and RLIMIT_CPU at the photo's time limit, a backstop for the worker's kill at the deadline.

The wire format (`send_frame`/`recv_frame`): a frame is two 4-byte lengths, a JSON object and a payload.
A worker and the warm parent:
  worker -> parent: {"factory", "argument", "cpu_seconds", "retire_after_bytes"} once, on connecting
  parent -> worker: {"ready": what the work is (`describe`)} | {"error": why the parent has no such work}
  then, for each photo process: worker -> parent: FORK (one byte); parent -> worker: its pid, with its socket's
  end and a pidfd of it (SCM_RIGHTS)
A worker and a photo process:
  worker -> process: {"name", "max_pixels", "header_bytes", "work_bytes", "granted"} + the photo's bytes
  only when header_bytes + the decoding's cost + work_bytes is over what was granted:
    process -> worker: {"cost": bytes its decoding may take}
    worker -> process: {"go": true} (admitted) | {"go": false} (refused: the process waits for the next photo)
  process -> worker: {"faces": [...], "size": [w, h], "stages": {stage: seconds}} | {"error": message},
                     with "retire": true when the process ends after it (RETIRE_AFTER_BYTES)
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from bbt.model.face_prediction import FacePrediction
from bbt.vision.images import ImageError, Photo, decode_cost, decode_photo

FRAME = struct.Struct("!II")  # the JSON's length, the payload's length
# What the worker reads from a process: small JSON, no payload (a process that misbehaves cannot flood it).
MAX_REPLY_BYTES = 4 * 1024 * 1024
PR_SET_PDEATHSIG = 1
# A photo process that has grown this much since it was forked (heap kept for reuse, fragmentation) ends after its
# answer, and a fresh fork takes its place: what the processes hold stays bounded over any run.
RETIRE_AFTER_BYTES = 128 * 1024 * 1024
FORK = b"f"
# No library thread pools in the warm parent: a process forked from a multi-threaded parent may inherit a held lock.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "JE_ARROW_MALLOC_CONF": "background_thread:false"}


class PhotoWork(Protocol):
    """What a photo process runs: the served classifier (bbt.model.predict.ActorClassifier) or a test's stand-in."""

    @property
    def decode_side(self) -> int: ...

    def classify(self, photo: Photo, timed: Callable[[str], AbstractContextManager[Any]]) -> list[FacePrediction]: ...


# ---- framing ----------------------------------------------------------------------------------------------

def send_frame(sock: socket.socket, message: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps(message).encode()
    sock.sendall(FRAME.pack(len(head), len(payload)) + head)
    if payload:
        sock.sendall(payload)


def recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        read = sock.recv_into(view[got:])
        if not read:
            raise EOFError("the other end closed the connection")
        got += read
    return buffer  # no copy: a photo's bytes are up to 10 MB


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes | bytearray]:
    head_size, payload_size = FRAME.unpack(recv_exactly(sock, FRAME.size))
    message = json.loads(recv_exactly(sock, head_size))
    return message, recv_exactly(sock, payload_size) if payload_size else b""


# ---- limits -----------------------------------------------------------------------------------------------

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def data_bytes() -> int:
    """This process's data size (VmData, what RLIMIT_DATA counts, plus its stack): /proc/self/statm's 6th field,
    cheaper to read than /proc/self/status."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[5]) * PAGE_BYTES


@contextmanager
def memory_cap(extra: int) -> Iterator[None]:
    """At most `extra` bytes more of heap and private mappings inside the block: past it, allocations fail
    (MemoryError), the process stays up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def limit_cpu(seconds: float) -> None:
    """SIGXCPU (which ends the process) once it has used `seconds` more CPU time than now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(used + seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def die_with_parent() -> None:
    """SIGKILL this process when the process that forked it ends (Linux' PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# ---- one photo process ------------------------------------------------------------------------------------

def stage_clock(stages: dict[str, float]) -> Callable[[str], AbstractContextManager[None]]:
    @contextmanager
    def stage(name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
    return stage


def memory_message(name: str) -> str:
    return (f"{name} needs more memory to read than a photo of its size may take (its metadata or structure is "
            "abnormal): re-save it as an ordinary JPEG or PNG")


def answer_photo(sock: socket.socket, work: PhotoWork, request: dict[str, Any], data: bytes | bytearray,
                 retire: Callable[[], bool]) -> None:
    """Estimate, wait for the worker's go, then decode and classify one photo, each step under its memory cap.
    The answer says whether the process ends after it (`retire()`)."""
    name, header_bytes = str(request["name"]), int(request["header_bytes"])
    try:
        with memory_cap(header_bytes):
            cost = decode_cost(data, work.decode_side)
        allowed = header_bytes + cost + int(request["work_bytes"])
        if allowed > int(request["granted"]):
            send_frame(sock, {"cost": cost})
            go, _ = recv_frame(sock)
            if not go.get("go"):
                return
        stages: dict[str, float] = {}
        timed = stage_clock(stages)
        with memory_cap(allowed):
            with timed("decode"):
                photo = decode_photo(data, name, int(request["max_pixels"]), work.decode_side)
            faces = work.classify(photo, timed)
            size = photo.size
            del photo  # freed inside the cap's block
        answer: dict[str, Any] = {"faces": [face.as_dict() for face in faces], "size": list(size), "stages": stages}
    except ImageError as err:
        answer = {"error": str(err)}
    except MemoryError:
        answer = {"error": memory_message(name)}
    if retire():
        answer["retire"] = True
    send_frame(sock, answer)


def serve_photos(sock: socket.socket, work: PhotoWork, cpu_seconds: float, retire_after_bytes: int) -> None:
    """A photo process's life: answer photos one at a time until the worker closes the connection, or until it
    has grown by `retire_after_bytes`."""
    start = data_bytes()
    retiring = False

    def retire() -> bool:
        nonlocal retiring
        retiring = data_bytes() - start > retire_after_bytes
        return retiring

    while not retiring:
        try:
            request, data = recv_frame(sock)
        except (EOFError, OSError):
            return
        limit_cpu(cpu_seconds)
        answer_photo(sock, work, request, data, retire)
        del data


# ---- the warm parent --------------------------------------------------------------------------------------

def load_work(factory: str, argument: str) -> PhotoWork:
    """`module:function`, called with `argument`: the service's is `actor_classifier` with the model's folder."""
    module, _, function = factory.partition(":")
    return getattr(importlib.import_module(module), function)(argument)


def actor_classifier(model_path: str) -> PhotoWork:
    """The served model, loaded once in the warm parent and shared by its forks (copy-on-write): the photo model
    MLflow loads (bbt.model.photo_model), whose classifier is the one the pyfunc answers with."""
    from bbt.model.photo_model import load_classifier

    return load_classifier(model_path)


def warm_up(work: PhotoWork) -> None:
    """Decode and classify a small photo once, so what the first photo loads (Pillow's format plugins, the
    detector's session) is loaded before forking, in every photo process at once."""
    import io

    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 128, 128)).save(blank, "JPEG")
    work.classify(decode_photo(blank.getvalue(), "a blank photo", min_side=work.decode_side), stage_clock({}))


def describe(work: PhotoWork) -> dict[str, Any]:
    """What the worker needs to know of the model without loading it: told once, when the parent is ready."""
    model = getattr(work, "model", None)
    detector = getattr(work, "detector", None)
    return {"classes": list(getattr(work, "classes", [])), "open_set_rule": getattr(model, "rule", ""),
            "threshold": getattr(model, "threshold", None), "decode_side": work.decode_side,
            "detector": dataclasses.asdict(detector.settings) if detector is not None else None,
            # Python threads could hold a lock a fork copies held; the libraries' own idle native helpers (dlib's
            # and onnxruntime's, one each) are only counted.
            "threads": threading.active_count(), "native_threads": len(os.listdir("/proc/self/task"))}


@dataclass
class Worker:
    """A serving worker's control connection: what its photo processes run under, and the processes it has."""

    sock: socket.socket
    cpu_seconds: float = 0.0
    retire_after_bytes: int = RETIRE_AFTER_BYTES
    greeted: bool = False
    processes: set[int] = field(default_factory=set)  # the photo processes' pidfds (ours: the worker has copies)


class WarmParent:
    """The loop of the warm parent: forks photo processes for the workers connected to it.

    One warm parent serves a whole service when the supervisor started it (a listening socket the workers connect
    to: bbt/serving/supervisor.py), or one worker that started its own (one connection, and the parent ends with
    it). Single-threaded: requests are read with poll(2), so forking it is safe.
    """

    def __init__(self, work: PhotoWork | None, error: str, factory: str, argument: str,
                 listener: socket.socket | None, connection: socket.socket | None) -> None:
        self.work, self.error, self.loaded = work, error, (factory, argument)
        self.listener = listener
        self.poller = select.poll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.workers: dict[int, Worker] = {}
        if listener is not None:
            self._watch(listener.fileno(), self._accept)
        if connection is not None:
            self._add_worker(connection)

    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.poller.register(fd, select.POLLIN)
        self.handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.handlers[fd]

    def run(self) -> None:
        """Until the last worker has gone, when no listener brings others (a worker's own parent)."""
        while self.listener is not None or self.workers:
            for fd, _ in self.poller.poll():
                if fd in self.handlers:  # a handler of this round may have closed a later one's descriptor
                    self.handlers[fd]()

    def _accept(self) -> None:
        assert self.listener is not None
        sock, _ = self.listener.accept()
        uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[2]
        if uid != os.getuid():  # the socket's name is private to the service; its user only, whatever the name
            sock.close()
            return
        self._add_worker(sock)

    def _add_worker(self, sock: socket.socket) -> None:
        worker = Worker(sock)
        self.workers[sock.fileno()] = worker
        self._watch(sock.fileno(), lambda: self._serve(worker))

    def _serve(self, worker: Worker) -> None:
        try:
            if not worker.greeted:
                self._greet(worker)
            elif worker.sock.recv(1) == FORK:
                self._fork(worker)
            else:
                self._drop(worker)  # the worker closed the connection, or ended
        except (OSError, EOFError, ValueError, KeyError):
            self._drop(worker)

    def _greet(self, worker: Worker) -> None:
        """The worker's hello: the work it expects and its limits; the answer: ready (what the work is) or why not."""
        hello, _ = recv_frame(worker.sock)
        if self.work is None or (hello["factory"], hello["argument"]) != self.loaded:
            why = self.error or f"this parent runs {self.loaded[0]}({self.loaded[1]!r}), not what the worker expects"
            send_frame(worker.sock, {"error": why})
            self._drop(worker)
            return
        worker.cpu_seconds = float(hello["cpu_seconds"])
        worker.retire_after_bytes = int(hello["retire_after_bytes"])
        worker.greeted = True
        send_frame(worker.sock, {"ready": describe(self.work), "pid": os.getpid()})

    def _fork(self, worker: Worker) -> None:
        assert self.work is not None
        ours, theirs = socket.socketpair()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            for fd in self.handlers:  # the listener, the workers' connections, the other photo processes
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            die_with_parent()
            if os.getppid() != parent_pid:  # the parent ended before the line above
                os._exit(0)
            try:
                serve_photos(theirs, self.work, worker.cpu_seconds, worker.retire_after_bytes)
            finally:
                os._exit(0)
        theirs.close()
        pidfd = os.pidfd_open(pid)
        worker.processes.add(pidfd)
        self._watch(pidfd, lambda: self._ended(worker, pidfd))
        socket.send_fds(worker.sock, [str(pid).encode()], [ours.fileno(), pidfd])
        ours.close()

    def _ended(self, worker: Worker, pidfd: int) -> None:
        """A photo process ended (its answer, its deadline, its limits): forget it."""
        self._unwatch(pidfd)
        worker.processes.discard(pidfd)
        os.close(pidfd)

    def _drop(self, worker: Worker) -> None:
        """A worker has gone: its photo processes end with it (one busy with a photo would not notice)."""
        for pidfd in list(worker.processes):
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._ended(worker, pidfd)
        fd = worker.sock.fileno()
        if fd in self.handlers:
            self._unwatch(fd)
        self.workers.pop(fd, None)
        worker.sock.close()


def zygote(factory: str, argument: str, listener_fd: int | None, connection_fd: int | None,
           parent_pid: int) -> None:
    """Load the work once, then fork photo processes for the workers (WarmParent).

    Single-threaded (OpenCV and onnxruntime run one thread per call here), so forking it is safe, and a fork is
    ready in milliseconds with the model loaded. It ends with the process that started it (PR_SET_PDEATHSIG: the
    supervisor, or a worker), and a worker's own parent also when that worker closes its connection; its forks are
    killed when it ends (PR_SET_PDEATHSIG) and reaped by the kernel (SIGCHLD ignored).
    """
    die_with_parent()
    if os.getppid() != parent_pid:  # the starter ended before the line above
        return
    import cv2

    from bbt.serving.allocator import release_free_heap, reuse_photo_buffers

    cv2.setNumThreads(1)
    reuse_photo_buffers()
    listener = socket.socket(fileno=listener_fd) if listener_fd is not None else None
    connection = socket.socket(fileno=connection_fd) if connection_fd is not None else None
    work: PhotoWork | None = None
    error = ""
    try:
        work = load_work(factory, argument)
    except Exception as err:  # noqa: BLE001 - told to every worker, which fails its start-up with it
        error = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    if work is not None:
        warm_up(work)
    # What a fork writes is copied from this process's pages: the collector's writes to the model's objects (frozen
    # instead), and the heap's free pages left by loading (given back, so a fork's allocations get fresh ones).
    gc.collect()
    gc.freeze()
    release_free_heap()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    WarmParent(work, error, factory, argument, listener, connection).run()


def start_warm_parent(factory: str, argument: str, *, listener: socket.socket | None = None,
                      connection: socket.socket | None = None) -> subprocess.Popen[bytes]:
    """A warm parent for `factory(argument)` in a fresh interpreter, serving the workers that connect to `listener`
    (a service's) or the one at the end of `connection` (a worker's own). It dies with this process."""
    passed = [sock.fileno() for sock in (listener, connection) if sock is not None]
    # This process's module path, so the parent imports the same bbt (a bento's src folder included).
    env = {**SINGLE_THREADED, **os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "bbt.serving.sandbox_process", factory, argument,
         str(listener.fileno()) if listener is not None else "-",
         str(connection.fileno()) if connection is not None else "-", str(os.getpid())],
        pass_fds=passed, env=env)


def optional_fd(text: str) -> int | None:
    return None if text == "-" else int(text)


if __name__ == "__main__":
    zygote(sys.argv[1], sys.argv[2], optional_fd(sys.argv[3]), optional_fd(sys.argv[4]), int(sys.argv[5]))
