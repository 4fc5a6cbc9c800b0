"""What this machine has to train on, found cheaply: CPU cores and CUDA GPUs.

Pages and the job dispatcher ask how many GPUs there are (to offer "GPUs to use", to check
``--nproc-per-node``, to count device slots) without loading torch: :mod:`transfer.core.gpus`
answers, probing once per process (``CUDA_VISIBLE_DEVICES`` applies, as in torch).
"""

from __future__ import annotations

import os


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA GPUs this process can use; 0 where there are none (see :mod:`transfer.core.gpus`)."""
    from transfer.core.gpus import gpu_count as probed_count

    return probed_count()


def trains_on_gpus(device: str) -> bool:
    """Whether a run asking for ``device`` (auto, cpu, cuda, mps) trains on CUDA GPUs here."""
    return device == "cuda" or (device == "auto" and gpu_count() > 0)
