"""Take a trained model out of the studio: ONNX, TorchScript, or a bundle that runs anywhere.

Every export is checked, not trusted: the exported model and the studio's PyTorch model both
classify up to :data:`CHECK_PICTURES` of the run's validation pictures, and an export whose class
probabilities differ by more than :data:`MAX_ABS_DIFF` is refused with a sentence.

* ``onnx``: ``model.onnx``, input ``input`` (a float batch ``N x 3 x H x W``, already resized,
  cropped and normalised as ``model.json`` says; N is dynamic), output ``probabilities``
  (softmax included), and for a run with a novelty reference a second output ``novelty``
  (``N``: the cosine distance of each picture's features to its k-th nearest training picture,
  computed inside the graph; see transfer.models.novelty). Written by PyTorch's TorchScript-based ONNX exporter (opset 17), which
  gives a plain graph for the EfficientNet-Lite, ResNet, MobileNet, VGG, ConvNeXt and ViT
  families without extra packages; run by onnxruntime.
* ``torchscript``: ``model.pt``, the same contract, a traced and frozen TorchScript module
  (``torch.jit.load`` reads it; no Python class of ours is needed); with a novelty reference it
  returns the tuple ``(probabilities, novelty)``.
* ``bundle``: one zip named after the run: ``model.onnx``, ``model.safetensors``, ``model.json``,
  ``requirements.txt``, a model card ``README.md`` and ``predict.py`` (transfer.data.picture,
  which needs only onnxruntime, numpy and pillow).
* ``web``: a static web page (transfer.serving.web_page): the checked ONNX model run by onnxruntime-web
  in the visitor's browser, with dropped pictures and the live camera; a zip, or a folder when
  ``output`` does not end in ``.zip``.

``precision="int8"`` gives the same formats (but TorchScript) with the smaller model of
:mod:`transfer.serving.quantize`: quantized in the child process that exports, checked against
the float32 model on the run's validation pictures, and refused with its figures when it would
answer differently. An unpacked int8 bundle still holds ``model.onnx``, so its ``predict.py`` runs
it unchanged. Where an int8 model passed its check the studio serves it (:func:`served_onnx`:
the web server's predictions, demo links, `transfer predict`) unless the owner keeps float32
(:func:`keep_float32`). The live camera keeps float32: in onnxruntime-web the int8 model was
slower (see ui/live_view.py); the int8 web page is offered for its size.

The novelty reference (the backbone features of up to 2,048 training pictures, behind "None of
these") would let whoever holds the file test whether a given photo was among the training
pictures. ``include_reference`` says whether an export carries it: by default the owner's ONNX,
TorchScript and bundle do, and a web page (made to be handed to strangers) does not. Without it
the model answers classes only; "None of these" is judged where the reference stays.

Finished exports are kept in the run folder (``exports/<weights stamp>/``, the stamp being the
weights file's size and modification time), so asking again costs nothing and retrained weights
are exported afresh. :func:`prediction_onnx` hands the checked ONNX file to the fast predictor.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_bytes, atomic_write_json

# transfer.models.model_io (and so torch) is imported inside the functions that need it: the web pages
# import this module to list finished exports and must stay free of torch.

FORMATS = ("bundle", "onnx", "torchscript", "web")
MAX_ABS_DIFF = 1e-4
CHECK_PICTURES = 64
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME, NOVELTY_NAME = "input", "probabilities", "novelty"
EXPORTS_FOLDER = "exports"
RECORD_FILE = "exports.json"
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
INT8_FILE = "model-int8.onnx"
INT8_FORMATS = ("bundle", "onnx", "web")
PRECISION_CHOICE_FILE = "precision.json"  # in the run folder: the owner's choice outlives retraining
WITHOUT_REFERENCE = "-without-reference"  # the record key and file name of an export left without it
BUNDLE_REQUIREMENTS = "onnxruntime>=1.17\nnumpy>=1.24\npillow>=10.0\n"


class ExportError(TransferError):
    """A model that cannot be exported, or whose export does not predict what the studio predicts."""


@dataclass(frozen=True)
class ExportResult:
    """A checked export: where it is, its size, and how far its probabilities are from PyTorch's."""

    path: Path
    format: str
    bytes: int
    max_abs_diff: float
    checked_on: int  # how many pictures (or generated inputs) the check compared
    check_inputs: str  # "validation pictures" or "generated inputs" (the pictures were gone)
    precision: str = "float32"
    check: dict | None = None  # an int8 model's figures against float32 (transfer.serving.quantize.Int8Check)

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}

    def int8_check(self):
        from transfer.serving.quantize import Int8Check

        return Int8Check.from_dict(self.check) if self.check else None


