"""Who runs the studio's jobs: this machine's queue, or a Ray cluster.

:class:`~transfer.runtime.jobs.JobManager` asks :func:`job_backend` on every call. Without
``TRANSFER_RAY_ADDRESS`` it is :class:`LocalQueue`, the machine's own queue as it always was
(:mod:`transfer.runtime.local_queue`). With it (a Ray cluster's job address, for example
``http://head:8265``) it is :class:`RayCluster`: every job the studio starts (training runs, the
label check, feature maps, suggestions, the learning-rate finder, time estimates) becomes one Ray
job, and Ray's scheduler decides where and when it runs. Both answer the same questions:

- ``kind`` ("local" | "ray") and ``label`` ("this machine" | "a Ray cluster"; never the
  address, which must not reach a browser);
- ``submit(run, max_parallel)``, ``alive(run, status)``, ``cancel(run)``; and for the manager
  ``ended_as(run, status)`` (how a run nobody looks after ended), ``forget(run)`` and
  ``move_queue()``;
- ``overview()`` ``{"kind", "label", "waiting", "running", "reachable"}``, ``jobs()`` (one dict
  per job: ``run_id, project, method, job, state, node, waiting_for``) and ``nodes()`` (one per
  machine: ``node, alive, cpus, gpus, memory_bytes``).

On a cluster
------------
A Ray job runs ``<python> -m transfer.runtime.worker <run folder> --on-cluster``, every piece
quoted for the shell. ``<python>`` is ``TRANSFER_RAY_PYTHON``, else this process's own
interpreter: every node installs the studio at the same path. The run folders must sit on
storage that every node mounts at the same path; the worker checks it can write there before
anything else and fails the run with a sentence naming the folder and the node when it cannot.
Progress, curves and results come from the run folder as on one machine. Ray's job status says
what the folder cannot: a job still PENDING is waiting for a machine with the resources it asked
for (``status["waiting_for"]``); a job that ended while its run still says queued or running
(stopped from outside, its node lost) leaves the run ``interrupted``, so it can be resumed.
Liveness comes from Ray, not from ``flock``, which network file systems do not honour reliably.

Ray cannot stop a job that is still PENDING (its supervisor has no node yet): a cancelled run
ends at once in the studio, its job id is remembered as cancelled (``ray/cancelled.json`` under
``TRANSFER_HOME``) and the job lists show it so, and should the job ever start, its worker finds
the run cancelled and exits at once. Ray drops a job that stays PENDING for
``RAY_JOB_START_TIMEOUT_SECONDS`` (15 minutes unless the cluster sets it).

A job asks for ``TRANSFER_RAY_CPUS`` CPUs (default 1) per training process and, for a run on
CUDA GPUs, one GPU per process. The submission id is the run id (``<run id>-r<n>`` for the n-th
resume); the metadata names the run, its project, its method and its job type. The job's
environment carries this process's ``TRANSFER_*`` settings (never a password) and ``PYTHONPATH``.

Several GPUs for one run
------------------------
A run with ``nproc_per_node`` N is one Ray job that asks for N GPUs on one node; inside it the
worker starts N ranks through torchrun as it does on one machine (Ray sets
``CUDA_VISIBLE_DEVICES`` to the GPUs it gave the job). That is the simplest choice that works:
the ranks, their rendezvous and the checkpoint a resume continues from are exactly those of a
local run, and the training loop does not depend on Ray Train. A run across several nodes still
needs ``--nnodes`` and the command started by hand on each machine.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from transfer.core import machine, paths
from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_json, file_lock, read_json
from transfer.core.runs import ACTIVE_STATES, CANCELLED, FAILED, INTERRUPTED, QUEUED, RunDir
from transfer.runtime import local_queue
from transfer.runtime.launch import is_distributed

RAY_ADDRESS_ENV = "TRANSFER_RAY_ADDRESS"
RAY_PYTHON_ENV = "TRANSFER_RAY_PYTHON"
RAY_CPUS_ENV = "TRANSFER_RAY_CPUS"
WORKER_MODULE = "transfer.runtime.worker"
# A running run that has not answered its cancel request after this long is stopped by force.
CANCEL_ANSWER_SECONDS = 15.0
# How the worker's sentence about a run folder it cannot write begins (the run fails with it).
UNWRITABLE_FOLDER = "Cannot write into the run folder"
UNWRITABLE_EXIT_CODE = 73  # EX_CANTCREAT
PROJECT_MANIFEST = "project.json"  # a project's name (see transfer.runtime.projects)
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
# Ray's job states, as the studio names them.
_JOB_STATES = {"PENDING": "waiting", "RUNNING": "running", "SUCCEEDED": "finished", "FAILED": "failed",
               "STOPPED": "stopped"}


class JobStartError(TransferError):
    """The job could not be handed to whoever runs it (a worker process, a Ray cluster)."""


def job_backend() -> "LocalQueue | RayCluster":
    """The back end the environment asks for now: a Ray cluster when ``TRANSFER_RAY_ADDRESS``
    is set, else this machine's queue."""
    address = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    return RayCluster(address) if address else LocalQueue()


