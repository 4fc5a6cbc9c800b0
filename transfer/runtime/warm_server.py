"""The fork server behind the warm worker: ``python -m transfer.runtime.warm_server QUEUE_DIR``.

Started by :func:`transfer.runtime.warm.start_server` while a studio runs (see :mod:`transfer.runtime.warm` for
the protocol). It

1. takes ``warm.lock`` (or exits: one fork server per queue), lowers its CPU priority;
2. warms up: imports torch, timm and the trainer, builds the bundled EfficientNet-Lite
   backbones with their weights, runs one small forward pass of each and one optimizer step
   (which imports torch._dynamo), so the code, the
   weights files and the CPU kernels are ready - all with torch limited to one thread and no
   GPU touched, so that no thread pool or CUDA context exists when it forks;
3. listens on ``warm.sock``; for each request it forks a child that becomes an ordinary worker:
   its own session, the run's log as output, the caller's environment and working folder,
   torch's threads set to the worker's share, then ``transfer.runtime.worker.main`` with the handed-over
   lock and slot descriptors;
4. reaps its children and exits once no studio holds the studio lock.

It never opens a run folder itself; each run lives and dies in its own child, so nothing of one
user's data stays behind for the next. ``TRANSFER_WARM_PRELOAD=none`` skips step 2 (the job tests
fork demo jobs, which need no torch).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from transfer.runtime import warm
from transfer.runtime.local_queue import WORKER_THREADS_ENV, lower_priority
from transfer.core.child import redirect_output
from transfer.core.files import try_lock

PRELOAD_ENV = "TRANSFER_WARM_PRELOAD"
POLL_SECONDS = 0.5
MAX_REQUEST_BYTES = 256 * 1024
MAX_FDS = 64

# Settings libraries read once, when imported (huggingface_hub's HF_HUB_OFFLINE, torch's and timm's
# cache folders, ...): a fork keeps the values this server imported with, so a run whose command
# was given other values is refused here and starts as a fresh interpreter instead.
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TORCH_", "PYTORCH_", "TIMM_", "XDG_CACHE_HOME")
_import_env: dict[str, str] = {}

# This process's hold on warm.lock; a forked worker lets go of its copy, so that a fork server
# that died is seen as dead (and replaced) even while its workers still train.
_server_lock: int | None = None


def main(argv: list[str] | None = None) -> int:
    queue = Path((argv if argv is not None else sys.argv[1:])[0])
    global _server_lock
    _server_lock = try_lock(queue / warm.SERVER_LOCK)
    if _server_lock is None:
        return 0  # another fork server looks after this queue
    lower_priority()
    global _import_env
    _import_env = import_time_settings(os.environ)
    log(f"fork server {os.getpid()} warming up")
    started = time.monotonic()
    if os.environ.get(PRELOAD_ENV, "").strip().lower() != "none":
        preload()
    listener = listen(queue / warm.SOCKET_NAME)
    warm.record_warm(queue)
    log(f"warm after {time.monotonic() - started:.1f} s; listening")
    try:
        serve(listener, queue)
    finally:
        with contextlib.suppress(OSError):
            (queue / warm.SOCKET_NAME).unlink()
        listener.close()
    log("no studio is running any more; exiting")
    return 0


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# --------------------------------------------------------------------------- warming up


def preload() -> None:
    """Load what every run needs before it reads a picture. Torch is held to one thread here:
    a parallel region would start OpenMP's thread pool, which a forked child cannot use."""
    import torch

    torch.set_num_threads(1)
    import timm  # noqa: F401  (the bundled backbones' model code)

    import transfer.training.run  # noqa: F401  (the trainer and everything it imports)
    from transfer.models.backbones import bundled_names, load_backbone

    with torch.inference_mode():
        for name in bundled_names():
            model = load_backbone(name).eval()
            model(torch.zeros(1, 3, 64, 64))  # first-call work of the CPU kernels
    # An optimizer's first step imports torch._dynamo (hundreds of modules, seconds on a busy
    # machine); do it here, without gradients, so no autograd thread exists when forking.
    head = torch.nn.Linear(4, 2)
    torch.optim.AdamW(head.parameters()).step()
    if torch.cuda.is_initialized():  # never expected: a fork would inherit a broken CUDA context
        raise RuntimeError("CUDA was initialised while warming up; the fork server cannot fork safely")


