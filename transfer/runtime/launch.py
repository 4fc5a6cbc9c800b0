"""Launching a distributed run: the worker starts its processes (ranks) through torchrun.

A run whose config asks for more than one process in all (``world_size`` =
``nproc_per_node * nnodes`` > 1) is not trained inside the worker. The worker, which holds
the run's lock and device slot(s), runs :func:`torchrun_command` instead: torchrun starts
``nproc_per_node`` ranks of ``python -m transfer.training.distributed RUN_DIR`` on this machine and
meets the other machines' torchruns at ``master_addr:master_port`` (one machine with port 0
uses a free port). :func:`run_ranks` then

- forwards cancel: the ranks read the run's cancel request themselves and stop at their next
  step; if they have not answered (rank 0 writes its outcome) ``CANCEL_GRACE_SECONDS`` after
  the request, or have answered but not exited ``ANSWERED_GRACE_SECONDS`` after it, torchrun is
  told to stop them (SIGTERM), and ``KILL_GRACE_SECONDS`` later every process of the launch is
  killed;
- makes torchrun die with the worker (``PR_SET_PDEATHSIG``), and hands it the run lock and
  slots, so a run whose worker was killed is seen as interrupted only once its ranks are gone;
- reads how the run ended from ``rank-outcome.json``, which rank 0 writes
  (``{"state": "finished" | "cancelled" | "failed", "message": ...}``). Without it a training
  process stopped unexpectedly: the run failed, and resuming continues after its last
  finished epoch. On machines other than node 0 (which writes no run files), torchrun's exit
  status tells whether this machine's ranks finished.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from transfer.core.child import start_module
from transfer.runtime.extra_jobs import extra_rank_module
from transfer.core.runs import CANCELLED, FAILED, FINISHED, RANK_OUTCOME_FILE, RunDir
from transfer.core.files import read_json

OUTCOME_STATES = (FINISHED, CANCELLED, FAILED)
# The module torchrun starts per rank, by job type (the tests add a demo job's ranks through
# transfer.runtime.extra_jobs: no torch in the ranks, seconds per run).
RANK_MODULES = {"train": "transfer.training.distributed"}
CANCEL_GRACE_SECONDS = 5.0
# Ranks that answered (rank 0 wrote its outcome) are only leaving: tearing down the process group
# and exiting can take a while on busy cores, so they are not hurried as long.
ANSWERED_GRACE_SECONDS = 30.0
KILL_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.3
_PR_SET_PDEATHSIG = 1


def world_size(config: dict) -> int:
    """Training processes over all machines for a run of ``config`` (a config.json dict)."""
    return int(config.get("nproc_per_node") or 1) * int(config.get("nnodes") or 1)


def rank_module(config: dict) -> str | None:
    """The module each rank of a run of ``config`` runs, or None for a job that has no ranks."""
    job = config.get("job", "train")
    return RANK_MODULES.get(job) or extra_rank_module(job)


def is_distributed(config: dict) -> bool:
    return rank_module(config) is not None and world_size(config) > 1


def torchrun_command(run_path: Path | str, config) -> list[str]:
    """The command line that starts this machine's ranks of the run in ``run_path``.
    ``config`` is a :class:`transfer.training.config.TrainConfig` or its dict."""
    if not isinstance(config, dict):
        config = config.to_dict()
    nnodes = int(config.get("nnodes") or 1)
    port = int(config.get("master_port") or 0)
    command = [sys.executable, "-m", "torch.distributed.run",
               "--nproc-per-node", str(int(config.get("nproc_per_node") or 1))]
    if nnodes == 1 and port == 0:
        command += ["--standalone"]  # a rendezvous on a free local port
    else:
        command += ["--nnodes", str(nnodes), "--node-rank", str(int(config.get("node_rank") or 0)),
                    "--master-addr", str(config.get("master_addr") or "127.0.0.1"), "--master-port", str(port)]
    # A rank that dies ends the attempt (no restarts): the run is resumed from its last epoch instead.
    command += ["--max-restarts", "0", "-m", rank_module(config), str(run_path)]
    return command


def rank_environment(config: dict, worker_threads: int) -> dict[str, str]:
    """The environment of torchrun and its ranks: the worker's threads, which each rank shares
    out with this machine's other ranks (:func:`transfer.training.distributed.share_the_cores`), so a
    distributed run uses the cores its slots were given, no more. OpenMP's own count is set to
    a rank's share from the start, for the libraries that read it before torch does."""
    threads = str(max(1, worker_threads // int(config.get("nproc_per_node") or 1)))
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFER_WORKER_THREADS": str(max(1, worker_threads)),
            "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_ranks(run: RunDir, held_fds: tuple[int, ...] = (), worker_threads: int = 1) -> tuple[str, str]:
    """Train ``run`` on its ranks through torchrun and wait for them; returns how the run ended
    as ``(state, sentence)``. ``held_fds`` (the run lock, the slots) stay held by torchrun too."""
    outcome_path = run.path / RANK_OUTCOME_FILE
    outcome_path.unlink(missing_ok=True)  # an earlier attempt's outcome says nothing about this one
    command = torchrun_command(run.path, run.config)
    run.append_event({"type": "info", "message": f"Starting {world_size(run.config)} training processes "
                      "through torchrun.", "world_size": world_size(run.config), "command": command})
    process = start_module(command[2], command[3:], pass_fds=held_fds, env=rank_environment(run.config, worker_threads),
                           preexec_fn=_die_with_parent)
    forced = supervise(run, process)
    return rank_outcome(run, process.returncode, forced)


def supervise(run: RunDir, process: subprocess.Popen, poll: float = POLL_SECONDS) -> bool:
    """Wait for torchrun to end, stopping it when a cancel request stays unanswered; True when
    it had to be stopped that way."""
    cancel_seen = terminated = None
    while process.poll() is None:
        now = time.monotonic()
        if cancel_seen is None and run.cancel_requested():
            cancel_seen = now
        if cancel_seen is not None and terminated is None and now - cancel_seen > _cancel_grace(run):
            process.terminate()  # torchrun passes SIGTERM on to its ranks and waits for them
            terminated = now
        if terminated is not None and now - terminated > KILL_GRACE_SECONDS:
            kill_launch(process)
        time.sleep(poll)
    return terminated is not None


def _cancel_grace(run: RunDir) -> float:
    answered = (run.path / RANK_OUTCOME_FILE).exists()
    return ANSWERED_GRACE_SECONDS if answered else CANCEL_GRACE_SECONDS


def kill_launch(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and every rank. torchrun starts each rank in a session of its own, so
    each rank's process group is killed by name, then torchrun's."""
    for child in _child_pids(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _die_with_parent() -> None:
    """In torchrun, before it starts: the kernel sends it SIGTERM when the worker dies, and
    torchrun then stops its ranks, so a killed worker leaves no training behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def rank_outcome(run: RunDir, returncode: int, forced: bool = False) -> tuple[str, str]:
    """How the run ended: rank 0's ``rank-outcome.json`` when it wrote one, otherwise what the
    exit status and a forced stop say."""
    outcome = read_json(run.path / RANK_OUTCOME_FILE)
    if isinstance(outcome, dict) and outcome.get("state") in OUTCOME_STATES and isinstance(outcome.get("message"), str):
        return outcome["state"], outcome["message"]
    kept = _kept(run)
    if forced:
        return CANCELLED, f"Cancelled; {kept}."
    config = run.config
    if int(config.get("node_rank") or 0) > 0:
        return _other_node_outcome(config, returncode)
    return FAILED, (f"A training process stopped unexpectedly ({_exit_text(returncode)}) before the run ended; "
                    f"{kept}. Resume the run to continue after its last finished epoch; {run.log_path} "
                    "tells what happened.")


def _other_node_outcome(config: dict, returncode: int) -> tuple[str, str]:
    where = f"{config.get('master_addr')}:{config.get('master_port')}"
    if returncode == 0:
        return FINISHED, (f"This machine's {config.get('nproc_per_node')} training processes finished; "
                          f"the run's files (model, checkpoint, history) are on node 0 ({where}).")
    return FAILED, (f"This machine's training processes stopped ({_exit_text(returncode)}); node 0 ({where}) "
                    "keeps the run's checkpoint: resume it there and start this machine again.")


def _kept(run: RunDir) -> str:
    epoch = run.status().get("epoch") or 0
    return f"epoch {epoch} is kept" if epoch else "no epoch had finished"


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