def kept_text(status: dict) -> str:
    epoch = status.get("epoch") or 0
    return f"epoch {epoch} is kept" if epoch else "no epoch had finished"


def interrupted_message(status: dict) -> str:
    return (f"The training process stopped unexpectedly while {status['state']} ({kept_text(status)}); "
            "resume the run to continue from its last finished epoch.")


def this_machine() -> dict:
    """This machine as ``nodes()`` describes a node."""
    return {"node": socket.gethostname(), "alive": True, "cpus": machine.cpu_cores(),
            "gpus": machine.gpu_count(), "memory_bytes": memory_bytes()}


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not on Linux
        return None


def run_labels(run: RunDir) -> dict:
    """What a job list says about a run: its id, project, method and job type."""
    config = run.config
    return {"run_id": run.id, "project": project_name(run), "method": config.get("method"),
            "job": config.get("job", "train")}


def project_name(run: RunDir) -> str:
    """The name of the project that holds ``run`` (its runs, or its page helpers' ``jobs``),
    from the project's manifest; else the runs folder's name (runs of the command line, the
    studio's speed measurements)."""
    runs_folder = run.path.parent
    manifest = read_json(runs_folder.parent / PROJECT_MANIFEST, None)
    if isinstance(manifest, dict) and manifest.get("name"):
        return str(manifest["name"])
    return runs_folder.name


# --------------------------------------------------------------------------- this machine


class LocalQueue:
    """This machine's queue (:mod:`transfer.runtime.local_queue`): today's behaviour, unchanged."""

    kind = "local"
    label = "this machine"

    def submit(self, run: RunDir, max_parallel: int) -> None:
        local_queue.add_queue_entry(run, max_parallel)
        run.update_status(message="Waiting for a free training slot.")

    def alive(self, run: RunDir, status: dict) -> bool:
        return local_queue.worker_alive(run, status)

    def ended_as(self, run: RunDir, status: dict) -> tuple[str, str]:
        return INTERRUPTED, interrupted_message(status)

    def cancel(self, run: RunDir) -> None:
        """Take ``run`` out of the queue (a running run stops by itself at its next step)."""
        self.forget(run)
        local_queue.dispatch()  # the runs behind it move up

    def forget(self, run: RunDir) -> None:
        entry = local_queue.find_queue_entry(run)
        if entry:
            local_queue.remove_queue_entry(entry[0])

    def move_queue(self) -> None:
        local_queue.dispatch()

    def overview(self) -> dict:
        return {"kind": self.kind, "label": self.label, "waiting": len(local_queue.queue_entries()),
                "running": len(local_queue.running_runs()), "reachable": True}

    def jobs(self) -> list[dict]:
        here = socket.gethostname()
        running = [{**run_labels(run), "state": "running", "node": here, "waiting_for": None}
                   for run in local_queue.running_runs()]
        waiting = [{**run_labels(RunDir(entry["run_dir"])), "state": "waiting", "node": None,
                    "waiting_for": local_queue.slots_wanted(entry)}
                   for _, entry in local_queue.queue_entries()]  # entries of runs that still exist
        return running + waiting

    def nodes(self) -> list[dict]:
        return [this_machine()]


# --------------------------------------------------------------------------- a Ray cluster


