"""Prediction from a run folder: loading, top-k, every picture format, batches over folders and zips, the CLI."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from transfer.cli.main import main
from transfer.models.methods import create_model
from transfer.serving.predict import Prediction, PredictError, Predictor, load_run_model, predict_paths

LABELS = ["cat", "dog", "fox"]


def write_run(folder: Path, model: torch.nn.Module, labels: list[str], backbone: str = "efficientnet_lite0",
              image_size: int | None = None, dropout: float = 0.0, hidden: int | None = None) -> Path:
    """A finished run folder in the trainer's format (see transfer.training.run): config, labels,
    model.json and the full state dict as safetensors."""
    from transfer.data.augment import preprocessing_for
    from transfer.models.backbones import get_backbone
    from transfer.models.model_io import model_info

    prep = preprocessing_for(get_backbone(backbone).preprocessing, image_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"backbone": backbone, "method": "features"}))
    (folder / "labels.json").write_text(json.dumps({"classes": labels}))
    (folder / "status.json").write_text(json.dumps({"state": "finished"}))
    (folder / "model.json").write_text(json.dumps(model_info(
        model, backbone=backbone, method="features", classes=labels, preprocessing=prep, dropout=dropout,
        hidden=hidden)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", len(LABELS), "features").eval()
    return write_run(tmp_path_factory.mktemp("run") / "run1", model, LABELS), model


@pytest.fixture(scope="module")
def run_dir(saved_model) -> Path:
    return saved_model[0]


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.from_run(run_dir)


def photo(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    """A noisy picture with a bright left half, so rotations and crops are visible in the pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] += 120
    return Image.fromarray(pixels)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --------------------------------------------------------------------------- loading


def test_loaded_model_matches_the_saved_one(saved_model):
    run_dir, reference = saved_model
    loaded = load_run_model(run_dir)
    assert loaded.labels == LABELS and loaded.backbone == "efficientnet_lite0"
    assert loaded.preprocessing.input_size == 224 and not loaded.model.training
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), reference(x), atol=1e-5)


def test_head_with_hidden_layer_and_dropout_round_trips(tmp_path):
    model = create_model("efficientnet_lite0", 2, "scratch", hidden=16, dropout=0.3).eval()
    run = write_run(tmp_path / "run", model, ["a", "b"], image_size=160, dropout=0.3, hidden=16)
    loaded = load_run_model(run)
    assert loaded.preprocessing.input_size == 160
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-5)


def test_unfinished_or_damaged_runs_give_sentences(tmp_path, run_dir):
    from transfer.core.errors import TransferError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TransferError, match="not a trained run"):
        load_run_model(empty)

    def copy_run(name: str, *files: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for file in files:
            (folder / file).write_bytes((run_dir / file).read_bytes())
        return folder

    no_weights = copy_run("no_weights", "config.json", "labels.json", "model.json")
    with pytest.raises(TransferError, match="no trained weights"):
        load_run_model(no_weights)

    # A pickle posing as the weights file is refused, never unpickled.
    pickled = copy_run("pickled", "config.json", "labels.json", "model.json")
    torch.save({"weight": torch.zeros(1)}, pickled / "model.safetensors")
    with pytest.raises(TransferError, match="cannot be read"):
        load_run_model(pickled)

    # Weights that do not fit the described model: a sentence, not a traceback.
    wrong_classes = copy_run("wrong_classes", "config.json", "labels.json", "model.json", "model.safetensors")
    info = json.loads((wrong_classes / "model.json").read_text())
    info.update(num_classes=2, classes=["a", "b"])
    (wrong_classes / "model.json").write_text(json.dumps(info))
    with pytest.raises(PredictError, match="do not fit"):
        load_run_model(wrong_classes)


# --------------------------------------------------------------------------- top-k


def test_top_k_is_sorted_and_probabilities_sum_to_one(predictor):
    images = [photo(seed=s) for s in range(3)]
    full = predictor.predict(images, top_k=len(LABELS))
    assert len(full) == 3
    for prediction in full:
        assert isinstance(prediction, Prediction)
        assert sorted(prediction.labels) == sorted(LABELS)
        assert prediction.probabilities == sorted(prediction.probabilities, reverse=True)
        assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert [LABELS[i] for i in prediction.indices] == prediction.labels
    top2 = predictor.predict(images, top_k=2)
    for short, long in zip(top2, full):
        assert len(short.labels) == 2
        assert short.labels == long.labels[:2]
        assert short.probabilities == pytest.approx(long.probabilities[:2], abs=1e-6)
    # More than there are classes: all classes, no error.
    assert len(predictor.predict(images[0], top_k=50)[0].labels) == len(LABELS)
    with pytest.raises(PredictError):
        predictor.predict(images[0], top_k=0)


def test_batched_and_single_predictions_agree(predictor):
    images = [photo(seed=s) for s in range(3)]
    batched = predictor.predict(images, top_k=3, batch_size=2)
    single = [predictor.predict(image, top_k=3)[0] for image in images]
    for a, b in zip(batched, single):
        assert a.labels == b.labels
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)