# --------------------------------------------------------------------------- the public entry points


def export_run(run_dir: Path | str, format: str, output: Path | str | None = None,
               precision: str = "float32", *, include_reference: bool | None = None) -> ExportResult:
    """Export a finished run as ``format`` (one of :data:`FORMATS`), checked against PyTorch;
    with ``precision="int8"`` the smaller model, checked against the float32 one.

    The export is made once per weights file and kept under the run's ``exports/`` folder;
    ``output`` (a file, or a folder to put it in) gets a copy. Raises :class:`ExportError` with a
    sentence when the run has no model, the backbone cannot be exported, or the check fails.
    ``include_reference``: whether the novelty reference goes along (default: see
    :func:`reference_included`).
    """
    if format not in FORMATS:
        raise ExportError(f"Unknown export format '{format}': choose one of {', '.join(FORMATS)}.")
    _require_precision(format, precision)
    run_dir = Path(run_dir)
    include = reference_included(format, include_reference)
    result = (cached_export(run_dir, format, precision, include)
              or _export_and_record(run_dir, format, precision, include))
    if output is not None and format == "web" and not str(output).lower().endswith(".zip"):
        return _unpack_page_to(result, output)
    return _copy_to(result, output) if output is not None else result


def reference_included(format: str, include_reference: bool | None = None) -> bool:
    """Whether an export carries the novelty reference: as asked, else every format but the web
    page, which exists to be given away."""
    return format != "web" if include_reference is None else bool(include_reference)


def _variant_name(name: str, include: bool) -> str:
    path = Path(name)
    return name if include else f"{path.stem}{WITHOUT_REFERENCE}{path.suffix}"


def cached_export(run_dir: Path | str, format: str, precision: str = "float32",
                  include_reference: bool | None = None) -> ExportResult | None:
    """The finished export of the run's current weights, or None when not made yet. A refused
    export raises its sentence again without redoing the work."""
    folder = exports_folder(Path(run_dir))
    record = _read_record(folder).get(_record_key(format, precision, reference_included(format, include_reference)))
    if not record:
        return None
    if "error" in record:
        raise ExportError(record["error"])
    path = folder / record["file"]
    if not path.is_file():
        return None
    return ExportResult(path, format, path.stat().st_size, record["max_abs_diff"], record["checked_on"],
                        record["check_inputs"], precision, record.get("check"))


def _record_key(format: str, precision: str, include: bool = True) -> str:
    key = format if precision == "float32" else f"{format}-{precision}"
    return key if include else key + WITHOUT_REFERENCE


def _require_precision(format: str, precision: str) -> None:
    if precision not in ("float32", "int8"):
        raise ExportError(f"Unknown precision '{precision}': choose float32 or int8.")
    if precision == "int8" and format not in INT8_FORMATS:
        raise ExportError(f"The smaller (int8) model is offered as {', '.join(INT8_FORMATS)}; "
                          f"export {format} in float32.")


def served_onnx(folder: Path | str) -> Path | None:
    """The ONNX file the studio serves for a run (the web server's predictions, demo links,
    `transfer predict`), without making anything: the int8 model when it was made and passed its check
    and the owner did not keep float32, else the checked float32 export; None when neither is
    made yet (or the model cannot be exported)."""
    folder = Path(folder)
    candidates = ["float32"] if keeps_float32(folder) else ["int8", "float32"]
    for precision in candidates:
        try:
            result = cached_export(folder, "onnx", precision)
        except ExportError:
            continue  # a refused int8 model: the float32 one serves
        if result is not None:
            return result.path
    return None


def keeps_float32(run_dir: Path | str) -> bool:
    """Whether the owner chose to serve the float32 model although an int8 one passed its check."""
    try:
        return json.loads((Path(run_dir) / PRECISION_CHOICE_FILE).read_text()).get("serve") == "float32"
    except (OSError, ValueError, AttributeError):
        return False


