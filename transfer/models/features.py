"""Backbone features, computed once per picture and view, cached on disk for every later run.

With a frozen backbone (feature transfer) the expensive part of training is running the
backbone; the head on top trains in milliseconds. So the vector that enters the head is
stored under ``transfer.core.paths.cache_dir("features")``::

    features/<key>/key.json              what the key stands for (human-readable)
    features/<key>/<sha[:2]>/<sha>.npy   one float32 vector per picture

``<key>`` hashes everything that changes the vector: the backbone, the identity of its
weights, the preprocessing (size, crop, mean, std) and the view (``centre`` for the
evaluation crop, ``<preset>:<n>`` for the n-th augmented view, whose crop and flip follow
from the picture's hash alone). The picture itself is named by the SHA-256 of its file.
Writes are atomic, so runs in other processes can share the cache at any time.

The vector is whatever the model's (new) head receives, caught by a forward pre-hook on the
head: this works for every architecture whose head :func:`transfer.models.heads.replace_head` found.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from transfer.core import paths
from transfer.data.augment import AugmentSpec, augment_batch, eval_batch, stack_squares, view_params
from transfer.data.picture import Preprocessing
from transfer.models.backbones import get_backbone
from transfer.data.picture import PIXEL_RULES_VERSION
from transfer.data.cache import DecodedImageCache
from transfer.data.samples import Sample
from transfer.core.devices import DeviceSetup, is_out_of_memory, release_cached_memory
from transfer.models.fusion import folded_copy
from transfer.models.heads import head_module
from transfer.core.files import atomic_path

CENTRE_VIEW = 0
DECODE_LOOKAHEAD_BATCHES = 8
# On the CPU the backbone runs fastest a few pictures at a time (its activations stay in the
# caches): EfficientNet-Lite0 on a 2-core AVX-512 CPU took 1.7-1.9 s for 398 pictures at 8,
# 2.2-2.3 s at 16 and 2.8 s at 64 (benchmarks/bench_warm.py's data).
CPU_FORWARD_PIECE = 8


def weights_identity(backbone: str, pretrained: bool = True, weights_sha256: str | None = None) -> str:
    """A string that changes whenever the backbone's weights could have changed; a run that
    starts from its own weights file is named by that file's SHA-256."""
    entry = get_backbone(backbone)
    if weights_sha256:
        return f"{entry.architecture}|file:{weights_sha256}"
    if not pretrained:
        return f"{entry.architecture}|random"
    file = entry.weights_file() if entry.weights_file else None
    stamp = ""
    if file is not None:
        stat = Path(file).stat()
        stamp = f"{Path(file).name}|{stat.st_size}|{int(stat.st_mtime)}"
    return f"{entry.architecture}|{entry.weights}|{stamp}"


def view_name(view: int, augmentation: str) -> str:
    return "centre" if view == CENTRE_VIEW else f"{augmentation}:{view}"


def feature_key(backbone: str, prep: Preprocessing, view: int, augmentation: str, precision: str = "fp32",
                weights_sha256: str | None = None) -> dict:
    """Everything the cached vector depends on, as a JSON-friendly dict (``weights_sha256``: the
    run's own starting weights, if any)."""
    return {
        "precision": precision,
        "backbone": backbone,
        "weights": weights_identity(backbone, weights_sha256=weights_sha256),
        "input_size": prep.input_size,
        "resize_size": prep.resize_size,
        "interpolation": prep.interpolation,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "view": view_name(view, augmentation),
        "version": 1,  # bump when the way features are computed changes
        # Pictures decoded by other pixel rules give other features (the first rules add no entry,
        # so the features cached before the rules had a version stay valid).
        **({"pixels": PIXEL_RULES_VERSION} if PIXEL_RULES_VERSION > 1 else {}),
    }


