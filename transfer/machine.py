"""What this machine has to train on, found cheaply: CPU cores and CUDA GPUs.

Pages and the job dispatcher ask how many GPUs there are (to offer "GPUs to use", to check
``--nproc-per-node``, to count device slots) without loading torch: when torch is not loaded
already, the GPUs are counted with ``nvidia-smi -L`` once per process. ``CUDA_VISIBLE_DEVICES``
is honoured either way, as torch would.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

NVIDIA_SMI_SECONDS = 5.0


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """CUDA GPUs this process can use; 0 where there are none (or no NVIDIA driver)."""
    torch = sys.modules.get("torch")
    if torch is not None:  # already paid for: ask it, it knows every CUDA setting
        return int(torch.cuda.device_count())
    return _visible(_nvidia_smi_gpus())


def _nvidia_smi_gpus() -> int:
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listing.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def _visible(installed: int) -> int:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` leaves of ``installed``; CUDA stops reading the list at
    the first entry it cannot use, so this does too."""
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return installed
    visible = 0
    for entry in chosen.split(","):
        entry = entry.strip()
        usable = (entry.isdigit() and int(entry) < installed) or entry.startswith(("GPU-", "MIG-"))
        if not usable:
            break
        visible += 1
    return min(visible, installed)


def trains_on_gpus(device: str) -> bool:
    """Whether a run asking for ``device`` (auto, cpu, cuda, mps) trains on CUDA GPUs here."""
    return device == "cuda" or (device == "auto" and gpu_count() > 0)
