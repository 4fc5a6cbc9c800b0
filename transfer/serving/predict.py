"""Use a finished run: load its model once, then classify pictures one at a time or in batches.

A :class:`Predictor` holds a run's model (by default its checked ONNX export in onnxruntime,
see transfer.serving.export; the PyTorch model is loaded only for Grad-CAM), its class names and the
backbone's evaluation preprocessing (:mod:`transfer.data.picture`'s rules: short side scaled to
``resize_size`` with the backbone's interpolation, centre crop of ``input_size``, normalised with
the weights' mean and std). Every picture is read through :func:`transfer.data.images.open_image`,
so every format and colour mode the data layer accepts works here too; answers are
:func:`transfer.data.picture.answers`, the same as the web server's and the bundle's.

The model is rebuilt by :mod:`transfer.models.model_io` from the run's ``model.json`` and
``model.safetensors``: nothing in a run folder is ever unpickled.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from transfer.data.augment import eval_transform
from transfer.data.picture import Prediction, Preprocessing, answers, model_square
from transfer.serving.loading import LoadedRun, PredictError, load_run_model  # noqa: F401 (part of this module's interface)
from transfer.data.images import IMAGE_EXTENSIONS, ImageError, open_image
from transfer.models.novelty import NOT_AVAILABLE, unknown_threshold

ImageSource = Image.Image | Path | str | bytes | BinaryIO


# --------------------------------------------------------------------------- preprocessing


def centre_crop(image: Image.Image, preprocessing: Preprocessing) -> Image.Image:
    """The picture as the model sees it: the central ``input_size`` square, for heat-map overlays."""
    square = model_square(image, preprocessing)
    offset = (square.shape[0] - preprocessing.input_size) // 2
    size = preprocessing.input_size
    return Image.fromarray(np.ascontiguousarray(square[offset:offset + size, offset:offset + size]))


def as_rgb_image(source: ImageSource, min_short_side: int | None = None) -> Image.Image:
    """Any picture source as an RGB image. Files, bytes and streams go through ``open_image``
    (EXIF orientation, first frame, pixel cap); a PIL image is taken as already oriented."""
    if isinstance(source, Image.Image):
        if source.mode == "RGB":
            return source
        # Re-encoding losslessly sends odd modes (I;16, CMYK, P with transparency) through the
        # same conversions as files, so a dragged-in image and a decoded one look the same.
        for file_format in ("PNG", "TIFF"):
            buffer = io.BytesIO()
            try:
                source.save(buffer, format=file_format)
            except (OSError, ValueError, KeyError):
                continue
            return open_image(buffer.getvalue())
        return source.convert("RGB")
    # min_short_side lets a large JPEG decode at a reduced scale: the model needs few pixels.
    return open_image(source, min_short_side=min_short_side)


# --------------------------------------------------------------------------- the engines


class TorchEngine:
    """Probabilities from the PyTorch model (channels-last on the CPU: about a third faster there)."""

    def __init__(self, model: nn.Module, channels_last: bool | None = None):
        self.device = next(model.parameters()).device
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        self.model = (model.to(memory_format=torch.channels_last) if self.channels_last else model).eval()
        self.hook_lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return torch.softmax(self.model(batch).float(), dim=1).cpu()

    def scores(self, batch: torch.Tensor, reference) -> tuple[torch.Tensor, np.ndarray | None]:
        """Probabilities and, with a ``reference`` (transfer.models.novelty), each picture's novelty."""
        if reference is None:
            return self(batch), None
        from transfer.models.novelty import head_input_vectors

        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self.hook_lock, torch.inference_mode():  # the head's pre-hook is per model, not per call
            logits, features = head_input_vectors(self.model, batch)
        return torch.softmax(logits.float(), dim=1).cpu(), reference.score(features.cpu().numpy())


