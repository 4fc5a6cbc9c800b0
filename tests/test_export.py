"""Exports of a real, tiny finished run: ONNX and TorchScript round trips against PyTorch, the
bundle and its model card, predict.py run where torch cannot be imported (compared with
`transfer predict`), refusals with a sentence, the interpolation rule, the fast predictor under
concurrent Grad-CAM, and the download buttons on the Evaluate and Predict pages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apptools import open_app
from pictures import make_picture
from test_page_evaluate import TrainedSession, in_trained_home, trained  # noqa: F401 (fixtures)
from transfer.data.picture import model_input, open_picture
from transfer.data.picture import Preprocessing
from transfer.cli.main import main
from transfer.serving.export import MAX_ABS_DIFF, ExportError, export_run
from transfer.data.augment import eval_transform
from transfer.serving.predict import Predictor, load_fast_predictor, load_run_model

ROOT = Path(__file__).resolve().parents[1]


def pictures(folder: Path) -> list[Path]:
    """Pictures in the modes and layouts predict.py must handle like the studio: RGB JPEG with an
    EXIF rotation, RGBA, palette, grey, 16-bit grey, a wide strip."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index, (mode, size) in enumerate([("RGB", (90, 70)), ("RGBA", (70, 90)), ("P", (64, 64)), ("L", (120, 50)),
                                          ("I;16", (60, 80)), ("RGB", (400, 60))]):
        image = make_picture(index % 3, 900 + index, size)
        if mode == "I;16":
            grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
            image = Image.fromarray(grey)  # 16-bit grey (I;16)
        elif mode != "RGB":
            image = image.convert(mode)
        path = folder / f"p{index}_{mode.replace(';', '')}.png"
        image.save(path)
        made.append(path)
    rotated = make_picture(1, 950, (100, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(folder / "rotated.jpg", exif=exif, quality=92)
    return made + [folder / "rotated.jpg"]


def val_batch(trained: TrainedSession) -> torch.Tensor:
    loaded = load_run_model(trained.run.path)
    return torch.stack([eval_transform(Image.open(p).convert("RGB"), loaded.preprocessing)
                        for p in pictures(trained.home / "check_pictures")[:5]])


# --------------------------------------------------------------------------- the formats


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_each_format_round_trips_with_the_same_answers(in_trained_home, format, tmp_path):
    trained = in_trained_home
    result = export_run(trained.run.path, format, output=tmp_path)
    assert result.path == tmp_path / ("model.onnx" if format == "onnx" else "model.pt")
    assert result.bytes == result.path.stat().st_size > 0
    assert result.max_abs_diff <= MAX_ABS_DIFF and result.check_inputs == "validation pictures"
    assert result.checked_on == len(json.loads((trained.run.path / "val_predictions.json").read_text())["predictions"])

    batch = val_batch(trained)  # 5 pictures: a batch size the export was not traced with
    model = load_run_model(trained.run.path).model
    with torch.inference_mode():
        expected = torch.softmax(model(batch), dim=1).numpy()
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        got = session.run(["probabilities"], {"input": batch.numpy()})[0]
    else:
        probabilities, novelty = torch.jit.load(str(result.path))(batch)  # a run with a novelty reference
        got = probabilities.numpy()
        assert novelty.shape == (len(batch),)
    assert got.shape == expected.shape
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= 1e-4


def test_cli_bundle_holds_everything_and_its_model_card_tells_the_run(in_trained_home, tmp_path, capsys):
    trained = in_trained_home
    assert main(["export", str(trained.run.path), "--format", "bundle", "--output", str(tmp_path), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"path", "format", "bytes", "max_abs_diff"} <= set(answer) and answer["format"] == "bundle"
    assert answer["path"] == str(tmp_path / f"{trained.run.id}.zip") and answer["max_abs_diff"] <= MAX_ABS_DIFF
    with zipfile.ZipFile(answer["path"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.namelist()}
        assert names == {"model.onnx", "model.safetensors", "model.json", "requirements.txt", "README.md", "predict.py",
                         "novelty.safetensors"}
        card = archive.read(f"{trained.run.id}/README.md").decode()
        info = json.loads(archive.read(f"{trained.run.id}/model.json"))
        requirements = archive.read(f"{trained.run.id}/requirements.txt").decode()
    predictions = json.loads((trained.run.path / "val_predictions.json").read_text())["predictions"]
    right = sum(p["label"] == p["predicted"] for p in predictions)
    assert f"**{right} of {len(predictions)} (" in card  # the accuracy as a count, with how far to trust it
    for name in ("red", "green", "blue"):
        assert f"**{name}**" in card and f"| {name} | 8 | 2 |" in card  # counts per class and split
    assert "Confusion matrix" in card and "efficientnet_lite0" in card and "Apache-2.0" in card
    assert "What it cannot know" in card
    assert info["preprocessing"]["interpolation"] == "bilinear" and info["classes"] == ["blue", "green", "red"]
    assert "torch" not in requirements and "onnxruntime" in requirements


def test_predict_py_runs_without_torch_and_agrees_with_transfer_predict(in_trained_home, tmp_path, capsys):
    trained = in_trained_home
    bundle = export_run(trained.run.path, "bundle").path
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "unpacked")
    folder = tmp_path / "unpacked" / trained.run.id
    photos = tmp_path / "photos"
    pictures(photos)
    bundled = run_without_torch(folder, photos, tmp_path)

    assert main(["predict", str(trained.run.path), str(photos), "--top-k", "3", "--json"]) == 0
    studio = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(bundled["predictions"]) == len(studio["predictions"]) == 7 and not bundled["skipped"]
    by_name = {Path(row["file"]).name: row for row in studio["predictions"]}
    for row in bundled["predictions"]:
        expected = by_name[Path(row["file"]).name]
        assert row["label"] == expected["label"]
        assert abs(row["probability"] - expected["probability"]) <= 1e-4
        assert [t["label"] for t in row["top_k"]] == [t["label"] for t in expected["top_k"]]
        assert row["unknown"] == expected["unknown"] and abs(row["novelty"] - expected["novelty"]) <= 1e-4

    unpacked = load_fast_predictor(folder)  # an unpacked bundle serves as a model folder too
    assert unpacked.fast and not (folder / "exports").exists()
    first = bundled["predictions"][0]
    assert unpacked.predict(Path(first["file"]), 1)[0].label == first["label"]


def run_without_torch(folder: Path, photos: Path, scratch: Path) -> dict:
    """``python predict.py PHOTOS --top-k 3 --json`` in an unpacked bundle, where torch cannot be
    imported and the studio is not on the path; its JSON answer."""
    blocker = scratch / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class BlockTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked for this test')\n"
        "sys.meta_path.insert(0, BlockTorch())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(blocker)  # and not the checkout: predict.py must not need the studio either
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, cwd=folder, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr
    done = subprocess.run([sys.executable, "predict.py", str(photos), "--top-k", "3", "--json"], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_predict_py_prepares_pictures_exactly_as_the_studio(interpolation, tmp_path):
    prep = Preprocessing(48, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation, 0.8)
    from transfer.data.images import open_image

    for path in pictures(tmp_path):
        studio = eval_transform(open_image(path, min_short_side=prep.resize_size), prep).numpy()
        bundled = model_input(open_picture(path, prep.resize_size), prep)
        assert bundled.dtype == np.float32 and np.array_equal(studio, bundled), path.name


# --------------------------------------------------------------------------- refusals


def test_a_difference_above_the_limit_is_refused_with_a_sentence(in_trained_home, tmp_path, monkeypatch, capsys):
    import transfer.serving.export as export

    run = tmp_path / "copy"
    _copy_run(in_trained_home.run.path, run)
    monkeypatch.setattr(export, "max_abs_diff", lambda *args: 0.25)
    assert main(["export", str(run), "--format", "torchscript", "--json"]) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert "refused" in error and "0.25" in error and "0.0001" in error
    assert not list(run.glob("exports/*/model.pt"))  # never written silently


def test_a_backbone_that_cannot_be_exported_gets_a_sentence_and_predicts_with_pytorch(in_trained_home, tmp_path,
                                                                                      monkeypatch):
    run = tmp_path / "copy"
    _copy_run(in_trained_home.run.path, run)

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::made_up' to ONNX opset 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(ExportError, match="cannot be exported to ONNX .*aten::made_up"):
        export_run(run, "onnx")
    with pytest.raises(ExportError, match="cannot be exported to ONNX"):  # the bundle needs the ONNX file
        export_run(run, "bundle")
    predictor = load_fast_predictor(run)
    assert not predictor.fast
    assert predictor.predict(make_picture(0, 1), 1)[0].label in predictor.labels


def _copy_run(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("exports"))


# --------------------------------------------------------------------------- the fast predictor


def test_fast_predictor_matches_pytorch_and_is_not_disturbed_by_concurrent_grad_cam(in_trained_home):
    trained = in_trained_home
    fast = Predictor.from_run(trained.run.path)
    slow = Predictor.from_run(trained.run.path, fast=False)
    assert fast.fast and not slow.fast
    images = [make_picture(i % 3, 700 + i, (80, 64)) for i in range(8)]
    plain = [fast.predict(image, 3)[0] for image in images]
    for a, b in zip(plain, slow.predict(images, 3)):
        assert a.labels == b.labels and np.allclose(a.probabilities, b.probabilities, atol=1e-4)
    cams = [fast.explain(image).cam for image in images[:3]]

    errors, results = [], {}

    def predict_many(worker: int) -> None:
        try:
            results[("p", worker)] = [fast.predict(image, 3)[0] for image in images]
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    def explain_many(worker: int) -> None:
        try:
            results[("c", worker)] = [fast.explain(image).cam for image in images[:3]]
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=target, args=(n,)) for n in range(3) for target in (predict_many, explain_many)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for n in range(3):
        assert [p.probabilities for p in results[("p", n)]] == [p.probabilities for p in plain]
        for cam, expected in zip(results[("c", n)], cams):
            assert np.allclose(cam, expected, atol=1e-5)


# --------------------------------------------------------------------------- interpolation


def test_interpolation_is_part_of_every_cache_key_and_timm_records_bicubic(tmp_path):
    from transfer.models.backbones import get_backbone
    from transfer.data.cache import DecodedImageCache
    from transfer.data.samples import Sample
    from transfer.models.features import feature_key

    assert get_backbone("efficientnet_lite0").preprocessing.interpolation == "bilinear"
    timm_entry = get_backbone("timm/resnet18")
    assert timm_entry.preprocessing.interpolation == "bicubic"
    bilinear, bicubic = (Preprocessing(32, (0.5,) * 3, (0.5,) * 3, name) for name in ("bilinear", "bicubic"))
    assert feature_key("efficientnet_lite0", bilinear, 0, "none") != feature_key("efficientnet_lite0", bicubic, 0, "none")

    path = tmp_path / "p.png"
    make_picture(0, 1, (90, 70)).save(path)
    sample = Sample(path, "red", "train", "ab" * 32)
    cache = DecodedImageCache(tmp_path / "decoded")
    a, b = cache.get(sample, 36, "bilinear"), cache.get(sample, 36, "bicubic")
    assert cache.path_for(sample.sha256, 36, "bilinear") != cache.path_for(sample.sha256, 36, "bicubic")
    assert cache.path_for(sample.sha256, 36, "bicubic").is_file() and not np.array_equal(a, b)


# --------------------------------------------------------------------------- the pages


def _model_buttons(app) -> list[str]:
    return [button.proto.label for button in app.get("download_button") if "CSV" not in button.proto.label]


def test_evaluate_page_prepares_an_export_and_offers_it_with_its_size(in_trained_home):
    trained = in_trained_home
    import shutil

    shutil.rmtree(trained.run.path / "exports", ignore_errors=True)
    app = open_app("pages/evaluate.py", token=trained.token)
    assert not app.exception
    labels = [button.label for button in app.button]
    assert {"Prepare Bundle (zip)", "Prepare ONNX", "Prepare TorchScript"} <= set(labels)
    app.button(key="evaluate_export_onnx_prepare").click().run(timeout=300)
    assert not app.exception and not app.error
    offered = _model_buttons(app)
    assert len(offered) == 1 and offered[0].startswith("Download ONNX (") and offered[0].endswith("MB)")


def test_predict_page_offers_the_downloads_and_says_why_one_is_refused(in_trained_home, monkeypatch):
    trained = in_trained_home
    export_run(trained.run.path, "bundle")
    export_run(trained.run.path, "torchscript")
    app = open_app("pages/predict.py", token=trained.token)
    assert not app.exception
    offered = _model_buttons(app)
    assert [label.split(" (")[0] for label in offered] == ["Download Bundle", "Download ONNX", "Download TorchScript"]
    assert all(label.endswith(("MB)", "KB)")) for label in offered)

    record = next((trained.run.path / "exports").iterdir()) / "exports.json"
    saved = record.read_text()
    entries = json.loads(saved)
    entries["torchscript"] = {"error": "The torchscript export of this run was refused: made up for this test."}
    record.write_text(json.dumps(entries))
    try:
        app = open_app("pages/predict.py", token=trained.token)
        assert not app.exception
        assert any("refused: made up for this test" in error.value for error in app.error)
        assert len(_model_buttons(app)) == 2
    finally:
        record.write_text(saved)


def test_zip_predictions_run_on_the_fast_path_with_bounded_threads(in_trained_home, monkeypatch):
    from transfer.serving.predict import TorchEngine, predict_paths

    def no_pytorch(self, batch):
        raise AssertionError("a plain prediction reached the PyTorch model")

    monkeypatch.setattr(TorchEngine, "__call__", no_pytorch)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(5):
            picture = io.BytesIO()
            make_picture(index % 3, 800 + index).save(picture, "PNG")
            archive.writestr(f"batch/{index}.png", picture.getvalue())
    predictor = Predictor.from_run(in_trained_home.run.path)
    assert predictor.engine.session.get_session_options().intra_op_num_threads <= 4
    result = predict_paths(predictor, buffer.getvalue(), top_k=2)
    assert len(result.rows) == 5 and not result.skipped


def test_attention_layers_export_to_onnx_like_vision_transformers_need():
    from transfer.serving.export import max_abs_diff, onnx_bytes, probability_model

    class TinyTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patches = torch.nn.Conv2d(3, 16, 8, stride=8)
            self.attention = torch.nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x):
            tokens = self.patches(x).flatten(2).transpose(1, 2)
            return self.head(self.attention(tokens, tokens, tokens, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    wrapped = probability_model(TinyTransformer().eval())
    data = onnx_bytes(wrapped, 32, "tiny transformer")  # a fused attention path would have no ONNX form
    assert max_abs_diff(wrapped, data, "onnx", torch.randn(5, 3, 32, 32)) <= MAX_ABS_DIFF