def keep_float32(run_dir: Path | str, keep: bool) -> None:
    """Record the owner's choice: serve float32 (``keep``) or the int8 model where it passed."""
    atomic_write_json(Path(run_dir) / PRECISION_CHOICE_FILE, {"serve": "float32" if keep else "int8"})


def prediction_onnx(folder: Path | str) -> Path | None:
    """The ONNX file the fast predictor runs for ``folder``: its own ``model.onnx`` (an unpacked
    bundle or a frozen snapshot), else the run's served export (:func:`served_onnx`), else its
    checked float32 export, made now. None when the model cannot be exported (the caller then
    predicts with PyTorch)."""
    folder = Path(folder)
    for name in (INT8_FILE, FILE_NAMES["onnx"]):  # a demo snapshot holds both when the int8 model passed
        if (folder / name).is_file():
            return folder / name
    try:
        return served_onnx(folder) or export_run(folder, "onnx").path
    except ExportError:
        return None


def exports_folder(run_dir: Path) -> Path:
    """``RUN_DIR/exports/<stamp>``: one folder per version of the weights file."""
    try:
        info = json.loads((run_dir / "model.json").read_text())
        stat = (run_dir / str(info.get("weights", "model.safetensors"))).stat()
    except (OSError, ValueError, AttributeError):
        raise ExportError(f"{run_dir} has no trained model to export yet: wait until its training has finished.") from None
    return run_dir / EXPORTS_FOLDER / f"{stat.st_size}-{stat.st_mtime_ns}"


# --------------------------------------------------------------------------- making and recording


def _export_and_record(run_dir: Path, format: str, precision: str, include: bool) -> ExportResult:
    folder = exports_folder(run_dir)
    key = _record_key(format, precision, include)
    try:
        result = _make_export(run_dir, format, folder, precision, include)
    except ExportError as error:
        _record(folder, key, {"error": str(error)})
        raise
    _record(folder, key, {"file": result.path.name, "max_abs_diff": result.max_abs_diff,
                          "checked_on": result.checked_on, "check_inputs": result.check_inputs,
                          **({"check": result.check} if result.check else {})})
    return result


def _make_export(run_dir: Path, format: str, folder: Path, precision: str = "float32",
                 include: bool = True) -> ExportResult:
    from transfer.serving.loading import load_run_model

    _remove_old_versions(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if precision == "float32" else f"-{precision}"
    if format == "bundle":
        onnx = export_run(run_dir, "onnx", precision=precision, include_reference=include)
        name = _variant_name(f"{run_dir.name}{suffix}.zip", include)
        atomic_write_bytes(folder / name, bundle_bytes(run_dir, onnx.path.read_bytes(), onnx.int8_check(), include))
        return replace(onnx, path=folder / name, format=format, bytes=(folder / name).stat().st_size)
    if format == "web":
        return _make_web_page(run_dir, folder, precision, include)
    if precision == "int8":
        return _make_int8_onnx(run_dir, folder, include)
    from transfer.models.novelty import load_reference, scored_model

    loaded = load_run_model(run_dir)
    inputs, source = check_inputs(run_dir, loaded.preprocessing)
    reference = load_reference(run_dir) if include else None
    wrapped = probability_model(loaded.model) if reference is None else scored_model(loaded.model, reference)
    outputs = [OUTPUT_NAME] if reference is None else [OUTPUT_NAME, NOVELTY_NAME]
    data = onnx_bytes(wrapped, loaded.preprocessing.input_size, loaded.backbone, outputs) if format == "onnx" \
        else torchscript_bytes(wrapped, loaded.preprocessing.input_size, loaded.backbone)
    difference = max_abs_diff(wrapped, data, format, inputs)
    if not difference <= MAX_ABS_DIFF:  # also refuses NaN
        raise ExportError(
            f"The {format} export of this run was refused: its class probabilities differ from the studio's "
            f"by up to {difference:.2g} on {len(inputs)} {source} (the limit is {MAX_ABS_DIFF:g}). "
            "Predict with the studio or the safetensors weights instead.")
    path = folder / _variant_name(FILE_NAMES[format], include)
    atomic_write_bytes(path, data)
    return ExportResult(path, format, len(data), float(difference), len(inputs), source)


def _record(folder: Path, format: str, entry: dict) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        record = _read_record(folder)
        record[format] = entry
        atomic_write_json(folder / RECORD_FILE, record)
    except OSError:
        pass  # a read-only run folder costs the next request a new export, never this result


def _read_record(folder: Path) -> dict:
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _remove_old_versions(current: Path) -> None:
    """Exports of earlier weights are no use to anyone: keep only the current version's folder."""
    root = current.parent
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and folder.name != current.name:
                shutil.rmtree(folder, ignore_errors=True)


def _copy_to(result: ExportResult, output: Path | str) -> ExportResult:
    target = Path(output).expanduser()
    if target.is_dir():
        target = target / result.path.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.path, target)
    except OSError as error:
        raise ExportError(f"The export could not be written to {target} ({error.strerror or error}); "
                          "choose another --output.") from None
    return replace(result, path=target)


