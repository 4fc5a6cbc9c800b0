"""The smaller model: a run's checked ONNX export quantized to int8, and the check that decides
whether anyone gets it.

Quantization is static (onnxruntime.quantization, QDQ format): weights as int8 per output
channel, activations as uint8 with ranges measured on :data:`CALIBRATION_PICTURES` of the run's
own training pictures (min-max calibration, see :data:`CALIBRATION_METHOD`). Three parts stay
in float32: the nodes that compute "None of these" (everything that only feeds the ``novelty``
output: normalising the features and comparing them with the stored reference pictures), so the
distance to the reference is measured as precisely as before; the convolutions that read the
picture itself (the stem), so the picture is not rounded a second time; and the softmax, so
probabilities are not rounded to steps of 1/255 (:func:`kept_in_float32`). Weights use 7 of
their 8 bits, except in depthwise convolutions, which keep all 8 (see :func:`quantized_onnx`).

The int8 model is checked against the float32 model on the run's validation pictures (up to
:data:`CHECK_LIMIT`) and offered only when it keeps the same top class on at least
:data:`MIN_TOP1_AGREEMENT` of them, loses at most :data:`MAX_ACCURACY_LOSS` of accuracy and
gives the same "None of these" decision, at every strictness, on at least
:data:`MIN_UNKNOWN_AGREEMENT` of them. :class:`Int8Check` holds the figures and says why a model
was refused. This module has no torch: the pictures are prepared by
:mod:`transfer.data.picture` exactly as the web server and the bundle prepare them.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from transfer.core.errors import TransferError
from transfer.core.quota import human_size
from transfer.data.picture import Preprocessing, model_input, open_picture

PRECISIONS = ("float32", "int8")
MIN_TOP1_AGREEMENT = 0.99
MAX_ACCURACY_LOSS = 0.005
MIN_UNKNOWN_AGREEMENT = 0.99
# Measured on Lite0 features runs (ants and bees, 153 validation pictures; demo data, 29) with the
# exceptions of quantized_onnx: with 32, 64, 128 and 256 training pictures the same top class on
# all of them; the same "None of these" on 100, 100, 99.3 and 100 % (ants and bees) and 96.6,
# 100, 96.6 and 96.6 % (demo data: one picture). Percentile and entropy calibration changed no fewer
# answers than min-max and were three times slower. Keeping the last convolutions in float32 too
# changed nothing but the size (6.3 MB instead of 5.0 MB).
CALIBRATION_PICTURES = 64
CALIBRATION_METHOD = "MinMax"
CHECK_LIMIT = 1000
STRICTNESS_LEVELS = ("relaxed", "normal", "strict")
NOVELTY_OUTPUT = "novelty"
PRECISION_KEY = "precision"  # in the int8 model's metadata


def session_precision(session) -> str:
    """``int8`` for a session of the smaller model, else ``float32``."""
    return session.get_modelmeta().custom_metadata_map.get(PRECISION_KEY, "float32")


class QuantizeError(TransferError):
    """A run that cannot be quantized, or whose int8 model does not answer like its float32 one."""


@dataclass(frozen=True)
class Int8Check:
    """How the int8 model answered the validation pictures compared with the float32 model."""

    pictures: int
    calibration_pictures: int
    top1_agreement: float  # share of pictures with the same top class
    float_accuracy: float
    int8_accuracy: float
    unknown_agreement: float | None  # worst share of equal "None of these" decisions over strictness levels
    max_probability_diff: float
    float_bytes: int
    int8_bytes: int

    @property
    def accuracy_loss(self) -> float:
        return self.float_accuracy - self.int8_accuracy

    def failures(self) -> list[str]:
        """What keeps the model from being offered, one clause each (empty: it passed)."""
        reasons = []
        if not self.top1_agreement >= MIN_TOP1_AGREEMENT:
            reasons.append(f"it keeps the same top class on only {self.top1_agreement:.1%} of them "
                           f"(at least {MIN_TOP1_AGREEMENT:.0%} needed)")
        if not self.accuracy_loss <= MAX_ACCURACY_LOSS + 1e-9:
            reasons.append(f"its accuracy falls from {self.float_accuracy:.1%} to {self.int8_accuracy:.1%} "
                           f"(at most {MAX_ACCURACY_LOSS * 100:.1f} points may be lost)")
        if self.unknown_agreement is not None and not self.unknown_agreement >= MIN_UNKNOWN_AGREEMENT:
            reasons.append(f"its \"None of these\" decisions agree on only {self.unknown_agreement:.1%} of them "
                           f"(at least {MIN_UNKNOWN_AGREEMENT:.0%} needed)")
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        """The figures in one sentence (the Downloads panel and the model card show it)."""
        unknown = "" if self.unknown_agreement is None else \
            f", the same \"None of these\" decisions on {self.unknown_agreement:.1%}"
        return (f"{human_size(self.int8_bytes)} instead of {human_size(self.float_bytes)}; on {self.pictures} "
                f"validation pictures: the same top class as float32 on {self.top1_agreement:.1%}{unknown}, accuracy "
                f"{self.int8_accuracy:.1%} (float32: {self.float_accuracy:.1%}), probabilities within "
                f"{self.max_probability_diff:.3f}")

    def refusal(self) -> str:
        return (f"The smaller (int8) model of this run was refused: on {self.pictures} validation pictures "
                + "; ".join(self.failures()) + ". Keep the float32 model.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Int8Check":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


# --------------------------------------------------------------------------- quantizing


def quantized_onnx(float_onnx: bytes, calibration: np.ndarray, input_name: str = "input") -> bytes:
    """``float_onnx`` with int8 weights and uint8 activations, ranges measured on ``calibration``
    (a batch of prepared pictures); the novelty part of the graph stays float32."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Pictures(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(calibration)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {input_name: row[None].astype(np.float32)}

    with tempfile.TemporaryDirectory(prefix="transfer-int8-") as scratch:
        source, prepared, target = (Path(scratch) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(float_onnx)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - the optimiser is a help, not a need: quantize the export as it is
            prepared = source
        model = onnx.load(str(prepared))
        quantize_static(str(prepared), str(target), Pictures(), quant_format=QuantFormat.QDQ, per_channel=True,
                        # Weights use 7 of their 8 bits: CPUs with AVX2 but without VNNI (this machine,
                        # many laptops) multiply uint8 by int8 in matrix products with 16-bit sums of two
                        # products, which saturate with 8-bit weights. Depthwise convolutions are not
                        # computed as matrix products and keep all 8 bits (full_range_weights).
                        reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=kept_in_float32(model, input_name),
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
                        extra_options={"CalibTensorRangeSymmetric": False,
                                       "TensorQuantOverrides": full_range_weights(model)})
        quantized = onnx.load(str(target))
        onnx.helper.set_model_props(quantized, {PRECISION_KEY: "int8"})  # pages say which model answers
        return quantized.SerializeToString()


# Why the full-range depthwise weights and the float32 stem, measured on Lite0 runs (ants and
# bees: a features run and a fine-tuned one, 153 validation pictures each; the demo data: a
# features run, 29): the mean largest probability difference from float32 and the mean novelty
# difference, with 7-bit weights everywhere against with these two exceptions:
#   features, ants and bees  0.021 / 0.0105 -> 0.016 / 0.0076 (2 pictures with another top class -> 0)
#   fine-tuned, ants and bees 0.022 / 0.0099 -> 0.014 / 0.0068
#   features, demo data      0.050 / 0.0157 -> 0.050 / 0.0107 (2 "None of these" changes -> 0)
# 8-bit weights everywhere saturate on this machine (0.041 on the first run, 3 pictures with another
# top class); 8 bits in the depthwise convolutions alone gave 0.017, so they do not saturate. The
# stem kept in float32 costs no time: in int8 it was slower than in float32 (0.52 against 0.38 ms).


def kept_in_float32(model, input_name: str) -> list[str]:
    """Names of the nodes left unquantized: the "None of these" part, the convolutions that read
    the prepared picture directly and the softmax."""
    stem = [node.name for node in model.graph.node if node.op_type == "Conv" and input_name in node.input]
    softmax = [node.name for node in model.graph.node if node.op_type == "Softmax"]
    return novelty_only_nodes(model) + stem + softmax


def full_range_weights(model) -> dict:
    """Quantization overrides that give the weights of depthwise convolutions all 8 bits."""
    stored = {tensor.name for tensor in model.graph.initializer}
    depthwise = [node.input[1] for node in model.graph.node if node.op_type == "Conv" and len(node.input) > 1
                 and node.input[1] in stored and _attribute(node, "group", 1) > 1]
    return {weight: [{"axis": 0, "reduce_range": False}] for weight in depthwise}


def _attribute(node, name: str, default):
    import onnx

    return next((onnx.helper.get_attribute_value(item) for item in node.attribute if item.name == name), default)


def novelty_only_nodes(model) -> list[str]:
    """Names of the nodes that feed only the ``novelty`` output (none for a model without it)."""
    outputs = [output.name for output in model.graph.output]
    if NOVELTY_OUTPUT not in outputs:
        return []
    feeding = {name: _ancestors(model, name) for name in outputs}
    others = set().union(*(nodes for name, nodes in feeding.items() if name != NOVELTY_OUTPUT))
    return sorted(feeding[NOVELTY_OUTPUT] - others)


def without_novelty(model_bytes: bytes) -> bytes:
    """The same model with its ``novelty`` output, the nodes that only feed it and the tensors
    only they read (the reference of training pictures' features) removed: class answers stay
    bit for bit those of the model it came from, and nothing of the reference is left."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    if NOVELTY_OUTPUT not in [output.name for output in model.graph.output]:
        return model_bytes
    dropped = set(novelty_only_nodes(model))
    kept_nodes = [node for node in model.graph.node if node.name not in dropped]
    read = {name for node in kept_nodes for name in node.input}
    kept_outputs = [output for output in model.graph.output if output.name != NOVELTY_OUTPUT]
    kept_initializers = [tensor for tensor in model.graph.initializer if tensor.name in read]
    del model.graph.node[:]
    model.graph.node.extend(kept_nodes)
    del model.graph.output[:]
    model.graph.output.extend(kept_outputs)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_initializers)
    kept_values = [value for value in model.graph.value_info if value.name in read]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_values)
    return model.SerializeToString()


def _ancestors(model, output: str) -> set[str]:
    producer = {tensor: node for node in model.graph.node for tensor in node.output}
    seen, wanted = set(), [output]
    while wanted:
        node = producer.get(wanted.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        wanted.extend(node.input)
    return seen


# --------------------------------------------------------------------------- checking


def check_int8(float_session, int8_session, pictures: np.ndarray, truths: list[int], novelty: dict | None,
               calibration_pictures: int, float_bytes: int, int8_bytes: int, batch: int = 16) -> Int8Check:
    """Both models on the same prepared ``pictures`` (their true class indices ``truths``)."""
    float_answers = _answers(float_session, pictures, batch)
    int8_answers = _answers(int8_session, pictures, batch)
    truths = np.asarray(truths)
    float_top, int8_top = float_answers[0].argmax(1), int8_answers[0].argmax(1)
    difference = float(np.abs(float_answers[0] - int8_answers[0]).max()) if len(pictures) else 0.0
    if not np.isfinite(int8_answers[0]).all():
        difference = float("inf")
    return Int8Check(
        pictures=len(pictures), calibration_pictures=calibration_pictures,
        top1_agreement=float((float_top == int8_top).mean()),
        float_accuracy=float((float_top == truths).mean()), int8_accuracy=float((int8_top == truths).mean()),
        unknown_agreement=_unknown_agreement(float_answers, int8_answers, novelty),
        max_probability_diff=difference, float_bytes=float_bytes, int8_bytes=int8_bytes)


def _answers(session, pictures: np.ndarray, batch: int) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: np.ascontiguousarray(pictures[start:start + batch], dtype=np.float32)})
             for start in range(0, len(pictures), batch)]
    return [np.concatenate([part[index] for part in parts]) for index in range(len(parts[0]))]


def _unknown_agreement(float_answers, int8_answers, novelty: dict | None) -> float | None:
    thresholds = (novelty or {}).get("thresholds") or {}
    if len(float_answers) < 2 or len(int8_answers) < 2 or not thresholds:
        return None
    scores = np.ravel(float_answers[1]), np.ravel(int8_answers[1])
    shares = [float(((scores[0] > thresholds[level]) == (scores[1] > thresholds[level])).mean())
              for level in STRICTNESS_LEVELS if level in thresholds]
    return min(shares) if shares else None


# --------------------------------------------------------------------------- the run's pictures


def prepared(pictures: list, truths: list[int] | None, preprocessing: Preprocessing) -> tuple[np.ndarray, list[int]]:
    """Pictures (paths or PIL images) prepared as the studio prepares them, as one batch, and the
    true classes of those that could be read."""
    rows, kept = [], []
    for index, item in enumerate(pictures):
        try:
            image = open_picture(Path(item), preprocessing.resize_size) if isinstance(item, Path) else item
        except (OSError, ValueError, SyntaxError):
            continue  # a picture deleted or damaged since training: the others still decide
        rows.append(model_input(image, preprocessing))
        kept.append(truths[index] if truths is not None else -1)
    size = preprocessing.input_size
    return (np.stack(rows) if rows else np.zeros((0, 3, size, size), dtype=np.float32)), kept


def calibration_images(run_dir: Path, config: dict, count: int = CALIBRATION_PICTURES) -> list:
    """Up to ``count`` of the run's training pictures, the classes taking turns (paths, or PIL
    images of the decoded copies training kept)."""
    from transfer.data.dataset import load_dataset
    from transfer.data.samples import Dataset, DataError

    source = config.get("dataset")
    try:
        dataset = Dataset.from_dict(source) if isinstance(source, dict) else load_dataset(
            source, val_fraction=float(config.get("val_fraction", 0.2)), seed=int(config.get("split_seed", 0)))
    except (DataError, OSError, TypeError, KeyError, ValueError):
        raise QuantizeError("The run's training pictures cannot be found any more, so the int8 model cannot be "
                            "calibrated on them; keep the float32 model.") from None
    groups = [sorted(samples, key=lambda s: s.sha256) for samples in dataset.by_class("train").values()]
    turns = [group[index] for index in range(max(map(len, groups), default=0)) for group in groups if index < len(group)]
    images = []
    for sample in turns:
        if len(images) >= count:
            break
        image = _picture(sample.path, sample.sha256)
        if image is not None:
            images.append(image)
    if not images:
        raise QuantizeError("None of the run's training pictures can be read any more, so the int8 model cannot "
                            "be calibrated on them; keep the float32 model.")
    return images


def validation_images(run_dir: Path, config: dict, limit: int = CHECK_LIMIT) -> tuple[list, list[int]]:
    """The run's validation pictures that can still be found (paths or PIL images) and their true classes."""
    from transfer.analysis.evaluate import EvaluationNotReady, load_evaluation, picture_location

    try:
        evaluation = load_evaluation(run_dir)
    except EvaluationNotReady as error:
        raise QuantizeError(f"The int8 model cannot be checked: {error}") from None
    images, truths = [], []
    for prediction in evaluation.predictions[:limit]:
        image = _picture(picture_location(config, prediction), prediction.sha256)
        if image is not None:
            images.append(image)
            truths.append(prediction.true_index)
    if not images:
        raise QuantizeError("The run's validation pictures cannot be found any more, so the int8 model cannot be "
                            "checked against the float32 model; keep the float32 model.")
    return images, truths


def _picture(path: Path | None, sha256: str):
    from PIL import Image

    from transfer.analysis.evaluate import cached_picture

    if path is not None and Path(path).is_file():
        return Path(path)  # opened by prepared(), at the size the model needs, as the studio opens it
    array = cached_picture(sha256)
    return Image.fromarray(array) if array is not None else None