def test_prediction_uses_the_evaluation_crop(predictor):
    """Pixels outside the centre square are cropped away, so changing them changes nothing."""
    picture = np.asarray(photo(300, 200)).copy()
    other = picture.copy()
    other[:, :40] = 0  # the left edge lies outside the 200 x 200 centre square
    a = predictor.preprocess(Image.fromarray(picture))
    b = predictor.preprocess(Image.fromarray(other))
    assert a.shape == (3, 224, 224)
    assert torch.equal(a, b)
    other[90:110, 140:160] = 0  # the middle is inside
    assert not torch.equal(a, predictor.preprocess(Image.fromarray(other)))


# --------------------------------------------------------------------------- every picture format


def _every_kind_of_file() -> dict[str, bytes]:
    base = photo()
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    sixteen = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    frames = [photo(seed=s) for s in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return {
        "rgb.jpg": encode(base, "JPEG"),
        "rgba.png": encode(rgba, "PNG"),
        "palette.png": encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "grey.png": encode(base.convert("L"), "PNG"),
        "sixteen.png": encode(sixteen, "PNG"),
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "cmyk.tif": encode(base.convert("CMYK"), "TIFF"),
        "animated.gif": gif.getvalue(),
        "picture.webp": encode(base, "WEBP"),
        "picture.bmp": encode(base, "BMP"),
    }


def test_every_mode_and_format_is_predicted(predictor, tmp_path):
    files = _every_kind_of_file()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert torch.equal(predictor.preprocess(data), predictor.preprocess(tmp_path / name)), name
    predictions = predictor.predict(list(files.values()), top_k=3)
    assert len(predictions) == len(files)
    for prediction in predictions:
        assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_pil_images_in_any_mode_are_accepted(predictor):
    base = photo()
    sixteen = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    for image in (base.convert("RGBA"), base.convert("P"), base.convert("L"), sixteen, base.convert("CMYK"),
                  base.convert("LA"), base.convert("1")):
        tensor = predictor.preprocess(image)
        assert tensor.shape == (3, 224, 224) and torch.isfinite(tensor).all(), image.mode
    # Grey pictures become grey RGB: the three channels carry the same pixels.
    grey = predictor.preprocess(base.convert("L"))
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])


def test_exif_orientation_is_honoured(predictor):
    upright = photo(120, 90)
    stored = upright.transpose(Image.Transpose.ROTATE_270)  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 8  # "turn 90 degrees counter-clockwise to view": undoes the ROTATE_270 above
    rotated_file = encode(stored, "JPEG", exif=exif, quality=95)
    decoded = Image.open(io.BytesIO(rotated_file))
    decoded.load()
    by_hand = decoded.transpose(Image.Transpose.ROTATE_90).convert("RGB")
    assert by_hand.size == (120, 90)
    assert torch.equal(predictor.preprocess(rotated_file), predictor.preprocess(by_hand))
    # Ignoring the tag would give a different picture.
    assert not torch.equal(predictor.preprocess(rotated_file), predictor.preprocess(decoded.convert("RGB")))


