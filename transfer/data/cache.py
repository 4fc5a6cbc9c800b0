"""Decode each picture once: a cache of uint8 RGB arrays keyed by content hash and size.

Decoded arrays are kept in memory (least recently used first out, up to a byte budget) and
always written to disk as ``.npy`` files under ``cache_dir("decoded")``, so a second run, in
this process or another, decodes nothing: it reads the arrays back, which costs a file read
instead of a JPEG decode and a resize.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from transfer.core import paths
from transfer.data.samples import Sample
from transfer.data.picture import MAX_PIXELS, PIXEL_RULES_VERSION, resize_short_side
from transfer.data.images import open_image, to_array
from transfer.core.files import atomic_path

DEFAULT_MEMORY_BUDGET = 512 * 1024**2


class DecodedImageCache:
    """Decoded pictures at a given short side, shared by every run on this machine.

    ``get`` returns a read-only ``(height, width, 3)`` uint8 array whose short side is exactly
    ``short_side`` (larger pictures are scaled down, smaller ones up, so a training crop of
    that size always fits). Copy an array before changing it: the cache hands out the same
    one again. ``hits`` counts answers from memory or disk, ``misses`` and ``decoded`` count
    pictures that had to be decoded.
    """

    def __init__(
        self,
        root: Path | None = None,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        *,
        workers: int | None = None,
        max_pixels: int = MAX_PIXELS,
        write_behind: bool = False,
    ):
        self.root = Path(root) if root is not None else paths.cache_dir("decoded")
        self.root.mkdir(parents=True, exist_ok=True)
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.workers = workers or min(8, os.cpu_count() or 2)
        self.max_pixels = max_pixels
        self._memory: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
        # With write_behind, disk copies are written by one background thread, so decoding
        # never waits for the file system (call flush() before relying on the files).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-decoded") if write_behind else None
        self._writes: list = []
        self.hits = 0
        self.memory_hits = 0
        self.disk_hits = 0
        self.misses = 0
        self.decoded = 0

    # ------------------------------------------------------------------ reading

    def get(self, sample: Sample, short_side: int, interpolation: str = "bilinear") -> np.ndarray:
        """The picture of ``sample`` at ``short_side``, scaled with ``interpolation`` (the
        backbone's, see Preprocessing), decoding it only if never done before."""
        key = (sample.sha256, int(short_side), str(interpolation))
        array = self._from_memory(key)
        if array is not None:
            return array
        array = self._from_disk(key)
        if array is not None:
            with self._lock:
                self.hits += 1
                self.disk_hits += 1
            self._remember(key, array)
            return array
        with self._lock:
            self.misses += 1
        array = self._decode(sample.path, key[1], key[2])
        with self._lock:
            self.decoded += 1
        if self._writer is None:
            self._store(key, array)
        else:
            with self._lock:
                self._writes.append(self._writer.submit(self._store, key, array))
        self._remember(key, array)
        return array

    def decode_all(
        self,
        samples: Iterable[Sample],
        short_side: int,
        progress: Callable[[int, int], None] | None = None,
        interpolation: str = "bilinear",
    ) -> list[np.ndarray]:
        """``get`` for many samples in parallel threads, in the order given.

        ``progress(done, total)`` is called from the calling thread after each distinct picture
        (``total`` counts distinct contents), so a progress bar or a Streamlit element may be
        updated from it.
        """
        samples = list(samples)
        # Copies of one picture (same content hash) are decoded once, not once per thread.
        first_of: dict[str, Sample] = {}
        for sample in samples:
            first_of.setdefault(sample.sha256, sample)
        total = len(first_of)
        by_hash: dict[str, np.ndarray] = {}
        if progress:
            progress(0, total)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = {pool.submit(self.get, sample, short_side, interpolation): sha for sha, sample in first_of.items()}
            for done, future in enumerate(as_completed(futures), start=1):
                by_hash[futures[future]] = future.result()
                if progress:
                    progress(done, total)
        return [by_hash[sample.sha256] for sample in samples]

    def flush(self) -> None:
        """Wait until every disk copy written behind has been written."""
        with self._lock:
            writes, self._writes = self._writes, []
        for write in writes:
            write.result()

    def clear_memory(self) -> None:
        """Forget the in-memory copies (the disk copies stay)."""
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def memory_items(self) -> int:
        return len(self._memory)

    def path_for(self, sha256: str, short_side: int, interpolation: str = "bilinear") -> Path:
        """Where the array for one picture, size and interpolation lives on disk (bilinear
        arrays keep the plain size folder they always had, and pixels of the first pixel rules
        a folder without a version)."""
        folder = str(int(short_side)) if interpolation == "bilinear" else f"{int(short_side)}-{interpolation}"
        if PIXEL_RULES_VERSION > 1:
            folder += f"-p{PIXEL_RULES_VERSION}"
        return self.root / folder / sha256[:2] / f"{sha256}.npy"

    # ------------------------------------------------------------------ internals

    def _from_memory(self, key) -> np.ndarray | None:
        with self._lock:
            array = self._memory.get(key)
            if array is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                self.memory_hits += 1
            return array

    def _remember(self, key, array: np.ndarray) -> None:
        size = array.nbytes
        if size > self.memory_budget_bytes:
            return
        with self._lock:
            if key in self._memory:
                return
            self._memory[key] = array
            self._memory_bytes += size
            while self._memory_bytes > self.memory_budget_bytes:
                _, evicted = self._memory.popitem(last=False)
                self._memory_bytes -= evicted.nbytes

    def _from_disk(self, key) -> np.ndarray | None:
        path = self.path_for(*key)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, or a half-written or damaged file: decode again
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) != key[1]:
            return None
        array.flags.writeable = False
        return array

    def _decode(self, path: Path, short_side: int, interpolation: str) -> np.ndarray:
        image = open_image(path, self.max_pixels, min_short_side=short_side)
        array = to_array(resize_short_side(image, short_side, interpolation))
        array.flags.writeable = False
        return array

    def _store(self, key, array: np.ndarray) -> None:
        """Write atomically (temp file, then rename), so readers never see half an array."""
        path = self.path_for(*key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".npy", durable=False) as temp, open(temp, "wb") as out:
                np.save(out, array, allow_pickle=False)
        except OSError:
            pass  # a full or read-only disk costs speed next time, never this run's result
