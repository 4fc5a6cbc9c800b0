"""Prediction inside the web server's process, without torch: the run's checked ONNX model in
onnxruntime, pictures prepared with numpy by the same pixel rules as training and the bundle.

The web server must never import torch (it would cost the server a gigabyte and seconds per
new process). A :class:`ServerPredictor` answers the Predict page and demo links from a folder
holding ``model.json`` and ``model.onnx`` (a run's checked export, made by a child process on
first use, or a demo snapshot's own copy). Everything that still needs PyTorch runs in child
processes: a zip of pictures (:func:`predict_zip_in_child`, through ``transfer predict``), a
model that cannot be exported to ONNX (each picture through ``transfer predict``), and Grad-CAM
(:mod:`transfer.serving.explainer`).

Its answers are the studio's: the same decoding (``transfer.data.images.open_image``), the same
resize, crop and normalising factors (``transfer.data.picture.model_input``), the same ONNX
model that ``transfer.serving.predict.Predictor`` runs on its fast path, the same top-k and
"None of these" (``transfer.data.picture.answers``).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from transfer.data.picture import Prediction, Preprocessing, answers, model_input, to_rgb, unknown_threshold
from transfer.core.errors import TransferError
from transfer.data.images import open_image

MODEL_INFO_FILE, ONNX_FILE, INT8_FILE = "model.json", "model.onnx", "model-int8.onnx"
CHILD_TIMEOUT_SECONDS = 900
BATCH = 32


class ServerPredictError(TransferError):
    """A model or a picture the server cannot predict."""


class ServerPredictor:
    """One model folder's classes, preprocessing and ONNX session; thread-safe (onnxruntime's
    ``run`` may be called from several threads at once). Without ``model.onnx`` (a backbone that
    cannot be exported) each picture is predicted by a ``transfer predict`` child process."""

    def __init__(self, folder: Path | str, threads: int | None = None):
        self.folder = Path(folder)
        info = read_info(self.folder)
        self.labels = [str(name) for name in info["classes"]]
        self.preprocessing = Preprocessing.from_info(info["preprocessing"])
        self.name = str(info.get("backbone", ""))
        novelty = info.get("novelty")
        self.novelty = novelty if isinstance(novelty, dict) and novelty.get("thresholds") else None
        self.scores_novelty = False
        self.session = None
        self.precision = "float32"
        # A demo snapshot holds the int8 model beside the float32 one when it passed its check.
        onnx_file = next((self.folder / name for name in (INT8_FILE, ONNX_FILE) if (self.folder / name).is_file()), None)
        if onnx_file is None:
            onnx_file = checked_export(self.folder)
        if onnx_file is not None:
            from transfer.serving.export import onnx_session

            self.session = onnx_session(onnx_file, threads)
            self.input_name = self.session.get_inputs()[0].name
            # Exports of runs with a novelty reference answer "novelty" second (transfer.models.novelty).
            self.scores_novelty = [output.name for output in self.session.get_outputs()][1:2] == ["novelty"]
            from transfer.serving.quantize import session_precision

            self.precision = session_precision(self.session)  # "int8" where the smaller model serves
        self.fast = self.session is not None

    def prepare(self, source) -> np.ndarray:
        """The normalised ``(3, S, S)`` float32 input of one picture (bytes, a path or a PIL image)."""
        if isinstance(source, Image.Image):
            image = to_rgb(source)
        else:
            image = open_image(source, min_short_side=int(self.preprocessing.resize_size))
        return model_input(image, self.preprocessing)

    def scores(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and the graph's own novelty output (None when the export has none)."""
        batch = np.ascontiguousarray(np.stack(inputs), dtype=np.float32)
        outputs = self.session.run(None, {self.input_name: batch})
        return outputs[0], outputs[1] if self.scores_novelty else None

    def probabilities(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self.scores(inputs)[0]

    def predict(self, sources, top_k: int = 5, unknown_threshold: str | float | None = "normal") -> list[Prediction]:
        """Top-k classes for each picture, its novelty and whether it is "None of these" at
        ``unknown_threshold`` (relaxed, normal, strict, a number or off); raises ``ImageError``
        for a source that is not a picture."""
        if isinstance(sources, (bytes, str, Path, Image.Image)):
            sources = [sources]
        if top_k < 1:
            raise ServerPredictError("Show at least one class.")
        threshold = self.threshold(unknown_threshold)
        if not self.fast:
            return [self._predict_in_child(source, top_k, unknown_threshold) for source in sources]
        inputs = [self.prepare(source) for source in sources]
        results = []
        for start in range(0, len(inputs), BATCH):
            probabilities, novelty = self.scores(inputs[start:start + BATCH])
            results += answers(probabilities, self.labels, top_k, novelty, threshold)
        return results

    def threshold(self, setting: str | float | None) -> float | None:
        try:
            return unknown_threshold(self.novelty, setting)
        except ValueError as error:
            raise ServerPredictError(str(error)) from None

    def _predict_in_child(self, source, top_k: int, unknown_threshold="normal") -> Prediction:
        if not isinstance(source, bytes):
            source = Path(source).read_bytes()
        with tempfile.TemporaryDirectory(prefix="transfer-picture-") as scratch:
            picture = Path(scratch) / "picture"
            picture.write_bytes(source)
            answer = transfer_predict_child(self.folder, [str(picture)], top_k, unknown_threshold=unknown_threshold)
        rows = answer.get("predictions") or []
        if not rows:
            skipped = (answer.get("skipped") or [{}])[0]
            raise ServerPredictError(f"{skipped.get('reason', 'it could not be read')}: "
                                     f"{skipped.get('detail', '')}".rstrip(": "))
        top = rows[0]["top_k"]
        labels = [item["label"] for item in top]
        return Prediction(labels, [float(item["probability"]) for item in top],
                          [self.labels.index(label) for label in labels], rows[0].get("novelty"),
                          bool(rows[0].get("unknown")))


def read_info(folder: Path) -> dict:
    try:
        info = json.loads((folder / MODEL_INFO_FILE).read_text())
        info["classes"], info["preprocessing"]  # noqa: B018 - both must be there
    except (OSError, ValueError, KeyError, TypeError):
        raise ServerPredictError(f"{folder} holds no finished model; wait until its training has finished, "
                                 "or train it again.") from None
    return info


def checked_export(folder: Path) -> Path | None:
    """The run's checked ONNX export when a child process already made it: the int8 model where
    it passed its check (and the owner did not keep float32), else float32 (None when the model
    cannot be exported, or no export exists yet)."""
    from transfer.serving.export import ExportError, served_onnx

    try:
        return served_onnx(folder)
    except ExportError:
        return None


# --------------------------------------------------------------------------- work done by children


def transfer_predict_child(folder: Path, pictures: list[str], top_k: int, csv_path: Path | None = None,
                           unknown_threshold: str | float | None = "normal") -> dict:
    """The ``predict`` job of ``transfer.runtime.child_jobs`` (``transfer predict --json``'s answer)
    in a child process (lower priority, bounded threads); its JSON answer, or a sentence when it failed."""
    from transfer.core.child import run_child_job

    settings = {"run_dir": str(folder), "pictures": list(pictures), "top_k": top_k,
                "csv_path": None if csv_path is None else str(csv_path),
                "unknown_threshold": "off" if unknown_threshold is None else str(unknown_threshold)}
    try:
        done = run_child_job("predict", settings, timeout=CHILD_TIMEOUT_SECONDS, niced=True,
                             env={"OMP_NUM_THREADS": "2"})
    except subprocess.TimeoutExpired:
        raise ServerPredictError("Predicting took too long and was stopped; try fewer pictures at a time.") from None
    if "error" in done.answer:
        raise ServerPredictError(str(done.answer["error"]))
    if "predictions" not in done.answer:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ServerPredictError(f"Predicting stopped unexpectedly ({detail}); try again.")
    return done.answer


@dataclass
class ZipPredictions:
    """A zip's predictions as the Predict page shows them: rows, skipped files, table and CSV."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    csv_text: str = ""

    def table_rows(self) -> list[dict]:
        """Every file in order, predicted or skipped, as the CSV lists them (probabilities as numbers)."""
        table = list(csv.DictReader(io.StringIO(self.csv_text)))
        for row in table:
            row["probability"] = float(row["probability"]) if row.get("probability") else ""
            # CSV cells are text: "None of these" and its score go back to their types.
            if "unknown" in row:
                row["unknown"] = row["unknown"] == "True" if row["unknown"] else ""
            if row.get("novelty"):
                row["novelty"] = float(row["novelty"])
        return table

    def csv_bytes(self) -> bytes:
        return self.csv_text.encode("utf-8")


def predict_zip_in_child(folder: Path | str, data: bytes, top_k: int, unknown_threshold="normal") -> ZipPredictions:
    """Every picture in a zip (given as bytes), predicted by a ``transfer predict`` child: the
    zip's limits and the skip reasons are the command line's own."""
    with tempfile.TemporaryDirectory(prefix="transfer-zip-") as scratch:
        archive, table = Path(scratch) / "upload.zip", Path(scratch) / "predictions.csv"
        archive.write_bytes(data)
        answer = transfer_predict_child(Path(folder), [str(archive)], top_k, csv_path=table,
                                        unknown_threshold=unknown_threshold)
        text = table.read_text(encoding="utf-8") if table.is_file() else ""
    return ZipPredictions(answer.get("predictions") or [], answer.get("skipped") or [], text)

