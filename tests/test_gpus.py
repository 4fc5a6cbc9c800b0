"""transfer.core.gpus: how many GPUs, answered without loading torch into the asking process."""

from __future__ import annotations

import subprocess
import sys

import torch

from transfer.core import gpus


def test_a_fresh_process_counts_gpus_without_importing_torch():
    code = ("import sys; from transfer.core import gpus; n = gpus.gpu_count(); "
            "print(n, gpus.has_gpu(), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    count, has_gpu, torch_loaded = done.stdout.split()
    assert int(count) == torch.cuda.device_count()
    assert has_gpu == str(torch.cuda.is_available() or torch.backends.mps.is_available())
    assert torch_loaded == "False"


def test_the_child_probe_says_what_torch_says(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as in the web server: the probe must ask a child
    monkeypatch.setattr(gpus, "_may_have_gpu", lambda: True)
    gpus.gpus.cache_clear()
    try:
        found = gpus.gpus()
    finally:
        gpus.gpus.cache_clear()
    assert found.count == torch.cuda.device_count()
    assert found.describe().startswith("GPU" if found.count or found.mps else "CPU")
