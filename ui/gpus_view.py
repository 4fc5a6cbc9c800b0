""""GPUs to use": offered on a machine with several GPUs, absent with one or none.

The GPUs are counted by ``transfer.core.machine.gpu_count`` (``transfer.core.gpus``: probed once per server,
or torch when it is loaded already), so a page shows the control without loading torch.
"""

from __future__ import annotations

import streamlit as st

from transfer.core import machine

HELP = ("Trains on several GPUs at once, one process per GPU (PyTorch's DistributedDataParallel, "
        "started through torchrun). The batch size stays the batch of all GPUs together and the "
        "learning rate stays as for one GPU, so results compare with one-GPU runs; each step is faster.")


def gpus_to_use(current: int | None, key: str, where=None) -> int:
    """The number of GPUs the run should train on: a choice on machines with 2 or more GPUs
    (starting at ``current``), 1 elsewhere without showing anything."""
    count = machine.gpu_count()
    if count < 2:
        return 1
    chosen = min(max(1, int(current or 1)), count)
    return int((where or st).number_input("GPUs to use", 1, count, chosen, key=key, help=HELP))