def test_animated_gif_uses_the_first_frame(predictor):
    frames = [photo(seed=1), Image.new("RGB", (120, 90), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=80)
    first_only = encode(frames[0], "GIF")
    assert torch.equal(predictor.preprocess(gif.getvalue()), predictor.preprocess(first_only))


# --------------------------------------------------------------------------- batches


def _zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_batch_gives_a_csv_row_per_picture_and_reasons_for_the_rest(predictor, tmp_path):
    pictures = {f"photos/{n}": data for n, data in list(_every_kind_of_file().items())[:4]}
    archive = _zip_of({
        **pictures,
        "photos/notes.txt": b"not a picture",
        "__MACOSX/photos/._rgb.jpg": b"resource fork",
        "photos/broken.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg",
        "../escape.png": encode(photo(), "PNG"),
    })
    path = tmp_path / "batch.zip"
    path.write_bytes(archive)

    result = predict_paths(predictor, path, top_k=2)
    predicted = sorted(row["file"] for row in result.rows)
    assert predicted == sorted(f"batch.zip/{name}" for name in pictures)
    reasons = {item["file"]: item["reason"] for item in result.skipped}
    assert reasons["batch.zip/photos/notes.txt"] == "not an image"
    assert reasons["batch.zip/__MACOSX/photos/._rgb.jpg"] == "macOS metadata"
    assert reasons["batch.zip/../escape.png"] == "unsafe path"
    assert reasons["batch.zip/photos/broken.jpg"] in ("unreadable", "truncated", "not an image")

    rows = list(csv.DictReader(io.StringIO(result.csv_bytes().decode("utf-8"))))
    assert len(rows) == len(pictures) + len(result.skipped)
    by_file = {row["file"]: row for row in rows}
    for name in predicted:
        row = by_file[name]
        assert row["label"] in LABELS and not row["skipped"]
        assert 0.0 < float(row["probability"]) <= 1.0
        assert len(row["top_k"].split("; ")) == 2
    assert by_file["batch.zip/photos/notes.txt"]["skipped"].startswith("not an image")
    assert not by_file["batch.zip/photos/notes.txt"]["label"]

    # The same zip as uploaded bytes (the web page's case) gives the same predictions.
    from_bytes = predict_paths(predictor, archive, top_k=2)
    assert [r["label"] for r in from_bytes.rows] == [r["label"] for r in result.rows]


def test_folder_batch_walks_subfolders_and_skips_hidden_files(run_dir, tmp_path):
    folder = tmp_path / "inbox"
    (folder / "more").mkdir(parents=True)
    photo(seed=1).save(folder / "a.png")
    photo(seed=2).save(folder / "more" / "b.jpg")
    (folder / ".secret.png").write_bytes(encode(photo(), "PNG"))
    (folder / "readme.md").write_text("hello")
    single = tmp_path / "single.png"
    photo(seed=3).save(single)

    result = predict_paths(run_dir, [folder, single], top_k=1)
    assert [row["file"] for row in result.rows] == ["inbox/a.png", "inbox/more/b.jpg", str(single)]
    assert {(s["file"], s["reason"]) for s in result.skipped} == {
        ("inbox/.secret.png", "hidden file"), ("inbox/readme.md", "not an image")}


def test_csv_cells_cannot_become_spreadsheet_formulas():
    from transfer.serving.predict import BatchResult

    # Class names and file names are chosen by users; a cell starting with "=" would run in a spreadsheet.
    result = BatchResult(rows=[{"file": "=cmd|' /C calc'!A0", "label": "@SUM(1)", "probability": 0.9,
                                "top_k": [{"label": "@SUM(1)", "probability": 0.9}]}],
                         skipped=[{"file": "+evil.png", "reason": "unreadable", "detail": ""}])
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert rows[0]["file"] == "'=cmd|' /C calc'!A0" and rows[0]["label"] == "'@SUM(1)"
    assert rows[1]["file"] == "'+evil.png" and rows[1]["skipped"] == "unreadable"


def test_missing_source_is_a_sentence(predictor, tmp_path):
    with pytest.raises(PredictError, match="does not exist"):
        predict_paths(predictor, tmp_path / "nowhere.png")


# --------------------------------------------------------------------------- command line


def test_cli_predict_json(run_dir, tmp_path, capsys):
    picture = tmp_path / "one.png"
    photo().save(picture)
    (tmp_path / "folder").mkdir()
    photo(seed=5).save(tmp_path / "folder" / "two.jpg")
    (tmp_path / "folder" / "three.txt").write_text("x")

    code = main(["predict", str(run_dir), str(picture), str(tmp_path / "folder"), "--top-k", "2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["file"] for p in result["predictions"]] == [str(picture), "folder/two.jpg"]
    for item in result["predictions"]:
        assert item["label"] == item["top_k"][0]["label"] and len(item["top_k"]) == 2
    assert result["skipped"] == [{"file": "folder/three.txt", "reason": "not an image", "detail": ""}]


def test_cli_predict_table_and_csv(run_dir, tmp_path, capsys):
    archive = tmp_path / "pictures.zip"
    archive.write_bytes(_zip_of({"x.png": encode(photo(seed=1), "PNG"), "y.png": encode(photo(seed=2), "PNG"),
                                 "z.txt": b"text"}))
    out_csv = tmp_path / "out.csv"
    assert main(["predict", str(run_dir), str(archive), "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert "pictures.zip/x.png" in out and "pictures.zip/y.png" in out
    assert "skipped (1)" in out and "not an image" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["file"] for row in rows] == ["pictures.zip/x.png", "pictures.zip/y.png", "pictures.zip/z.txt"]


def test_cli_predict_errors_are_sentences(run_dir, tmp_path, capsys):
    assert main(["predict", str(run_dir), str(tmp_path / "missing.png"), "--json"]) == 2
    assert "does not exist" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert main(["predict", str(run_dir), str(tmp_path), "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture at all")
    assert main(["predict", str(run_dir), str(bad)]) == 1  # nothing could be predicted
    assert "No picture could be predicted" in capsys.readouterr().out


# --------------------------------------------------------------------------- with the real trainer


def test_a_trained_run_predicts_its_validation_pictures_as_the_trainer_did(tmp_path, tiny_dataset, capsys):
    """The trainer's own validation probabilities (val_predictions.json) come back from
    `transfer predict`: same model, same preprocessing, same class order."""
    from transfer.training.config import TrainConfig
    from transfer.core.runs import RunDir
    from transfer.training.run import PREDICTIONS_FILE, train_run

    # fp32: the predictor runs in full precision, so bf16 autocast in training would differ by ~1e-3.
    config = TrainConfig.for_method("features", dataset=str(tiny_dataset), image_size=32, device="cpu",
                                    epochs=2, batch_size=8, augmentation="none", precision="fp32")
    run = RunDir.create(tmp_path / "runs", config.to_dict())
    train_run(run)
    saved = json.loads((run.path / PREDICTIONS_FILE).read_text())
    files = [str(tiny_dataset / item["path"]) for item in saved["predictions"]]  # paths are relative to the data

    assert main(["predict", str(run.path), *files, "--top-k", str(len(saved["classes"])), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["predictions"]) == len(files)
    for item, expected in zip(result["predictions"], saved["predictions"]):
        probabilities = {t["label"]: t["probability"] for t in item["top_k"]}
        assert item["label"] == expected["predicted"]
        assert [probabilities[c] for c in saved["classes"]] == pytest.approx(expected["probabilities"], abs=1e-3)
