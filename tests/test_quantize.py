"""The smaller (int8) model of a real, tiny finished run: made on demand, checked against float32
on the validation pictures, refused with its figures when calibration is broken on purpose,
cached per weights version, served where it passed (unless the owner keeps float32), and its
bundle's predict.py runs without torch and answers like `transfer predict` on the same model."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from apptools import open_app
from pictures import write_class_folders
from test_export import _copy_run, _model_buttons, pictures, run_without_torch
from test_page_evaluate import TrainedSession, in_trained_home, trained  # noqa: F401 (fixtures)
from transfer.cli.main import main
from transfer.serving import quantize
from transfer.serving.export import ExportError, cached_export, export_run, keep_float32, served_onnx
from transfer.core.runs import RunDir
from transfer.serving.server_predict import ServerPredictor
from transfer.serving.share import copy_exports


@pytest.fixture(scope="module")
def confident_run(tmp_path_factory) -> Path:
    """A features run trained long enough to be sure of its answers (all validation pictures
    right), in a home of its own; tests work on copies of it."""
    root = tmp_path_factory.mktemp("confident")
    data = write_class_folders(root / "colours", {"red": 12, "green": 12, "blue": 12})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFER_HOME", str(root / "home"))
        assert main(["train", str(data), "--method", "features", "--epochs", "15", "--image-size", "64",
                     "--runs-dir", str(root / "runs")]) == 0
    return next(path for path in (root / "runs").iterdir() if (path / "config.json").is_file())


@pytest.fixture
def run_copy(confident_run, tmp_path, monkeypatch) -> Path:
    """A copy of the confident run without its exports. Its generated pictures all sit at the
    "None of these" threshold (their novelty differs in the third decimal), where any rounding
    flips a decision: the unknown-agreement limit is lifted here and tested on its own below
    and on real photos by benchmarks/bench_predict.py --int8."""
    monkeypatch.setenv("TRANSFER_HOME", str(confident_run.parents[1] / "home"))
    monkeypatch.setattr(quantize, "MIN_UNKNOWN_AGREEMENT", 0.0)
    run = tmp_path / "copy"
    _copy_run(confident_run, run)
    return run


def test_int8_model_is_smaller_checked_cached_and_served(run_copy, capsys):
    assert main(["export", str(run_copy), "--format", "onnx", "--precision", "int8", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["precision"] == "int8" and answer["path"].endswith("model-int8.onnx")
    check = answer["check"]
    float32 = cached_export(run_copy, "onnx")
    assert check["float_bytes"] == float32.bytes and check["int8_bytes"] == answer["bytes"] < float32.bytes
    predictions = json.loads((run_copy / "val_predictions.json").read_text())["predictions"]
    assert check["pictures"] == len(predictions) and check["calibration_pictures"] > 0
    assert check["top1_agreement"] >= 0.99 and check["float_accuracy"] - check["int8_accuracy"] <= 0.005
    assert check["unknown_agreement"] is not None  # the run has a "None of these" reference

    model = onnx.load(answer["path"])
    node_types = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= node_types
    assert_kept_in_float32_and_depthwise_on_8_bits(model)
    novelty_nodes = set(quantize.novelty_only_nodes(onnx.load(float32.path)))
    if novelty_nodes:  # the "None of these" part kept in float32: no quantized input reaches it
        quantized = {node.name for node in model.graph.node if node.op_type == "QuantizeLinear"}
        assert not any(name in novelty_nodes for name in quantized)

    again = export_run(run_copy, "onnx", precision="int8")  # cached: the same file, not made again
    assert again.path == Path(answer["path"]) and again.path.stat().st_mtime_ns == Path(answer["path"]).stat().st_mtime_ns

    assert served_onnx(run_copy) == again.path
    assert ServerPredictor(run_copy).precision == "int8"
    keep_float32(run_copy, True)
    assert served_onnx(run_copy) == float32.path and ServerPredictor(run_copy).precision == "float32"
    keep_float32(run_copy, False)
    assert served_onnx(run_copy) == again.path

    snapshot = run_copy.parent / "snapshot"  # a demo link's frozen folder: float32 for browsers, int8 for the server
    snapshot.mkdir()
    copy_exports(RunDir(run_copy), snapshot, with_bundle=False)
    assert (snapshot / "model.onnx").read_bytes() == float32.path.read_bytes()
    assert (snapshot / "model-int8.onnx").read_bytes() == again.path.read_bytes()
    for name in ("model.json", "labels.json"):
        shutil.copyfile(run_copy / name, snapshot / name)
    assert ServerPredictor(snapshot).precision == "int8"


def assert_kept_in_float32_and_depthwise_on_8_bits(model) -> None:
    """The picture reaches a float32 convolution, the softmax is not quantized, and depthwise
    weights use all 8 bits while the others use 7 (see transfer.serving.quantize)."""
    from onnx import numpy_helper

    producer = {output: node for node in model.graph.node for output in node.output}
    stored = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    assert any(node.op_type == "Conv" and node.input[0] == "input" for node in model.graph.node)
    softmax = [node for node in model.graph.node if node.op_type == "Softmax"]
    assert softmax and not any(node.op_type == "QuantizeLinear" and node.input[0] == softmax[0].output[0]
                               for node in model.graph.node)
    largest = {"depthwise": 0, "other": 0}
    for node in model.graph.node:
        dequantize = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or node.input[0] == "input":
            continue
        group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        kind = "depthwise" if group > 1 else "other"
        largest[kind] = max(largest[kind], int(np.abs(stored[dequantize.input[0]].astype(int)).max()))
    assert largest["depthwise"] == 127 and 0 < largest["other"] <= 64, largest


def test_the_int8_model_without_the_reference_answers_exactly_as_the_served_one(run_copy):
    """A web page or a demo's live camera gets the checked int8 model with its "None of these" part
    cut out: no trace of the training pictures' features, and the very same class answers."""
    from transfer.serving.export import onnx_session

    served = export_run(run_copy, "onnx", precision="int8")
    handed_out = export_run(run_copy, "onnx", precision="int8", include_reference=False)
    assert handed_out.path != served.path and handed_out.check == served.check
    model = onnx.load(handed_out.path)
    assert [output.name for output in model.graph.output] == ["probabilities"]
    reference = {tensor.name for tensor in onnx.load(served.path).graph.initializer} - \
        {tensor.name for tensor in model.graph.initializer}
    assert reference, "the reference's tensors are gone"
    batch = np.random.default_rng(0).normal(size=(4, *quantize_input_shape(model))).astype(np.float32)
    with_reference = onnx_session(served.path.read_bytes()).run(["probabilities"], {"input": batch})[0]
    without = onnx_session(handed_out.path.read_bytes()).run(["probabilities"], {"input": batch})[0]
    assert np.array_equal(with_reference, without)


