"""Where training runs and how to make the most of it.

``auto`` picks CUDA when present, else Apple's MPS, else the CPU. On CUDA the loop uses
autocast (bfloat16 where the GPU supports it, otherwise float16 with a gradient scaler),
channels-last memory layout, and keeps the decoded uint8 pictures on the GPU. On the CPU
every core works (``torch.set_num_threads``). A CUDA out-of-memory error is recognised by
:func:`is_out_of_memory` so the loop can halve its batch and try again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from transfer.errors import TransferError


class DeviceError(TransferError):
    """The requested device is not on this machine."""


@dataclass(frozen=True)
class DeviceSetup:
    """One device and the speed settings that suit it."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast type, None for full float32
    use_grad_scaler: bool  # float16 autocast needs loss scaling; bfloat16 does not
    channels_last: bool

    @property
    def kind(self) -> str:
        return self.device.type

    def autocast(self):
        """Mixed precision for forward passes where it is a win; a no-op elsewhere."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.kind, dtype=self.amp_dtype)

    def grad_scaler(self):
        return torch.amp.GradScaler(self.kind, enabled=self.use_grad_scaler)

    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        text = self.kind
        if self.kind == "cuda":
            text += f" ({torch.cuda.get_device_name(self.device)})"
        elif self.kind == "cpu":
            text += f" ({torch.get_num_threads()} threads)"
        if self.amp_dtype is not None:
            text += f", autocast {str(self.amp_dtype).removeprefix('torch.')}"
        return text


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str = "auto") -> DeviceSetup:
    """The device for ``name`` (auto, cpu, cuda, cuda:N, mps) with its speed settings."""
    kind = name.split(":")[0]
    if kind == "auto":
        kind = "cuda" if cuda_available() else "mps" if mps_available() else "cpu"
        name = kind
    if kind == "cuda":
        if not cuda_available():
            raise DeviceError("No CUDA GPU is visible on this machine; choose --device cpu or auto.")
        device = torch.device(name)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        bf16 = torch.cuda.is_bf16_supported()
        return DeviceSetup(device, torch.bfloat16 if bf16 else torch.float16, not bf16, True)
    if kind == "mps":
        if not mps_available():
            raise DeviceError("Apple's MPS device is not available here; choose --device cpu or auto.")
        return DeviceSetup(torch.device("mps"), None, False, False)
    if kind == "cpu":
        use_all_cores()
        # oneDNN's convolutions are much faster in channels-last layout on x86 CPUs.
        return DeviceSetup(torch.device("cpu"), None, False, True)
    raise DeviceError(f"Unknown device '{name}': choose auto, cpu, cuda or mps.")


def use_all_cores() -> int:
    """Let torch use every core this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means the device ran out of memory (CUDA, MPS or a plain allocator)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory(setup: DeviceSetup) -> None:
    if setup.kind == "cuda":
        torch.cuda.empty_cache()
    elif setup.kind == "mps":
        torch.mps.empty_cache()