@dataclass(frozen=True)
class JobResources:
    cpus: int
    gpus: int

    def machine_wanted(self) -> str:
        """``a machine with 1 GPU``, ``a machine with 2 free CPUs``..."""
        if self.gpus:
            return f"a machine with {self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        return f"a machine with {self.cpus} free CPU{'s' if self.cpus > 1 else ''}"


def job_resources(config: dict) -> JobResources:
    """What one run's Ray job asks for: ``TRANSFER_RAY_CPUS`` CPUs per process, and one GPU per
    process for a run on CUDA GPUs (N for ``nproc_per_node`` N). A run on ``auto`` counts as one
    on GPUs where this machine has GPUs, as it does for the local queue."""
    processes = int(config.get("nproc_per_node") or 1) if is_distributed(config) else 1
    on_gpus = (machine.trains_on_gpus(config.get("device", "auto"))
               and local_queue.job_place(config)[0] == local_queue.DEVICE_POOL)
    return JobResources(cpus=processes * cpus_per_process(), gpus=processes if on_gpus else 0)


def cpus_per_process() -> int:
    raw = os.environ.get(RAY_CPUS_ENV, "").strip()
    return local_queue.positive_whole_number(
        raw or "1", f"{RAY_CPUS_ENV} must be a whole number of CPUs of at least 1, not {raw!r}.")


def worker_entrypoint(run_path: Path | str, python: str | None = None) -> str:
    """The shell command of a run's Ray job, every piece quoted."""
    python = python or os.environ.get(RAY_PYTHON_ENV, "").strip() or sys.executable
    return shlex.join([python, "-m", WORKER_MODULE, str(Path(run_path).absolute()), "--on-cluster"])


def submission_id(run: RunDir, status: dict) -> str:
    """The run id for its first job, ``<run id>-r<n>`` for its n-th resume."""
    resumes = int(status.get("resumes") or 0)
    return f"{run.id}-r{resumes}" if resumes else run.id