def quantize_input_shape(model) -> tuple[int, int, int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(int(dim.dim_value) for dim in dims[1:])


def test_a_model_calibrated_with_a_wrong_scale_is_refused_with_its_figures(run_copy, monkeypatch, capsys):
    made = quantize.quantized_onnx

    def broken_calibration(float_onnx, calibration, input_name="input"):
        """Every activation's scale a hundredth of what calibration measured: its values saturate."""
        model = onnx.load_from_string(made(float_onnx, calibration, input_name))
        scales = {node.input[1] for node in model.graph.node if node.op_type == "QuantizeLinear"}
        for tensor in model.graph.initializer:
            if tensor.name in scales:
                tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * 0.01, tensor.name))
        return model.SerializeToString()

    monkeypatch.setattr(quantize, "quantized_onnx", broken_calibration)
    assert main(["export", str(run_copy), "--format", "bundle", "--precision", "int8", "--json"]) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert "refused" in error and "validation pictures" in error and "%" in error
    assert "same top class" in error and "accuracy falls" in error  # the figures, against the limits
    assert not list(run_copy.glob("exports/*/model-int8.onnx")) and not list(run_copy.glob("exports/*/*-int8.zip"))
    with pytest.raises(ExportError, match="refused"):  # remembered: asking again does not redo the work
        cached_export(run_copy, "onnx", "int8")
    assert served_onnx(run_copy) == cached_export(run_copy, "onnx").path  # float32 keeps serving