# --------------------------------------------------------------------------- serving


def listen(address: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        address.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(address))
    os.chmod(address, 0o600)  # the queue folder is private too; this says it twice
    listener.listen(8)
    listener.settimeout(POLL_SECONDS)
    return listener


def serve(listener: socket.socket, queue: Path) -> None:
    """Answer fork requests until no studio runs; children are collected as they end."""
    while warm.studio_running(queue):
        reap_children()
        try:
            connection, _ = listener.accept()
        except (TimeoutError, socket.timeout):
            continue
        with connection:
            answer_request(connection, listener)


def reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def answer_request(connection: socket.socket, listener: socket.socket) -> None:
    connection.settimeout(warm.ANSWER_SECONDS)
    fds: list[int] = []
    try:
        message, fds, _, _ = socket.recv_fds(connection, MAX_REQUEST_BYTES, MAX_FDS)
        request = json.loads(message)
        refusal = refuse(request, fds)
        if refusal:
            log(f"refused a request: {refusal}")
            connection.sendall(json.dumps({"error": refusal}).encode() + b"\n")
            return
        pid = fork_worker(request, fds, listener, connection)
        log(f"forked worker {pid} for run {Path(request['run_dir']).name}")  # not the session's folder
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except (OSError, ValueError) as error:
        log(f"could not answer a request: {error}")
    finally:
        for fd in fds:
            os.close(fd)  # the child holds its own copies


def refuse(request, fds: list[int]) -> str:
    """Why a request cannot be served by a fork of this process ('' when it can)."""
    if not isinstance(request, dict) or not isinstance(request.get("run_dir"), str):
        return "not a fork request"
    if request.get("code") != warm.CODE_ROOT or request.get("executable") != sys.executable:
        return "the caller runs other code than this fork server"
    if len(fds) != 1 + int(request.get("slots") or 0) or len(fds) < 2:
        return "the run lock and its slots must come with the request"
    differing = sorted(set(import_time_settings(request.get("env") or {}).items()) ^ set(_import_env.items()))
    if differing:
        names = ", ".join(sorted({name for name, _ in differing}))
        return f"the run's environment sets {names} otherwise than when this server imported its libraries"
    return ""


def import_time_settings(environment) -> dict[str, str]:
    return {str(name): str(value) for name, value in environment.items()
            if str(name).startswith(IMPORT_TIME_PREFIXES)}


def fork_worker(request: dict, fds: list[int], listener: socket.socket, connection: socket.socket) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        listener.close()
        connection.close()
        if _server_lock is not None:
            os.close(_server_lock)
        code = become_worker(request, fds)
    except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def become_worker(request: dict, fds: list[int]) -> int:
    """In the forked child: turn into the worker a fresh interpreter would have been."""
    os.setsid()  # like start_new_session: a signal to the fork server's group does not reach it
    for signal_number in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signal_number, signal.SIG_DFL)
    environment = request.get("env") or {}
    os.environ.clear()
    os.environ.update({str(key): str(value) for key, value in environment.items()})
    with contextlib.suppress(OSError):
        os.chdir(request.get("cwd") or "/")
    redirect_output(Path(request["run_dir"]) / "worker.log")
    set_threads(os.environ.get(WORKER_THREADS_ENV))
    from transfer.runtime.worker import main as worker_main

    arguments = [request["run_dir"], "--lock-fd", str(fds[0])]
    for slot in fds[1:]:
        arguments += ["--slot-fd", str(slot)]
    return worker_main(arguments)


def set_threads(count: str | None) -> None:
    """The worker's share of the cores, now that it is on its own (the fork server used one)."""
    if "torch" not in sys.modules or not (count or "").isdigit():
        return
    import torch

    torch.set_num_threads(max(1, int(count)))


if __name__ == "__main__":
    sys.exit(main())
