"""Decoded pictures of a data set in one file on disk, read a batch at a time.

Fine-tuning and training from scratch crop and flip batches of ``(S, S, 3)`` uint8 centre
squares (see :mod:`transfer.data.augment`). Holding all of them in memory caps a data set at what
fits in RAM (20,000 pictures at S = 256 are 3.9 GB), so they live in a *bank*: one ``.npy``
file of shape ``(N, S, S, 3)`` under ``TRANSFER_HOME/cache/banks`` (swept by ``transfer gc``
like every cache), built once per list of pictures (their content hashes, in order), ``S``,
interpolation and pixel-rules version, and read per batch with :meth:`PictureBank.take`.

* Building fills the file picture by picture from the per-picture decode cache
  (:class:`transfer.data.cache.DecodedImageCache`, which decodes only what it never saw, so a
  second data set sharing pictures decodes only the new ones); at most a few decoded pictures
  are in memory at any time. The file is written under a temporary name and renamed when
  complete: a killed build never leaves a bank that looks finished.
* Reading copies the rows of a batch out of the file with ``pread`` into one tensor (pinned
  for a GPU when asked). The file keeps the ``.npy`` layout, so ``numpy.load(path,
  mmap_mode="r")`` maps it as it is, but the trainer does not read through a mapping: every
  page a process touches through a map counts toward its resident memory until the kernel
  takes it back, so one epoch over a large bank would *look* like the whole data set in RAM.
  Reads leave that caching to the kernel's page cache, which is shared, reclaimable and not
  the process's, and the process holds one batch.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfer.core import paths
from transfer.data.picture import PIXEL_RULES_VERSION, centre_square
from transfer.data.cache import DecodedImageCache
from transfer.data.samples import Sample
from transfer.core.errors import TransferError
from transfer.core.quota import DISK_RESERVE_BYTES, human_size
from transfer.core.files import file_lock

BANK_KIND = "banks"
#: Bump when the file layout or what a row holds changes.
LAYOUT_VERSION = 1
#: A temporary file this old belongs to a build that was killed (a live build writes to its
#: file all the time); it is deleted when the next bank is built, with build locks as old.
STALE_TEMP_SECONDS = 6 * 3600
_TEMP_PREFIX = ".tmp-"
_LOCK_PREFIX = ".lock-"
_ROW_DIMS = 3  # (S, S, 3) per picture


class BankError(TransferError):
    """The decoded pictures could not be kept on disk (full disk, damaged bank file)."""


@dataclass(frozen=True)
class BankStats:
    """How a bank came to be: ``decoded`` pictures decoded now, ``cached`` read from a cache
    (the per-picture decode cache, or all of them when a complete bank was found)."""

    pictures: int
    decoded: int
    cached: int
    reused: bool
    seconds: float


# --------------------------------------------------------------------------- naming


def bank_key(hashes: Sequence[str], side: int, interpolation: str) -> str:
    """The name of the bank for these picture contents, in this order, at this size."""
    digest = hashlib.sha256()
    digest.update(f"layout={LAYOUT_VERSION};pixels={PIXEL_RULES_VERSION};side={int(side)};"
                  f"interpolation={interpolation};count={len(hashes)}\n".encode())
    for sha in hashes:
        digest.update(sha.encode() + b"\n")
    return digest.hexdigest()[:32]


def bank_path(hashes: Sequence[str], side: int, interpolation: str, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else paths.cache_dir(BANK_KIND)
    return root / f"{bank_key(hashes, side, interpolation)}.npy"


# --------------------------------------------------------------------------- reading


class _OpenFile:
    """One read-only file descriptor, shared by a bank and its views (see :meth:`PictureBank.rows`)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