class FeatureCache:
    """The on-disk store of backbone features. ``hits`` and ``stored`` count vectors."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else paths.cache_dir("features")
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.stored = 0

    def folder(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        folder = self.root / digest
        if not (folder / "key.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / "key.json", json.dumps(key, indent=2, sort_keys=True).encode())
        return folder

    def load(self, folder: Path, sha256: str) -> np.ndarray | None:
        try:
            vector = np.load(folder / sha256[:2] / f"{sha256}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if vector.dtype != np.float32 or vector.ndim != 1:
            return None
        self.hits += 1
        return vector

    def store(self, folder: Path, sha256: str, vector: np.ndarray) -> None:
        target = folder / sha256[:2] / f"{sha256}.npy"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            buffer = _npy_bytes(np.ascontiguousarray(vector, dtype=np.float32))
            _atomic_write(target, buffer)
            self.stored += 1
        except OSError:
            pass  # a full disk costs speed next time, never this run's result


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path, durable=False) as temp:  # a lost entry is computed again
        temp.write_bytes(data)


# --------------------------------------------------------------------------- extraction


class HeadInputCatcher:
    """Runs a model and keeps what its head receives (the pooled backbone features)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._caught: torch.Tensor | None = None
        self._hook = head_module(model).register_forward_pre_hook(self._catch)

    def _catch(self, module, inputs):
        self._caught = inputs[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)
        caught, self._caught = self._caught, None
        return caught.flatten(1).float()

    def close(self) -> None:
        self._hook.remove()


@dataclass
class ExtractionStats:
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0


ProgressFn = Callable[[int, int, float], None]  # (vectors done, vectors in all, seconds so far)


def extract_features(
    samples: list[Sample],
    views: list[int],
    *,
    backbone: str,
    prep: Preprocessing,
    augmentation: str,
    spec: AugmentSpec | None,
    setup: DeviceSetup,
    load_model: Callable[[], nn.Module],
    batch_size: int = 64,
    decoded: DecodedImageCache | None = None,
    cache: FeatureCache | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_batch_shrink: Callable[[int], None] | None = None,
    weights_sha256: str | None = None,
) -> tuple[torch.Tensor, ExtractionStats]:
    """``(len(samples), len(views), dim)`` float32 features, computing only what the cache lacks.

    ``load_model()`` is called only when something must be computed (a warm cache never loads
    the backbone). Pictures are decoded in background threads while the backbone works on
    the previous batch. ``weights_sha256`` names the backbone's own starting weights, when
    ``load_model`` builds it from a weights file rather than the catalogue's.
    """
    cache = cache or FeatureCache()
    stats = ExtractionStats()
    started = time.perf_counter()
    folders = [cache.folder(feature_key(backbone, prep, view, augmentation, setup.precision, weights_sha256))
               for view in views]
    found: dict[tuple[int, int], np.ndarray] = {}
    missing: list[int] = []  # sample indices with at least one view to compute
    for index, sample in enumerate(samples):
        lacking = False
        for slot, folder in enumerate(folders):
            vector = cache.load(folder, sample.sha256)
            if vector is None:
                lacking = True
            else:
                found[(index, slot)] = vector
        if lacking:
            missing.append(index)
    stats.cached = len(found)
    total = len(samples) * len(views)
    if progress:
        progress(len(found), total, time.perf_counter() - started)

    if missing:
        extraction = _Extraction(samples, views, folders, found, cache, prep, spec, setup, stats, on_batch_shrink)
        extraction.compute(missing, load_model, decoded or DecodedImageCache(), batch_size,
                           lambda: progress and progress(len(found), total, time.perf_counter() - started),
                           should_stop)

    dim = next(iter(found.values())).shape[0] if found else 0
    features = torch.empty(len(samples), len(views), dim, dtype=torch.float32)
    for (index, slot), vector in found.items():
        features[index, slot] = torch.from_numpy(vector)
    stats.seconds = time.perf_counter() - started
    return features, stats