def _make_int8_onnx(run_dir: Path, folder: Path, include: bool = True) -> ExportResult:
    """The float32 export quantized (transfer.serving.quantize) and checked against it on the
    run's validation pictures; refused with the figures when it answers differently. Without the
    novelty reference it is the checked int8 model with that part cut out, so its classes are
    exactly those the studio answers with."""
    from transfer.core.files import read_json
    from transfer.data.picture import Preprocessing
    from transfer.models.model_io import read_model_info
    from transfer.serving import quantize

    if not include:
        served = export_run(run_dir, "onnx", precision="int8", include_reference=True)
        data = quantize.without_novelty(served.path.read_bytes())
        path = folder / _variant_name(INT8_FILE, include)
        atomic_write_bytes(path, data)
        return replace(served, path=path, bytes=len(data))
    float_export = export_run(run_dir, "onnx", include_reference=include)
    float_onnx = float_export.path.read_bytes()
    info = read_model_info(run_dir) if include else without_reference(read_model_info(run_dir))
    config = read_json(run_dir / "config.json", {}) or {}
    preparation = Preprocessing.from_info(info["preprocessing"])
    try:
        calibration, _ = quantize.prepared(quantize.calibration_images(run_dir, config), None, preparation)
        pictures, truths = quantize.prepared(*quantize.validation_images(run_dir, config), preparation)
        int8_onnx = quantize.quantized_onnx(float_onnx, calibration, INPUT_NAME)
        check = quantize.check_int8(onnx_session(float_onnx), onnx_session(int8_onnx), pictures, truths,
                                    info.get("novelty"), len(calibration), len(float_onnx), len(int8_onnx))
    except quantize.QuantizeError as error:
        raise ExportError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - the quantizer's own failures become a sentence
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ExportError(f"This run's model could not be quantized to int8 ({first_line}); keep the float32 "
                          "model.") from None
    if not check.passed:
        raise ExportError(check.refusal())
    path = folder / _variant_name(INT8_FILE, include)
    atomic_write_bytes(path, int8_onnx)
    return ExportResult(path, "onnx", len(int8_onnx), check.max_probability_diff, check.pictures,
                        "validation pictures", "int8", check.to_dict())


def _make_web_page(run_dir: Path, folder: Path, precision: str = "float32", include: bool = False) -> ExportResult:
    """The web page around the checked ONNX export (its check is the page's check: the page's
    own preparation of pictures is held to the studio's by tests/test_web_page.py, bit for bit,
    and by tests/browser/test_live_camera.py in chromium)."""
    from transfer.models.model_io import read_model_info
    from transfer.serving.web_page import web_page_zip

    from transfer.analysis.trust import run_unsure_margin

    onnx = export_run(run_dir, "onnx", precision=precision, include_reference=include)
    info = read_model_info(run_dir) if include else without_reference(read_model_info(run_dir))
    info = {**info, "unsure_margin": run_unsure_margin(run_dir).margin}
    suffix = "" if precision == "float32" else f"-{precision}"
    name = _variant_name(f"{run_dir.name}-web{suffix}.zip", include)
    title = "Classifier: " + ", ".join(info["classes"][:6]) + (" ..." if len(info["classes"]) > 6 else "")
    atomic_write_bytes(folder / name, web_page_zip(f"{run_dir.name}-web", onnx.path.read_bytes(), info, title))
    return replace(onnx, path=folder / name, format="web", bytes=(folder / name).stat().st_size)