class OnnxEngine:
    """Probabilities from the run's checked ONNX export in an onnxruntime session: no autograd,
    a graph optimised once, and a bounded thread pool (see transfer.serving.export.onnx_session).
    ``InferenceSession.run`` is safe to call from several threads at once."""

    def __init__(self, onnx_model: Path | str | bytes, threads: int | None = None):
        from transfer.serving.export import onnx_session

        self.session = onnx_session(onnx_model, threads)
        self.input_name = self.session.get_inputs()[0].name
        # Exports of runs with a novelty reference answer "novelty" second (transfer.models.novelty).
        self.scores_novelty = [output.name for output in self.session.get_outputs()][1:2] == ["novelty"]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.scores(batch)[0]

    def scores(self, batch: torch.Tensor, reference=None) -> tuple[torch.Tensor, np.ndarray | None]:
        """Probabilities and the graph's own novelty output (None when the export has none)."""
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        outputs = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(outputs[0]), outputs[1] if self.scores_novelty else None


# --------------------------------------------------------------------------- the predictor


class Predictor:
    """A run's model, loaded once, answering ``predict`` for any number of pictures.

    Plain predictions go through ``engine``: the run's checked ONNX export in onnxruntime (the
    fast path, see :meth:`from_run`) or the PyTorch model. Grad-CAM always runs on a PyTorch
    model of its own, loaded on first use and serialised by a lock, so its hooks never touch a
    plain prediction. Safe to share between threads and sessions (the web app keeps one per run
    per process).
    """

    def __init__(self, model: nn.Module | Callable[[], nn.Module], labels: Sequence[str],
                 preprocessing: Preprocessing, *, channels_last: bool | None = None, warm_up: bool = True,
                 name: str = "", onnx_model: Path | str | bytes | None = None, threads: int | None = None,
                 novelty=None):
        """``model`` is the PyTorch model, or a function that loads it (called only when Grad-CAM
        needs it) when ``onnx_model`` gives the fast path. ``novelty`` is the run's
        :class:`transfer.models.novelty.Reference` (None: the run was trained without one)."""
        self.labels = list(labels)
        self.novelty = novelty
        self.preprocessing = preprocessing
        self.name = name
        if onnx_model is not None:
            self.engine = OnnxEngine(onnx_model, threads)
            self._model_source = model
        else:
            self.engine = TorchEngine(model, channels_last)
            self._model_source = lambda: copy.deepcopy(self.engine.model)  # Grad-CAM's own copy
        self.fast = isinstance(self.engine, OnnxEngine)
        self._cam_model: nn.Module | None = None
        self._cam_lock = threading.Lock()
        self._load_lock = threading.Lock()
        if warm_up:  # the first call pays for kernel selection; pay it here, not on a user's first picture
            self.engine(torch.zeros(1, 3, preprocessing.input_size, preprocessing.input_size))

    @classmethod
    def from_run(cls, run_dir: Path | str, *, fast: bool = True, **options) -> "Predictor":
        """The predictor of a finished run (or of any folder holding model.json and model.safetensors,
        and optionally model.onnx). With ``fast`` (the default) plain predictions run on the checked
        ONNX export (made and kept in the run folder on first use) and the PyTorch model is only
        loaded for Grad-CAM; a backbone that cannot be exported falls back to PyTorch."""
        if fast:
            from transfer.serving.export import prediction_onnx
            from transfer.models.model_io import read_model_info

            info = read_model_info(run_dir)
            onnx_file = prediction_onnx(run_dir)
            if onnx_file is not None:
                return cls(lambda: load_run_model(run_dir).model, [str(c) for c in info["classes"]],
                           Preprocessing.from_info(info["preprocessing"]), name=str(info.get("backbone", "")), onnx_model=onnx_file,
                           novelty=_reference(run_dir), **options)
        loaded = load_run_model(run_dir)
        return cls(loaded.model, loaded.labels, loaded.preprocessing, name=loaded.backbone,
                   novelty=_reference(run_dir), **options)

    @property
    def model(self) -> nn.Module:
        """The PyTorch model Grad-CAM works on (never the one plain predictions use), loaded once."""
        with self._load_lock:
            if self._cam_model is None:
                model = self._model_source()
                self._cam_model = model.eval()
            return self._cam_model

    # ----------------------------------------------------------------- inference

    def preprocess(self, source: ImageSource) -> torch.Tensor:
        image = as_rgb_image(source, min_short_side=self.preprocessing.resize_size)
        return eval_transform(image, self.preprocessing)

    def probabilities(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Softmax over the classes for preprocessed ``(3, H, W)`` tensors, one row each."""
        return self.engine(torch.stack(list(tensors)))

    def scores(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, np.ndarray | None]:
        """Probabilities and novelty (None for a run without a reference) of preprocessed tensors."""
        probabilities, novelty = self.engine.scores(torch.stack(list(tensors)), self.novelty)
        return probabilities, novelty if self.novelty is not None else None

    def unknown_threshold(self, setting: str | float | None = "normal") -> float | None:
        """The novelty above which this model says "None of these" for ``setting`` (relaxed,
        normal, strict, a number, or off); None when it never does."""
        check_unknown_setting(setting)
        return self.novelty.threshold(setting) if self.novelty else None

    def predict(self, images: ImageSource | Sequence[ImageSource], top_k: int = 5, *,
                batch_size: int = 32, unknown_threshold: str | float | None = "normal") -> list[Prediction]:
        """Top-k classes for each picture (PIL images, paths, bytes or open files), each with its
        novelty and whether it is "None of these" at ``unknown_threshold``.

        Raises :class:`ImageError` for a source that is not a usable picture; batch prediction
        over folders and zips (:func:`predict_paths`) skips those instead.
        """
        if isinstance(images, (Image.Image, str, Path, bytes)) or hasattr(images, "read"):
            images = [images]
        threshold = self.unknown_threshold(unknown_threshold)
        tensors = [self.preprocess(image) for image in images]
        results: list[Prediction] = []
        for start in range(0, len(tensors), batch_size):
            probabilities, novelty = self.scores(tensors[start:start + batch_size])
            results += self.top_k(probabilities, top_k, novelty, threshold=threshold)
        return results

    def top_k(self, probabilities: torch.Tensor, k: int, novelty: np.ndarray | None = None, *,
              threshold: float | None = None) -> list[Prediction]:
        """Predictions from probabilities (:func:`transfer.data.picture.answers`), with each
        picture's novelty and "None of these" when its novelty is over ``threshold``."""
        if k < 1:
            raise PredictError("--top-k must be at least 1.")
        return answers(probabilities.numpy(), self.labels, k, novelty, threshold)

    # ----------------------------------------------------------------- explanation

    def explain(self, source: ImageSource, target_class: int | str | None = None) -> "Explanation":
        """Grad-CAM for one picture: where the model looked for ``target_class`` (default: its top class)."""
        from transfer.analysis.explain import cam_layer_info, gradcam

        image = as_rgb_image(source, min_short_side=self.preprocessing.resize_size)
        crop = centre_crop(image, self.preprocessing)
        tensor = eval_transform(image, self.preprocessing)
        if isinstance(target_class, str):
            if target_class not in self.labels:
                raise PredictError(f"'{target_class}' is not one of this model's classes: {', '.join(self.labels)}.")
            target_class = self.labels.index(target_class)
        model = self.model
        cam, target = None, None
        with self._cam_lock:  # finding the layer runs a probe with hooks too: never beside another's
            info = cam_layer_info(model)
            if info.found:
                device = next(model.parameters()).device
                cam, target = gradcam(model, tensor.unsqueeze(0).to(device), target_class, return_target=True)
        if target is None:
            target = int(self.probabilities([tensor])[0].argmax())
        return Explanation(crop, cam, target, self.labels[target], info.description)


def check_unknown_setting(setting) -> None:
    """Raises :class:`PredictError` with a sentence for a strictness that is not one."""
    try:
        unknown_threshold(None, setting)
    except ValueError as error:
        raise PredictError(f"{error}.") from None


def _reference(folder: Path | str):
    from transfer.models.novelty import load_reference

    return load_reference(folder)


def load_fast_predictor(folder: Path | str, **options) -> Predictor:
    """The fast predictor of any folder holding ``model.json`` and ``model.safetensors`` (a run,
    an unpacked bundle, a shared snapshot), using its ``model.onnx`` when there is one."""
    return Predictor.from_run(folder, fast=True, **options)


@dataclass
class Explanation:
    """A Grad-CAM heat map over the square the model saw (``image``), or ``cam=None`` with the reason."""

    image: Image.Image
    cam: np.ndarray | None
    target_class: int
    label: str
    layer: str  # which layer the map comes from, or why there is none

    def overlay(self, alpha: float = 0.45) -> Image.Image | None:
        from transfer.analysis.explain import overlay

        return None if self.cam is None else overlay(self.image, self.cam, alpha=alpha)


# --------------------------------------------------------------------------- batches


#: Columns of a batch prediction table and CSV; ``skipped`` holds the reason a file was left out.
BATCH_COLUMNS = ("file", "label", "probability", "unknown", "novelty", "top_k", "skipped")


@dataclass
class BatchResult:
    """Predictions for many files: one row per picture, and the files left out with a reason."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    novelty: bool = True  # False: the run has no novelty reference (trained before it existed)

    def table_rows(self) -> list[dict]:
        """Every file in order, predicted or skipped, with the columns of :data:`BATCH_COLUMNS`."""
        rows = [{"file": r["file"], "label": r["label"], "probability": round(r["probability"], 4),
                 "unknown": r.get("unknown", False),
                 "novelty": "" if r.get("novelty") is None else round(r["novelty"], 4),
                 "top_k": "; ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"]), "skipped": ""}
                for r in self.rows]
        rows += [{"file": s["file"], "label": "", "probability": "", "unknown": "", "novelty": "", "top_k": "",
                  "skipped": f"{s['reason']}: {s['detail']}" if s.get("detail") else s["reason"]} for s in self.skipped]
        return rows

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(BATCH_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in self.table_rows():
            writer.writerow({key: _spreadsheet_safe(value) for key, value in row.items()})
        return buffer.getvalue()

    def csv_bytes(self) -> bytes:
        return self.to_csv().encode("utf-8")

    def to_dict(self) -> dict:
        return {"predictions": self.rows, "skipped": self.skipped,
                **({} if self.novelty else {"note": NOT_AVAILABLE})}


def _spreadsheet_safe(value):
    """File names come from users' archives: a cell starting with ``=`` would run as a formula
    when the CSV is opened in a spreadsheet, so such text is prefixed with a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def predict_paths(run: Path | str | Predictor, sources: ImageSource | Iterable[Path | str | bytes], top_k: int = 5, *,
                  batch_size: int = 16, unknown_threshold: str | float | None = "normal") -> BatchResult:
    """Predict every picture in ``sources``: files, folders (searched recursively) and ``.zip``
    archives (given by path or as bytes), in order. Non-images, hidden files and unreadable
    pictures are skipped with a reason, never fatal; zips are unpacked with the data layer's
    limits (no absolute paths, ``..`` or links; entry count, size and compression ratio capped).
    Each row says whether the picture is "None of these" at ``unknown_threshold``."""
    if top_k < 1:
        raise PredictError("--top-k must be at least 1.")
    check_unknown_setting(unknown_threshold)  # a wrong setting is a sentence before any picture is read
    if isinstance(sources, (str, Path, bytes, bytearray)):
        sources = [sources]
    result = BatchResult()
    with tempfile.TemporaryDirectory(prefix="transfer-predict-") as scratch:
        files: list[tuple[str, Path]] = []
        for index, source in enumerate(sources):
            files += _expand_source(source, Path(scratch) / str(index), result)
        if files:  # a batch with nothing to predict need not load the model
            predictor = run if isinstance(run, Predictor) else Predictor.from_run(run)
            result.novelty = predictor.novelty is not None
            _predict_files(predictor, files, top_k, batch_size, result, predictor.unknown_threshold(unknown_threshold))
    return result


def _expand_source(source, scratch: Path, result: BatchResult) -> list[tuple[str, Path]]:
    """(display name, path) of every candidate picture in one source; skips noted in ``result``."""
    import zipfile

    if isinstance(source, (bytes, bytearray)):
        return _extract(bytes(source), "upload.zip", scratch, result)
    path = Path(source).expanduser()
    if path.is_dir():
        return _walk_pictures(path, path.name, result)
    if not path.exists():
        raise PredictError(f"{path} does not exist; give pictures, a folder of pictures or a .zip of them.")
    if path.suffix.lower() == ".zip" or (path.suffix.lower() not in IMAGE_EXTENSIONS and zipfile.is_zipfile(path)):
        return _extract(path, path.name, scratch, result)
    return [(str(source), path)]


def _extract(archive: Path | bytes, name: str, scratch: Path, result: BatchResult) -> list[tuple[str, Path]]:
    import json

    from transfer.data.archives import INGEST_LOG, extract_zip
    from transfer.data.samples import DataError

    try:
        folder = extract_zip(archive, scratch)
    except DataError as error:
        raise PredictError(str(error)) from None
    try:
        logged = json.loads((folder / INGEST_LOG).read_text())
    except (OSError, ValueError):
        logged = []
    for item in logged:
        result.skipped.append({"file": f"{name}/{item['path']}", "reason": item["reason"], "detail": item.get("detail", "")})
    return _walk_pictures(folder, name, result)


def _walk_pictures(folder: Path, name: str, result: BatchResult) -> list[tuple[str, Path]]:
    from transfer.data.archives import INGEST_LOG
    from transfer.data.images import NOT_AN_IMAGE
    from transfer.data.report import HIDDEN, MACOS_METADATA

    found = []
    for directory, subdirs, files in os.walk(folder):  # does not follow folder links
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__MACOSX")
        for file_name in sorted(files):
            path = Path(directory) / file_name
            shown = f"{name}/{path.relative_to(folder).as_posix()}"
            if file_name == INGEST_LOG:
                continue
            if file_name.startswith("."):
                reason = HIDDEN
            elif "__MACOSX" in path.parts:
                reason = MACOS_METADATA
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                reason = NOT_AN_IMAGE
            else:
                found.append((shown, path))
                continue
            result.skipped.append({"file": shown, "reason": reason, "detail": ""})
    return found


def _predict_files(predictor: Predictor, files: list[tuple[str, Path]], top_k: int, batch_size: int,
                   result: BatchResult, threshold: float | None) -> None:
    def prepare(item):
        shown, path = item
        try:
            return shown, predictor.preprocess(path), None
        except ImageError as error:
            return shown, None, error

    batches = [files[start:start + batch_size] for start in range(0, len(files), batch_size)]
    # Pictures decode in threads (Pillow releases the GIL), one batch ahead of the model, so
    # decoding overlaps inference and at most two batches of tensors are held at a time.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
        pending = [pool.submit(prepare, item) for item in batches[0]] if batches else []
        for index in range(len(batches)):
            prepared = [future.result() for future in pending]
            pending = [pool.submit(prepare, item) for item in batches[index + 1]] if index + 1 < len(batches) else []
            _record_batch(predictor, prepared, top_k, result, threshold)


def _record_batch(predictor: Predictor, prepared: list, top_k: int, result: BatchResult,
                  threshold: float | None) -> None:
    ready = [(shown, tensor) for shown, tensor, _ in prepared if tensor is not None]
    for shown, _, error in prepared:
        if error is not None:
            result.skipped.append({"file": shown, "reason": error.reason, "detail": error.detail})
    if ready:
        probabilities, novelty = predictor.scores([tensor for _, tensor in ready])
        predictions = predictor.top_k(probabilities, top_k, novelty, threshold=threshold)
        for (shown, _), prediction in zip(ready, predictions):
            result.rows.append({"file": shown, **prediction.to_dict()})