@dataclass
class _Extraction:
    """Computing the missing vectors, a batch at a time (decoded ahead in the background on a GPU)."""

    samples: list[Sample]
    views: list[int]
    folders: list[Path]
    found: dict
    cache: FeatureCache
    prep: Preprocessing
    spec: AugmentSpec | None
    setup: DeviceSetup
    stats: ExtractionStats
    on_batch_shrink: Callable[[int], None] | None

    def compute(self, missing: list[int], load_model, decoded: DecodedImageCache, batch_size: int,
                report: Callable[[], None], should_stop) -> None:
        from transfer.core.runs import Cancelled

        side = self.prep.resize_size
        chunks = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]

        def decode(chunk: list[int]) -> torch.Tensor:
            begun = time.perf_counter()
            arrays = decoded.decode_all([self.samples[i] for i in chunk], side, interpolation=self.prep.interpolation)
            bank = stack_squares(arrays, side)
            self.stats.decode_seconds += time.perf_counter() - begun
            return bank

        # On a GPU, decoding runs ahead (a bounded number of batches, to bound memory) while the
        # backbone works on earlier batches. On the CPU both would fight for the same cores (the
        # backbone's threads spin while they wait): there each batch is decoded, with every
        # core, just before its pass, which measured 3.4-3.9 s against 5.0-5.5 s overlapped
        # (398 pictures, 2 cores).
        lookahead = DECODE_LOOKAHEAD_BATCHES if self.setup.kind != "cpu" else 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as prefetcher, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-features") as writer:
            ahead = deque(prefetcher.submit(decode, chunk) for chunk in chunks[:lookahead])

            def bank_of(position: int) -> torch.Tensor:
                if not lookahead:
                    return decode(chunks[position])
                if position + lookahead < len(chunks):
                    ahead.append(prefetcher.submit(decode, chunks[position + lookahead]))
                return ahead.popleft().result()

            # On the CPU the first batch is decoded while the model may still load in the background.
            ready = {0: bank_of(0)} if not lookahead and chunks else {}
            model = load_model().to(self.setup.device).eval()
            # Frozen, so BatchNorm can be folded into the convolutions (in the layout they run fastest in).
            catcher = HeadInputCatcher(folded_copy(model).to(memory_format=self.setup.memory_format()))
            try:
                for position, chunk in enumerate(chunks):
                    bank = ready.pop(position) if position in ready else bank_of(position)
                    if should_stop and should_stop():
                        raise Cancelled()
                    self.compute_chunk(catcher, chunk, bank.to(self.setup.device), writer)
                    report()
            finally:
                for future in ahead:
                    future.cancel()
                catcher.close()

    def compute_chunk(self, catcher: HeadInputCatcher, chunk: list[int], bank: torch.Tensor,
                      writer: ThreadPoolExecutor) -> None:
        for slot, view in enumerate(self.views):
            todo = [k for k, index in enumerate(chunk) if (index, slot) not in self.found]
            if not todo:
                continue
            hashes = [self.samples[chunk[k]].sha256 for k in todo]
            vectors = self.forward_in_pieces(catcher, bank[todo], hashes, view)
            for k, sha, vector in zip(todo, hashes, vectors):
                self.found[(chunk[k], slot)] = vector
                # The cache's small files are written beside the backbone's next pass.
                writer.submit(self.cache.store, self.folders[slot], sha, vector)
                self.stats.computed += 1

    def forward_in_pieces(self, catcher, images: torch.Tensor, hashes: list[str], view: int) -> list[np.ndarray]:
        """Features of a batch; on out-of-memory, halves the piece size until it fits."""
        piece = images.shape[0] if self.setup.kind != "cpu" else min(images.shape[0], CPU_FORWARD_PIECE)
        while True:
            try:
                out = [_forward(catcher, images[i : i + piece], hashes[i : i + piece], view, self.prep, self.spec,
                                self.setup) for i in range(0, images.shape[0], piece)]
                vectors = torch.cat(out).cpu().numpy()
                return [vectors[i] for i in range(vectors.shape[0])]
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(error) or piece == 1:
                    raise
            # Out of memory: the cache is emptied only now, after the except block, when the
            # traceback holding the failed pieces' tensors is gone (and the pieces that did fit).
            out = None
            release_cached_memory(self.setup)
            piece = max(1, piece // 2)
            if self.on_batch_shrink:
                self.on_batch_shrink(piece)


def _forward(catcher, images, hashes, view, prep, spec, setup) -> torch.Tensor:
    with torch.inference_mode(), setup.autocast():
        if view == CENTRE_VIEW or spec is None:
            x = eval_batch(images, prep)
        else:
            x = augment_batch(images, prep, spec, params=view_params(hashes, view, spec))
        x = x.contiguous(memory_format=setup.memory_format())
        return catcher(x)