def _unpack_page_to(result: ExportResult, output: Path | str) -> ExportResult:
    from transfer.serving.web_page import unpack_page

    target = Path(output).expanduser()
    try:
        unpack_page(result.path, target)
    except OSError as error:
        raise ExportError(f"The web page could not be written to {target} ({error.strerror or error}); "
                          "choose another --output.") from None
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    return replace(result, path=target, bytes=size)


# --------------------------------------------------------------------------- the model formats


def probability_model(model):
    """``model`` with the softmax appended: exports return class probabilities, not logits."""
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, x):
            return torch.softmax(self.model(x), dim=1)

    return WithSoftmax(model).eval()


def _example(input_size: int):
    import torch

    return torch.zeros(2, 3, input_size, input_size)


def onnx_bytes(wrapped, input_size: int, backbone: str = "", outputs: list[str] | None = None) -> bytes:
    import warnings

    import torch

    outputs = outputs or [OUTPUT_NAME]
    buffer = io.BytesIO()
    try:
        # Not under no_grad: there PyTorch's attention layers take a fused fast path
        # (aten::_native_multi_head_attention) that has no ONNX form, and ViTs would fail.
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
            torch.onnx.export(wrapped, (_example(input_size),), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}})
    except Exception as error:  # noqa: BLE001 - any exporter failure becomes the sentence below
        raise ExportError(_cannot_export("ONNX", backbone, error)) from None
    return buffer.getvalue()


def torchscript_bytes(wrapped, input_size: int, backbone: str = "") -> bytes:
    import warnings

    import torch

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():  # as for ONNX, see there
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapped, _example(input_size), check_trace=False)
            torch.jit.save(torch.jit.freeze(traced), buffer)
    except Exception as error:  # noqa: BLE001
        raise ExportError(_cannot_export("TorchScript", backbone, error)) from None
    return buffer.getvalue()


def _cannot_export(kind: str, backbone: str, error: Exception) -> str:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (f"The backbone {backbone or 'of this run'} cannot be exported to {kind} ({first_line}). "
            "Download the safetensors weights instead, or train with another backbone.")