class PictureBank:
    """Rows ``start`` to ``stop`` of a bank file: ``len(bank)`` pictures of ``(side, side, 3)``."""

    def __init__(self, path: Path | str, *, _file: _OpenFile | None = None, _header: tuple | None = None,
                 _start: int = 0, _stop: int | None = None):
        self.path = Path(path)
        if _header is None:
            shape, offset = read_header(self.path)
        else:
            shape, offset = _header
        self._header = (shape, offset)
        self._file = _file or _OpenFile(self.path)
        self.side = int(shape[1])
        self.data_offset = offset
        self.row_bytes = self.side * self.side * 3
        self.start = _start
        self.stop = int(shape[0]) if _stop is None else _stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def rows(self, start: int, stop: int) -> PictureBank:
        """Pictures ``start`` to ``stop`` of this bank as a bank of their own (no copy)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} of a bank of {len(self)}")
        return PictureBank(self.path, _file=self._file, _header=self._header,
                           _start=self.start + start, _stop=self.start + stop)

    def take(self, indices, *, pin_memory: bool = False) -> torch.Tensor:
        """The pictures at ``indices`` (a tensor, array or list) as a uint8 ``(B, S, S, 3)`` tensor,
        in the order asked; ``pin_memory`` for a quick, asynchronous copy to a GPU."""
        rows = _as_rows(indices)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"picture {int(rows.max() if rows.max() >= len(self) else rows.min())} "
                             f"is outside a bank of {len(self)}")
        out = torch.empty((rows.size, self.side, self.side, 3), dtype=torch.uint8, pin_memory=pin_memory)
        self._read_into(out.numpy(), rows + self.start)
        return out

    def batches(self, batch_size: int, *, pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """All pictures in order, ``batch_size`` at a time (validation, or filling a GPU copy)."""
        for first in range(0, len(self), batch_size):
            yield self.take(np.arange(first, min(first + batch_size, len(self))), pin_memory=pin_memory)

    def close(self) -> None:
        self._file.close()

    def _read_into(self, out: np.ndarray, rows: np.ndarray) -> None:
        """Fill ``out[i]`` with file row ``rows[i]``: visited in file order, and a run of rows that
        follow each other in the file and in ``out`` is one read."""
        if self._file.fd < 0:
            raise BankError(f"The picture bank {self.path.name} was closed.")
        order = np.argsort(rows, kind="stable")
        flat = out.reshape(len(rows), self.row_bytes)
        run_start = 0
        for k in range(1, len(order) + 1):
            if k < len(order) and order[k] == order[k - 1] + 1 and rows[order[k]] == rows[order[k - 1]] + 1:
                continue
            first_slot, count = int(order[run_start]), k - run_start
            buffer = memoryview(flat[first_slot:first_slot + count]).cast("B")
            _pread_exactly(self._file.fd, buffer, self.data_offset + int(rows[order[run_start]]) * self.row_bytes,
                           self.path)
            run_start = k


def read_header(path: Path) -> tuple[tuple[int, ...], int]:
    """The shape of a bank file and where its pixels start; :class:`BankError` when the file is
    not a complete bank."""
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(stream)
            offset = stream.tell()
            size = os.fstat(stream.fileno()).st_size
    except (OSError, ValueError) as error:
        raise BankError(f"The picture bank {Path(path).name} cannot be read ({error}); it is rebuilt.") from None
    ok = (dtype == np.uint8 and not fortran and len(shape) == 1 + _ROW_DIMS and shape[1] == shape[2]
          and shape[3] == 3 and size == offset + int(np.prod(shape)))
    if not ok:
        raise BankError(f"The picture bank {Path(path).name} is damaged; it is rebuilt.")
    return tuple(int(n) for n in shape), offset


def _as_rows(indices) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


def _pread_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    while len(buffer):
        count = os.preadv(fd, [buffer], offset)
        if count <= 0:
            raise BankError(f"The picture bank {path.name} ends early; delete it and train again.")
        buffer, offset = buffer[count:], offset + count


# --------------------------------------------------------------------------- building


def open_or_build(
    samples: Iterable[Sample],
    side: int,
    interpolation: str = "bilinear",
    *,
    decoded: DecodedImageCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    root: Path | None = None,
) -> tuple[PictureBank, BankStats]:
    """The bank of ``samples`` at ``side`` (the preprocessing's resize size), built if missing.

    ``progress(done, total)`` is called like :meth:`DecodedImageCache.decode_all`'s (``total``
    counts distinct contents), from the calling thread; an exception it raises (a cancelled
    run) stops the build and leaves nothing behind.
    """
    started = time.perf_counter()
    samples = list(samples)
    rows_of: dict[str, list[int]] = {}
    for row, sample in enumerate(samples):
        rows_of.setdefault(sample.sha256, []).append(row)
    path = bank_path(list(sample.sha256 for sample in samples), side, interpolation, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Processes that want the same bank at once (the ranks of a distributed run on one machine)
    # build it once: the others wait for the lock, then find it complete.
    with _build_lock(path):
        existing = _open_complete(path, len(samples), side)
        if existing is not None:
            if progress:
                progress(len(rows_of), len(rows_of))
            return existing, BankStats(len(samples), 0, len(rows_of), True, time.perf_counter() - started)
        decoded = decoded if decoded is not None else DecodedImageCache(memory_budget_bytes=0)
        decoded_before, hits_before = decoded.decoded, decoded.hits
        _build(path, samples, rows_of, side, interpolation, decoded, progress)
    stats = BankStats(len(samples), decoded.decoded - decoded_before, decoded.hits - hits_before, False,
                      time.perf_counter() - started)
    return PictureBank(path), stats


def _build_lock(path: Path):
    return file_lock(path.with_name(f"{_LOCK_PREFIX}{path.stem}"))


def _open_complete(path: Path, count: int, side: int) -> PictureBank | None:
    if not path.is_file():
        return None
    try:
        bank = PictureBank(path)
    except (BankError, OSError):
        return None
    if len(bank) != count or bank.side != side:
        bank.close()
        return None
    return bank


def _build(path: Path, samples: list[Sample], rows_of: dict[str, list[int]], side: int, interpolation: str,
           decoded: DecodedImageCache, progress: Callable[[int, int], None] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent)
    shape = (len(samples), side, side, 3)
    nbytes = int(np.prod(shape))
    _check_free_space(path.parent, nbytes)
    handle, temp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{path.stem}-", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.lib.format.write_array_header_1_0(stream, {"descr": "|u1", "fortran_order": False, "shape": shape})
            offset = stream.tell()
            stream.truncate(offset + nbytes)  # sparse until filled: no pass over the disk twice
            stream.flush()
            _fill(stream.fileno(), offset, side, samples, rows_of, interpolation, decoded, progress)
            os.fsync(stream.fileno())  # the bank is complete on disk before it gets its real name
        os.replace(temp, path)
    except OSError as error:
        _unlink_quietly(temp)
        if error.errno == errno.ENOSPC:
            raise _no_space(path.parent, nbytes) from None
        raise BankError(f"The decoded pictures could not be written to {path.parent} ({error}).") from None
    except BaseException:
        _unlink_quietly(temp)
        raise


def _fill(fd: int, offset: int, side: int, samples: list[Sample], rows_of: dict[str, list[int]],
          interpolation: str, decoded: DecodedImageCache, progress: Callable[[int, int], None] | None) -> None:
    """Decode (or read from the decode cache) each distinct picture and write its square to every
    row holding it. Workers write their own rows; at most ``2 x workers`` pictures are in flight."""
    row_bytes = side * side * 3
    first_of = [samples[rows[0]] for rows in rows_of.values()]
    total, done = len(first_of), 0

    def store(sample: Sample) -> None:
        square = centre_square(decoded.get(sample, side, interpolation))
        if square.shape != (side, side, 3):
            raise ValueError(f"{sample.path.name} decoded to {square.shape[:2]}, expected {side} x {side}")
        data = memoryview(np.ascontiguousarray(square)).cast("B")
        for row in rows_of[sample.sha256]:
            _pwrite_exactly(fd, data, offset + row * row_bytes)

    if progress:
        progress(0, total)
    pool = ThreadPoolExecutor(max_workers=decoded.workers)
    pending: set[Future] = set()
    try:
        for sample in first_of:
            pending.add(pool.submit(store, sample))
            if len(pending) >= 2 * decoded.workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done = _count_finished(finished, done, total, progress)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            done = _count_finished(finished, done, total, progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _count_finished(finished: set[Future], done: int, total: int, progress) -> int:
    for future in finished:
        future.result()  # a picture that failed stops the build with its own error
        done += 1
        if progress:
            progress(done, total)
    return done


def _pwrite_exactly(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        count = os.pwrite(fd, data, offset)
        data, offset = data[count:], offset + count


def _check_free_space(folder: Path, nbytes: int) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < nbytes + DISK_RESERVE_BYTES:  # the studio's one reserve, as for uploads and runs
        raise _no_space(folder, nbytes, free)


def _no_space(folder: Path, nbytes: int, free: int | None = None) -> BankError:
    had = f", {human_size(free)} are free" if free is not None else ""
    return BankError(f"Not enough disk space for the decoded pictures: {human_size(nbytes)} are needed in "
                     f"{folder}{had}. Free some space (`transfer gc` shrinks the caches) or train on fewer "
                     f"or smaller pictures.")


def _remove_stale_temps(folder: Path) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for temp in [*folder.glob(f"{_TEMP_PREFIX}*"), *folder.glob(f"{_LOCK_PREFIX}*")]:
        try:
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
        except OSError:
            pass  # another build removed or renamed it meanwhile


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- batches on a device

#: A bank is copied whole onto a GPU when it takes at most this share of the GPU's free memory,
#: so the model, its activations and the optimizer keep the rest.
RESIDENT_SHARE = 0.5
_UPLOAD_ROWS = 256


class DeviceBatches:
    """The pictures of a bank as the training loop uses them, on the training device: indexing
    with a tensor of indices (``batches[indices]``) or a list gives a uint8 ``(B, S, S, 3)``
    batch on ``device``, a slice gives the rows as another ``DeviceBatches``, and ``shape``,
    ``dtype`` and ``device`` read as those of the uint8 tensor the bank used to be.

    On the CPU every batch is read from the bank file. On a GPU the whole bank is copied into
    GPU memory once when it fits (:data:`RESIDENT_SHARE`): a GPU step takes milliseconds, less
    than reading scattered rows from a disk, and the pictures then never cross the bus again;
    a bank too large for that is read per batch into pinned memory and copied asynchronously.
    A uint8 tensor may stand in for a bank (it is then the resident copy).
    """

    dtype = torch.uint8

    def __init__(self, bank: PictureBank | torch.Tensor, device: torch.device | str, *,
                 resident: bool | None = None):
        self.device = torch.device(device)
        if isinstance(bank, torch.Tensor):
            self.bank, self.resident = None, bank.to(self.device)
        else:
            if resident is None:
                resident = self.device.type == "cuda" and fits_on_gpu(bank.nbytes, self.device)
            self.bank, self.resident = bank, _upload(bank, self.device) if resident else None
        self.pinned = self.device.type == "cuda" and self.resident is None

    def __len__(self) -> int:
        return len(self.resident) if self.resident is not None else len(self.bank)

    @property
    def shape(self) -> torch.Size:
        if self.resident is not None:
            return self.resident.shape
        return torch.Size((len(self.bank), self.bank.side, self.bank.side, 3))

    def __getitem__(self, key) -> torch.Tensor | DeviceBatches:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("picture rows are sliced without a step")
            return self._rows(start, max(start, stop))
        return self.take(key)

    def take(self, indices) -> torch.Tensor:
        if self.resident is not None:
            return self.resident[torch.as_tensor(indices).to(self.device)]
        images = self.bank.take(indices, pin_memory=self.pinned)
        return images.to(self.device, non_blocking=True) if self.pinned else images

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for first in range(0, len(self), batch_size):
            yield self.take(torch.arange(first, min(first + batch_size, len(self))))

    def _rows(self, start: int, stop: int) -> DeviceBatches:
        part = object.__new__(DeviceBatches)
        part.device, part.pinned = self.device, self.pinned
        part.bank = self.bank.rows(start, stop) if self.bank is not None else None
        part.resident = self.resident[start:stop] if self.resident is not None else None
        return part


def fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_SHARE * free


def _upload(bank: PictureBank, device: torch.device) -> torch.Tensor:
    """The bank as one tensor on ``device``, copied a few hundred rows at a time (never the
    whole bank in host memory)."""
    resident = torch.empty((len(bank), bank.side, bank.side, 3), dtype=torch.uint8, device=device)
    first = 0
    for rows in bank.batches(_UPLOAD_ROWS, pin_memory=device.type == "cuda"):
        resident[first:first + len(rows)].copy_(rows, non_blocking=True)
        first += len(rows)
    return resident