def job_environment(resources: JobResources) -> dict[str, str]:
    """The job's environment: this process's ``TRANSFER_*`` settings (no secrets) and
    ``PYTHONPATH``, and torch's threads bounded to the CPUs the job asked for."""
    chosen = {name: value for name, value in os.environ.items()
              if (name.startswith("TRANSFER_") and not any(word in name for word in _SECRET_WORDS))
              or name == "PYTHONPATH"}
    threads = str(resources.cpus)
    return {**chosen, "PYTHONUNBUFFERED": "1", local_queue.WORKER_THREADS_ENV: threads,
            "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def job_metadata(run: RunDir, resources: JobResources) -> dict[str, str]:
    labels = run_labels(run)
    return {"run_id": run.id, "project": labels["project"], "method": str(labels["method"] or ""),
            "job_type": labels["job"], "cpus": str(resources.cpus), "gpus": str(resources.gpus)}


_clients: dict[str, object] = {}  # address -> JobSubmissionClient (making one asks the cluster)


class RayCluster:
    """A Ray cluster's job API at ``address``: every job becomes one Ray job."""

    kind = "ray"
    label = "a Ray cluster"

    def __init__(self, address: str):
        self.address = address
        self._looked: dict[str, object] = {}  # run folder -> the job details alive() saw (None: no such job)

    def client(self):
        client = _clients.get(self.address)
        if client is None:
            from ray.job_submission import JobSubmissionClient  # only with a cluster: ray is heavy

            try:
                client = JobSubmissionClient(self.address)
            except (ConnectionError, OSError, RuntimeError, ValueError) as error:
                raise JobStartError(unreachable(error)) from None
            _clients[self.address] = client
        return client

    # ----------------------------------------------------------------- one run

    def submit(self, run: RunDir, max_parallel: int) -> None:
        """Hand ``run`` to Ray (``max_parallel`` does not apply: Ray schedules); a refusal fails
        the run with a sentence and raises it."""
        resources = job_resources(run.config)
        job_id = submission_id(run, run.status())
        try:
            job_id = self._submit(run, job_id, resources)
        except TransferError as error:
            _fail(run, str(error))
            raise
        except Exception as error:  # the cluster refused: say so, with no address
            message = f"The Ray cluster refused the job ({type(error).__name__}); its head's log says why."
            _fail(run, message)
            raise JobStartError(message) from None
        run.update_status(ray_job=job_id, waiting_for=None,
                          message=f"Handed to the Ray cluster; waiting for {resources.machine_wanted()}.")

    def _submit(self, run: RunDir, job_id: str, resources: JobResources) -> str:
        arguments = dict(entrypoint=worker_entrypoint(run.path), entrypoint_num_cpus=resources.cpus,
                         entrypoint_num_gpus=resources.gpus, metadata=job_metadata(run, resources),
                         runtime_env={"env_vars": job_environment(resources)})
        client = self.client()
        try:
            return client.submit_job(submission_id=job_id, **arguments)
        except RuntimeError as error:
            if "already exists" not in str(error):
                raise
            # A copy of a project carries its runs' ids: its own resumes need new job ids.
            return client.submit_job(submission_id=f"{job_id}-{time.time_ns() % 10**6:06d}", **arguments)

    def alive(self, run: RunDir, status: dict) -> bool:
        """Whether Ray still looks after ``run``: its job is PENDING (then ``waiting_for`` says
        for what) or RUNNING. A cluster that does not answer counts as alive: a network hiccup
        must not interrupt runs."""
        job_id = status.get("ray_job")
        if not job_id:  # not handed over yet, or queued on this machine before the switch
            return LocalQueue().alive(run, status)
        try:
            info = self.client().get_job_info(job_id)
        except RuntimeError as error:
            if "404" not in str(error):
                return True
            info = None  # the cluster forgot the job (it was restarted)
        except (OSError, TransferError):
            return True
        self._looked[str(run.path)] = info
        state = _job_state(info)
        if state == "waiting":
            _note_waiting(run, status, info)
        return state in ("waiting", "running")

    def ended_as(self, run: RunDir, status: dict) -> tuple[str, str]:
        """How a run whose job ended before the run did ends: ``failed`` with the worker's own
        sentence when the node could not write the run folder, ``cancelled`` when it was stopped
        after a cancel request, else ``interrupted`` (resumable)."""
        if not status.get("ray_job"):
            return LocalQueue().ended_as(run, status)
        info = self._looked.get(str(run.path))
        state = _job_state(info)
        if state == "failed":
            last = self.last_log_line(status["ray_job"])
            if last.startswith(UNWRITABLE_FOLDER):
                return FAILED, last
        if run.cancel_requested():
            return CANCELLED, f"Cancelled; {kept_text(status)}."
        said = f"Ray says {state}" if info is not None else "the cluster no longer knows it"
        return INTERRUPTED, (f"The run's job on the Ray cluster ended while the run was {status['state']} "
                             f"({said}; {kept_text(status)}); resume the run to continue from its last "
                             "finished epoch.")

    def last_log_line(self, job_id: str) -> str:
        try:
            logs = self.client().get_job_logs(job_id)
        except (OSError, RuntimeError, TransferError):
            return ""
        lines = [line.strip() for line in logs.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def cancel(self, run: RunDir) -> None:
        """Stop the run's Ray job now (a queued run's at once, a running one's that did not
        answer its cancel request)."""
        job_id = run.status().get("ray_job")
        if not job_id:
            LocalQueue().cancel(run)
            return
        remember_cancelled(job_id)  # a PENDING job does not stop until it starts
        try:
            self.client().stop_job(job_id)
        except (OSError, RuntimeError, TransferError):
            pass  # already ended, or the cluster is away: the next look marks the run

    def forget(self, run: RunDir) -> None:
        if not run.status().get("ray_job"):
            LocalQueue().forget(run)

    def move_queue(self) -> None:
        """Ray moves its own queue; runs queued on this machine before the switch still leave it."""
        if local_queue.queue_entries():
            local_queue.dispatch()

    # ----------------------------------------------------------------- the cluster

    def studio_jobs(self) -> list:
        """The Ray jobs the studio submitted, newest first."""
        try:
            listed = self.client().list_jobs()
        except (OSError, RuntimeError) as error:
            raise JobStartError(unreachable(error)) from None
        jobs = [job for job in listed if (job.metadata or {}).get("run_id")]
        return sorted(jobs, key=lambda job: job.start_time or 0, reverse=True)

    def overview(self) -> dict:
        counts = {"waiting": 0, "running": 0}
        try:
            cancelled = cancelled_jobs()
            for job in self.studio_jobs():
                state = _job_state(job, cancelled)
                if state in counts:
                    counts[state] += 1
        except TransferError:
            return {"kind": self.kind, "label": self.label, **counts, "reachable": False}
        return {"kind": self.kind, "label": self.label, **counts, "reachable": True}

    def jobs(self) -> list[dict]:
        names = {node["node_id"]: node["node"] for node in self.nodes()}
        jobs, cancelled = self.studio_jobs(), cancelled_jobs()
        forget_cancelled({job.submission_id for job in jobs if _job_state(job) not in ("waiting", "running")})
        return [_job_row(job, names, cancelled) for job in jobs]

    def nodes(self) -> list[dict]:
        """The cluster's machines (Ray's state API), head first."""
        from ray.util.state import list_nodes

        try:
            found = list_nodes(address=self.address, detail=False, raise_on_missing_output=False)
        except Exception as error:  # the state API raises its own kinds
            raise JobStartError(unreachable(error)) from None
        rows = [_node_row(node) for node in found]
        return sorted(rows, key=lambda row: (not row["head"], row["node"]))


def unreachable(error: Exception) -> str:
    return (f"The Ray cluster named by {RAY_ADDRESS_ENV} does not answer ({type(error).__name__}); "
            "check that its head is running and reachable from here.")


def _fail(run: RunDir, message: str) -> None:
    run.transition(ACTIVE_STATES, with_event={"type": "end", "state": FAILED, "message": message},
                   state=FAILED, ended_at=time.time(), queue_position=None, message=message)


def _job_state(job, cancelled: frozenset = frozenset()) -> str | None:
    """The studio's word for a Ray job's status (waiting, running, finished, failed, stopped;
    cancelled for a job the studio stopped while Ray still lists it as waiting)."""
    if job is None:
        return None
    status = str(getattr(job.status, "value", job.status))
    if status == "PENDING" and job.submission_id in cancelled:
        return "cancelled"
    return _JOB_STATES.get(status, status.lower())


def _cancelled_file() -> Path:
    return paths.private_dir(paths.home() / "ray") / "cancelled.json"


def cancelled_jobs() -> frozenset:
    """Ids of the jobs the studio stopped (see the module's notes on PENDING jobs)."""
    ids = read_json(_cancelled_file(), [])
    return frozenset(ids) if isinstance(ids, list) else frozenset()


def remember_cancelled(job_id: str) -> None:
    _change_cancelled(lambda ids: ids | {job_id})


def forget_cancelled(job_ids: set) -> None:
    """Drop ids of jobs that ended: Ray says how they ended."""
    if job_ids & cancelled_jobs():
        _change_cancelled(lambda ids: ids - job_ids)


def _change_cancelled(change) -> None:
    with file_lock(_cancelled_file().with_suffix(".lock")):
        atomic_write_json(_cancelled_file(), sorted(change(cancelled_jobs())))


def _note_waiting(run: RunDir, status: dict, job) -> None:
    """Say in the run's status what its pending job waits for (once, not on every look)."""
    metadata = job.metadata or {}
    wanted = JobResources(int(metadata.get("cpus") or 1), int(metadata.get("gpus") or 0)).machine_wanted()
    if status.get("waiting_for") != wanted:
        run.transition([QUEUED], waiting_for=wanted, message=f"Waiting for {wanted}.")


def _job_row(job, node_names: dict, cancelled: frozenset) -> dict:
    metadata = job.metadata or {}
    state = _job_state(job, cancelled)
    waiting = None
    if state == "waiting":
        waiting = JobResources(int(metadata.get("cpus") or 1), int(metadata.get("gpus") or 0)).machine_wanted()
    return {"run_id": metadata.get("run_id"), "project": metadata.get("project"),
            "method": metadata.get("method") or None, "job": metadata.get("job_type"), "state": state,
            "node": node_names.get(job.driver_node_id) if job.driver_node_id else None,
            "waiting_for": waiting, "ray_job": job.submission_id}


def _node_row(node) -> dict:
    resources = node.resources_total or {}
    return {"node": node.node_name or node.node_ip, "alive": node.state == "ALIVE",
            "cpus": int(resources.get("CPU", 0)), "gpus": int(resources.get("GPU", 0)),
            "memory_bytes": int(resources.get("memory", 0)), "head": bool(node.is_head_node),
            "node_id": node.node_id}