def onnx_session(model: bytes | str | Path, threads: int | None = None):
    """An onnxruntime CPU session with a bounded thread count (the web server shares the CPU)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle threads sleep instead of spinning: on a few shared cores a spinning pool steals the CPU
    # from the picture's own decoding and from the pages (measured: p50 13.5 -> 11 ms, p90 52 -> 16 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def max_abs_diff(wrapped, data: bytes, format: str, inputs) -> float:
    """The largest difference in class probabilities (and novelty, for a model that has it)
    between PyTorch and the exported model."""
    import numpy as np
    import torch

    def as_arrays(answer) -> list:
        answers = answer if isinstance(answer, (tuple, list)) else [answer]
        return [np.asarray(a.float().numpy() if isinstance(a, torch.Tensor) else a) for a in answers]

    with torch.inference_mode():
        reference = as_arrays(wrapped(inputs))
    if format == "onnx":
        session = onnx_session(data)
        exported = as_arrays(session.run(None, {INPUT_NAME: inputs.numpy()}))
    else:
        import warnings

        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the format asked for
            exported = as_arrays(torch.jit.load(io.BytesIO(data), map_location="cpu")(inputs))
    if [a.shape for a in exported] != [a.shape for a in reference]:
        return float("inf")
    return max(float(abs(e - r).max()) for e, r in zip(exported, reference))


def check_inputs(run_dir: Path, preprocessing):
    """Up to :data:`CHECK_PICTURES` validation pictures of the run, prepared as the studio
    prepares them; generated inputs when none of them can be found any more."""
    import torch

    tensors = [tensor for tensor in _validation_tensors(run_dir, preprocessing)]
    if tensors:
        return torch.stack(tensors), "validation pictures"
    generator = torch.Generator().manual_seed(0)
    size = preprocessing.input_size
    return torch.randn(8, 3, size, size, generator=generator), "generated inputs"


def _validation_tensors(run_dir: Path, preprocessing):
    from PIL import Image

    from transfer.analysis.evaluate import EvaluationNotReady, cached_picture, load_evaluation, picture_location
    from transfer.data.images import ImageError, open_image
    from transfer.data.augment import eval_transform
    from transfer.core.files import read_json

    try:
        evaluation = load_evaluation(run_dir)
    except EvaluationNotReady:
        return
    config = read_json(run_dir / "config.json", {}) or {}
    found = 0
    for prediction in evaluation.predictions:
        if found >= CHECK_PICTURES:
            return
        location = picture_location(config, prediction)
        try:
            image = open_image(location, min_short_side=preprocessing.resize_size) if location else None
        except ImageError:
            image = None
        if image is None:
            array = cached_picture(prediction.sha256)
            image = Image.fromarray(array) if array is not None else None
        if image is not None:
            found += 1
            yield eval_transform(image, preprocessing)


# --------------------------------------------------------------------------- the bundle


def without_reference(info: dict) -> dict:
    """``model.json`` for a model handed out without its novelty reference: nothing of it, so
    readers predict classes only."""
    return {key: value for key, value in info.items() if key != "novelty"}


def bundle_bytes(run_dir: Path, onnx: bytes, int8_check=None, include_reference: bool = True) -> bytes:
    """The zip: a folder named after the run holding everything needed to predict without torch."""
    from transfer.data import picture
    from transfer.models.model_io import MODEL_INFO_FILE, WEIGHTS_FILE, read_model_info

    info = read_model_info(run_dir) if include_reference else without_reference(read_model_info(run_dir))
    bundled_info = {**info, "weights": "model.safetensors",
                    "onnx": {"file": "model.onnx", "input": INPUT_NAME, "output": OUTPUT_NAME, "opset": ONNX_OPSET,
                             **({"novelty_output": NOVELTY_NAME} if info.get("novelty") else {}),
                             "precision": "int8" if int8_check else "float32"}}
    top = run_dir.name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{top}/model.onnx", onnx)
        archive.write(run_dir / info.get("weights", WEIGHTS_FILE), f"{top}/model.safetensors")
        if info.get("novelty"):  # the reference is inside model.onnx too; this copy is for other tools
            archive.write(run_dir / info["novelty"]["file"], f"{top}/{info['novelty']['file']}")
        archive.writestr(f"{top}/{MODEL_INFO_FILE}", json.dumps(bundled_info, indent=2) + "\n")
        archive.writestr(f"{top}/requirements.txt", BUNDLE_REQUIREMENTS)
        archive.writestr(f"{top}/README.md", model_card(run_dir, int8_check))
        archive.writestr(f"{top}/predict.py", Path(picture.__file__).read_text())
    return buffer.getvalue()


def model_card(run_dir: Path, int8_check=None) -> str:
    """The bundle's README.md: what the model tells apart, from what data, how well, its
    precision and its limits."""
    from transfer.serving.model_card import render_model_card

    return render_model_card(run_dir, int8_check)


# --------------------------------------------------------------------------- exporting from a server


EXPORT_TIMEOUT_SECONDS = 900


def export_in_subprocess(run_dir: Path | str, format: str, timeout: float = EXPORT_TIMEOUT_SECONDS,
                         precision: str = "float32", *, include_reference: bool | None = None) -> ExportResult:
    """:func:`export_run` in a child process (the ``export`` job of
    :mod:`transfer.runtime.child_jobs`): a web server stays responsive and never holds the
    exporter's memory. The child runs at a lower CPU priority with a bounded thread count.
    Returns the cached result; raises :class:`ExportError`."""
    import subprocess

    from transfer.core.child import run_child_job

    include = reference_included(format, include_reference)
    cached = cached_export(run_dir, format, precision, include)
    if cached is not None:
        return cached
    settings = {"run_dir": str(Path(run_dir).resolve()), "format": format, "precision": precision,
                "include_reference": include}
    try:
        done = run_child_job("export", settings, timeout=timeout, niced=True,
                             env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    except subprocess.TimeoutExpired:
        raise ExportError(f"The {format} export took longer than {timeout / 60:.0f} minutes and was stopped; "
                          "try again when the machine is less busy.") from None
    answer = done.answer
    if "error" in answer:
        raise ExportError(answer["error"])
    if done.returncode != 0 or "path" not in answer:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ExportError(f"The {format} export stopped unexpectedly ({detail}); try again, or use `transfer export`.")
    return cached_export(run_dir, format, precision, include) or ExportResult(
        Path(answer["path"]), format, int(answer["bytes"]), float(answer["max_abs_diff"]), int(answer["checked_on"]),
        str(answer["check_inputs"]), str(answer.get("precision", precision)), answer.get("check"))
