"""Which GPUs this machine offers, answered without loading torch into the asking process.

The web server needs this on every page (the sidebar, the method recommendation, "GPUs to
use"), but importing torch costs seconds and hundreds of megabytes. So: a machine without any
GPU device file (no ``/dev/nvidia*``, ``/dev/kfd``, ``/dev/dxg``; not an Apple-silicon Mac) has
none, answered at once; otherwise a child process asks torch once and the answer is kept for
the life of this process. A process that has torch loaded already asks it directly.

``python -m transfer.core.gpus`` prints the answer as one JSON object.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/gpus", "/dev/kfd", "/dev/dxg")
_PROBE_TIMEOUT_S = 60


@dataclass(frozen=True)
class Gpus:
    """The accelerators torch would see here (``CUDA_VISIBLE_DEVICES`` applies)."""

    names: list[str] = field(default_factory=list)  # CUDA (or ROCm) devices, in torch's order
    memory_gib: list[float] = field(default_factory=list)
    mps: bool = False  # Apple's Metal GPU

    @property
    def count(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        if self.names:
            first = f"{self.names[0]} ({self.memory_gib[0]:.0f} GiB)"
            return f"GPU: {first}" if self.count == 1 else f"{self.count} GPUs: {first}, ..."
        if self.mps:
            return "GPU: Apple (MPS)"
        return f"CPU ({os.cpu_count()} cores)"


def _may_have_gpu() -> bool:
    """False when no GPU can be there, so the common CPU-only machine never pays for the probe."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return sys.platform == "darwin" and platform.machine() == "arm64"
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    return any(Path(path).exists() for path in _GPU_DEVICE_FILES)


def _ask_torch() -> Gpus:
    import torch

    names, memory = [], []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            names.append(props.name)
            memory.append(round(props.total_memory / 2**30, 1))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Gpus(names, memory, mps)


def _ask_a_child() -> Gpus:
    from transfer.core.child import run_module

    try:
        done = run_module("transfer.core.gpus", [], timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Gpus()
    answer = done.answer
    if done.returncode != 0 or not isinstance(answer.get("names"), list):
        return Gpus()  # torch cannot use what is there: train on the CPU, as torch would
    return Gpus([str(n) for n in answer["names"]], [float(m) for m in answer.get("memory_gib", [])],
                bool(answer.get("mps")))


@functools.cache
def gpus() -> Gpus:
    """This machine's GPUs, probed once per process."""
    if "torch" in sys.modules:
        return _ask_torch()
    if not _may_have_gpu():
        return Gpus()
    return _ask_a_child()


def gpu_count() -> int:
    """How many CUDA GPUs a run could use here (0 on a CPU-only machine or a Mac)."""
    return gpus().count


def has_gpu() -> bool:
    """Whether training has any GPU to run on (CUDA, ROCm or Apple's MPS)."""
    found = gpus()
    return found.count > 0 or found.mps


def describe_device() -> str:
    """One line for people: the GPU (and how many), or the CPU's cores."""
    return gpus().describe()


if __name__ == "__main__":
    found = _ask_torch()
    print(json.dumps({**asdict(found), "count": found.count}))