def test_the_check_counts_disagreements_and_unknown_decisions():
    class Fixed:
        def __init__(self, probabilities, novelty):
            self.outputs = [np.asarray(probabilities, dtype=np.float32), np.asarray(novelty, dtype=np.float32)]

        def get_inputs(self):
            return [type("Input", (), {"name": "input"})]

        def run(self, _, feeds):
            rows = len(feeds["input"])
            taken, self.outputs = [o[:rows] for o in self.outputs], [o[rows:] for o in self.outputs]
            return taken

    pictures = np.zeros((4, 3, 2, 2), dtype=np.float32)
    full = Fixed([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]], [0.1, 0.2, 0.3, 0.9])
    small = Fixed([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.4, 0.6]], [0.1, 0.2, 0.6, 0.9])
    novelty = {"thresholds": {"relaxed": 0.8, "normal": 0.5, "strict": 0.25}}
    check = quantize.check_int8(full, small, pictures, [0, 0, 1, 1], novelty, 8, 400, 100, batch=3)
    assert check.top1_agreement == 0.75 and check.float_accuracy == 1.0 and check.int8_accuracy == 0.75
    assert check.unknown_agreement == 0.75  # normal: 0.3 -> 0.6 crosses 0.5
    assert abs(check.max_probability_diff - 0.3) < 1e-6
    assert not check.passed and len(check.failures()) == 3
    assert "75.0%" in check.refusal() and "100.0%" in check.refusal()


def test_int8_bundle_runs_without_torch_and_answers_like_transfer_predict(run_copy, tmp_path, capsys):
    bundle = export_run(run_copy, "bundle", precision="int8")
    assert bundle.path.name.endswith("-int8.zip") and bundle.check
    with zipfile.ZipFile(bundle.path) as archive:
        archive.extractall(tmp_path / "unpacked")
    folder = tmp_path / "unpacked" / run_copy.name
    info = json.loads((folder / "model.json").read_text())
    assert info["onnx"]["precision"] == "int8"
    assert (folder / "model.onnx").read_bytes() == cached_export(run_copy, "onnx", "int8").path.read_bytes()
    card = (folder / "README.md").read_text()
    assert "## Precision" in card and "int8" in card and "validation pictures" in card
    photos = tmp_path / "photos"
    pictures(photos)
    bundled = run_without_torch(folder, photos, tmp_path)

    assert main(["predict", str(run_copy), str(photos), "--top-k", "3", "--json"]) == 0  # serves the int8 model
    studio = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by_name = {Path(row["file"]).name: row for row in studio["predictions"]}
    assert len(bundled["predictions"]) == len(by_name) == 7
    for row in bundled["predictions"]:
        expected = by_name[Path(row["file"]).name]
        assert row["label"] == expected["label"] and abs(row["probability"] - expected["probability"]) <= 1e-5
        assert row["unknown"] == expected["unknown"]


def test_torchscript_has_no_int8_model(run_copy):
    with pytest.raises(ExportError, match="int8"):
        export_run(run_copy, "torchscript", precision="int8")


def test_downloads_panel_offers_the_smaller_model_with_its_figures_and_the_float32_choice(in_trained_home,
                                                                                          monkeypatch):
    trained = in_trained_home
    run = trained.run.path
    for limit, lenient in (("MIN_TOP1_AGREEMENT", 0.0), ("MAX_ACCURACY_LOSS", 1.0), ("MIN_UNKNOWN_AGREEMENT", 0.0)):
        monkeypatch.setattr(quantize, limit, lenient)  # the shared run is barely trained: see run_copy
    int8 = export_run(run, "onnx", precision="int8")
    record = int8.path.parent / "exports.json"
    try:
        app = open_app("pages/evaluate.py", token=trained.token)
        assert not app.exception
        figures = [caption.value for caption in app.caption if "MB instead of" in caption.value]
        assert len(figures) == 1 and "validation pictures" in figures[0] and "same top class" in figures[0]
        labels = [button.label for button in app.button]
        assert {"Prepare Bundle (zip), int8", "Prepare web page (zip), int8"} <= set(labels)
        assert any(label.startswith("Download ONNX, int8 (") for label in _model_buttons(app))
        assert served_onnx(run) == int8.path
        app.checkbox(key="evaluate_export_keep_float32").check().run()
        assert not app.exception and served_onnx(run) == cached_export(run, "onnx").path

        entries = json.loads(record.read_text())
        entries["onnx-int8"] = {"error": "The smaller (int8) model of this run was refused: made up for this test."}
        record.write_text(json.dumps(entries))
        app = open_app("pages/evaluate.py", token=trained.token)
        assert any("made up for this test" in warning.value for warning in app.warning)
    finally:  # the shared run serves float32 again for the other tests
        entries = json.loads(record.read_text())
        entries.pop("onnx-int8", None)
        record.write_text(json.dumps(entries))
        int8.path.unlink(missing_ok=True)
        (run / "precision.json").unlink(missing_ok=True)
