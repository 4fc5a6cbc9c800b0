"""A Ray cluster on this machine, for the tests and the benchmark: a head, and worker nodes if asked.

``start_head(num_cpus=2) -> (address, stop)`` starts a head on 127.0.0.1 with the ``ray`` of the
Python that runs this (the studio's virtual environment), waits until its job API answers and
returns the job address (``http://127.0.0.1:PORT``) and a function that stops the cluster.
``add_worker_node(address, num_cpus)`` adds a worker node to it (stopped by the same ``stop``).

Every port is a free one picked here, and every node keeps its files under a temporary folder
of its own, so several clusters (a test run and a benchmark) can live on one machine at once.
Stopping kills exactly the processes of this cluster: every node is started with the
environment variable ``CLUSTER_MARK`` set to the cluster's folder, which its processes (and
the jobs they start) inherit. ``ray stop`` is never used: it would stop every Ray cluster of
this user.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_SECONDS = 120.0
CLUSTER_MARK = "STUDIO_TEST_RAY_CLUSTER"


def ray_command() -> str:
    """The ``ray`` command beside this Python (the virtual environment's)."""
    return str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_ports() -> list[str]:
    """Free ports for every service a node would otherwise put on a fixed default port."""
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port())]


class LocalCluster:
    """The head (and worker nodes) of one cluster on this machine."""

    def __init__(self):
        # Short: Ray's sockets live under it and a socket path may not exceed 107 characters.
        self.folder = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, num_cpus: int) -> None:
        self._start(["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port)], num_cpus)
        wait_for_job_api(self.address)

    def add_worker_node(self, num_cpus: int) -> None:
        self._start(["--address", f"127.0.0.1:{self.gcs_port}"], num_cpus)

    def _start(self, role: list[str], num_cpus: int) -> None:
        self.nodes += 1
        node_folder = self.folder / f"n{self.nodes}"  # each node its own logs and sockets
        node_folder.mkdir()
        command = [ray_command(), "start", *role, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                   "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={node_folder}", *_node_ports()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS,
                              env={**os.environ, CLUSTER_MARK: str(self.folder)})
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")

    def stop(self) -> None:
        """Kill this cluster's processes (found by its folder in their command lines), then its folder."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def pids(self) -> list[int]:
        """This cluster's live processes: those that carry its mark or name its folder."""
        mark = f"{CLUSTER_MARK}={self.folder}".encode()
        found = []
        for process in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                if int(process.name) != os.getpid() and self._belongs(process, mark):
                    found.append(int(process.name))
        return found

    def _belongs(self, process: Path, mark: bytes) -> bool:
        # A process that renamed itself (Ray's agents) may have written over its environment
        # and command line; its open files in the cluster's folder still tell.
        if mark in (process / "environ").read_bytes().split(b"\0"):
            return True
        if str(self.folder).encode() in (process / "cmdline").read_bytes():
            return True
        return any(target.startswith(f"{self.folder}/") for target in _open_files(process))


def _open_files(process: Path) -> list[str]:
    """Where the open descriptors of ``process`` point (those still open while looking)."""
    targets = []
    with contextlib.suppress(OSError):
        for fd in (process / "fd").iterdir():
            with contextlib.suppress(OSError):
                targets.append(os.readlink(fd))
    return targets


def wait_for_job_api(address: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Return once the cluster's job API lists jobs; RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{address}/api/jobs/", timeout=5) as answer:
                json.loads(answer.read())
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray job API at {address} did not answer within {timeout:.0f} s")


def start_head(num_cpus: int = 2) -> tuple[str, callable]:
    """A head on 127.0.0.1: ``(job address, stop)``."""
    cluster = LocalCluster()
    cluster.start_head(num_cpus)
    return cluster.address, cluster.stop


def start_cluster(num_cpus: int = 2) -> LocalCluster:
    """A head on 127.0.0.1 as a :class:`LocalCluster`, to add worker nodes to (``add_worker_node``)."""
    cluster = LocalCluster()
    cluster.start_head(num_cpus)
    return cluster
