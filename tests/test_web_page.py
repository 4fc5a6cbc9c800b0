"""Models in the browser, without a browser: the page's picture preparation (prepare.js, run by
Node.js) gives exactly the model input transfer.data.picture gives, for every interpolation,
shapes that need Pillow's whole-factor reduction and strips; `transfer export --format web`
writes a complete page (folder or zip) that names nothing private; the runtime's install and
its absence say what to do."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_page_evaluate import trained  # noqa: F401 (the shared tiny finished run)
from test_share import exported  # noqa: F401 (its checked exports, made once)
from transfer.data.picture import Preprocessing, model_input
from transfer.serving import web_page
from transfer.cli.main import main
from transfer.serving.export import cached_export, export_run

NODE = shutil.which("node")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SHAPES = [  # (width, height, interpolation, resize_size, input_size)
    (90, 70, "bilinear", 64, 56),
    (500, 375, "bicubic", 256, 224),
    (375, 500, "bilinear", 256, 224),
    (256, 300, "bicubic", 256, 224),  # short side already right: no resize
    (2000, 300, "bilinear", 256, 224),  # a strip: cut to 4:1 first
    (1900, 1400, "lanczos", 160, 128),  # reduced by whole factors first (reducing_gap)
    (33, 47, "hamming", 64, 60),  # enlarged
    (999, 1001, "box", 100, 90),
    (640, 480, "nearest", 256, 224),
]

PREPARE_IN_NODE = """
import fs from "fs";
import { Picture, modelView, modelInput } from "%s";
const cases = JSON.parse(fs.readFileSync(process.argv[2]));
const out = cases.map((c) => Array.from(modelInput(modelView(new Picture(c.w, c.h, Uint8Array.from(c.rgb)), c.p), c.p)));
fs.writeFileSync(process.argv[3], JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_pages_preparation_matches_the_studios_exactly(tmp_path):
    rng = np.random.default_rng(0)
    cases, expected = [], []
    for width, height, interpolation, side, size in SHAPES:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        preprocessing = {"resize_size": side, "input_size": size, "interpolation": interpolation, "mean": MEAN,
                         "std": STD}
        cases.append({"w": width, "h": height, "rgb": pixels.ravel().tolist(), "p": preprocessing})
        studio = Preprocessing(size, tuple(MEAN), tuple(STD), interpolation, crop_pct=size / side)
        assert studio.resize_size == side
        expected.append(model_input(Image.fromarray(pixels), studio))
    script = tmp_path / "prepare.mjs"
    script.write_text(PREPARE_IN_NODE % (web_page.ASSETS / "prepare.js").as_uri())
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    subprocess.run([NODE, str(script), str(tmp_path / "cases.json"), str(tmp_path / "out.json")], check=True,
                   timeout=300)
    for shape, want, got in zip(SHAPES, expected, json.loads((tmp_path / "out.json").read_text())):
        got = np.asarray(got, dtype=np.float32).reshape(want.shape)
        assert np.array_equal(got, want), f"{shape}: up to {np.abs(got - want).max()} apart"


needs_runtime = pytest.mark.skipif(not web_page.runtime_ready(),
                                   reason="onnxruntime-web is not installed (./studio installs it with npm)")


@needs_runtime
def test_export_web_writes_a_complete_page_folder_or_zip(exported, tmp_path, capsys):
    run = exported.run
    assert main(["export", str(run.path), "--format", "web", "--output", str(tmp_path / "page"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = Path(answer["path"])
    names = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert {"index.html", "model.onnx", "model.json", *web_page.PAGE_FILES} <= names
    assert {f"ort/{name}" for name in web_page.RUNTIME_FILES} <= names
    assert answer["bytes"] == sum((folder / name).stat().st_size for name in names)
    # A page is made to be given away: it leaves the novelty reference out unless asked.
    assert (folder / "model.onnx").read_bytes() == cached_export(run.path, "onnx", include_reference=False).path.read_bytes()
    info = json.loads((folder / "model.json").read_text())
    assert "novelty" not in info
    assert info["classes"] == run.labels() and info["onnx"]["output"] == "probabilities"
    page_text = "".join((folder / name).read_text() for name in ("index.html", "model.json"))
    assert str(run.path) not in page_text and "colours" not in page_text  # nothing of the owner's data
    assert "http://" not in page_text and "https://" not in page_text  # nothing fetched from elsewhere

    zipped = export_run(run.path, "web", tmp_path / "page.zip")
    with zipfile.ZipFile(zipped.path) as archive:
        assert f"{run.id}-web/index.html" in archive.namelist()


def test_without_the_runtime_the_web_export_says_what_to_do_and_is_not_remembered(exported, monkeypatch, tmp_path):
    run = tmp_path / exported.run.id  # a copy whose checked ONNX export is kept, but no web page yet
    shutil.copytree(exported.run.path, run)
    for record in run.glob("exports/*/exports.json"):
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if not k.startswith("web")}))
    monkeypatch.setattr(web_page, "RUNTIME_FOLDER", tmp_path / "missing")
    with pytest.raises(web_page.WebRuntimeMissing, match="npm"):
        export_run(run, "web")
    assert cached_export(run, "web") is None  # installing it later is enough


def test_installing_the_runtime_copies_its_files_and_names_what_is_missing(monkeypatch, tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    monkeypatch.setattr(web_page, "RUNTIME_FOLDER", tmp_path / "ort")
    assert web_page.main(["--install-runtime", str(dist)]) == 1
    for name in web_page.RUNTIME_FILES:
        (dist / name).write_text(name)
    assert web_page.main(["--install-runtime", str(dist)]) == 0
    assert web_page.runtime_ready()
    assert sorted(path.name for path in (tmp_path / "ort").iterdir()) == sorted(web_page.RUNTIME_FILES)


def test_the_page_keeps_a_models_none_of_these_calibration():
    info = {"classes": ["a", "b"], "preprocessing": {"input_size": 8}, "dataset": "/private/path",
            "novelty": {"thresholds": {"normal": 0.4}}}
    page = web_page.browser_info(info)
    assert page["novelty"] == {"thresholds": {"normal": 0.4}} and "dataset" not in page


CLASSIFY_IN_NODE = """
import fs from "fs";
import { openClassifier } from "%s";
import { Picture } from "%s";
const [model, info, colours] = process.argv.slice(2);
const classifier = await openClassifier(new Uint8Array(fs.readFileSync(model)), JSON.parse(fs.readFileSync(info)));
const answers = [];
for (const rgb of JSON.parse(colours)) {
  answers.push(await classifier.classify(new Picture(8, 8, new Uint8Array(8 * 8 * 3).map((_, i) => rgb[i %% 3]))));
}
console.log(JSON.stringify(answers));
"""


def two_output_model(path: Path, novelty_first: bool) -> Path:
    """A tiny model with the outputs the "None of these" branch adds: probabilities from the red
    and green means, novelty from the blue mean."""
    import io

    import torch

    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            means = x.mean(dim=(2, 3))
            probabilities, novelty = torch.softmax(means[:, :2] * 4, dim=1), means[:, 2]
            return (novelty, probabilities) if novelty_first else (probabilities, novelty)

    names = ["novelty", "probabilities"] if novelty_first else ["probabilities", "novelty"]
    buffer = io.BytesIO()
    torch.onnx.export(TwoOutputs(), (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=names)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.skipif(NODE is None or not web_page.runtime_ready(), reason="needs Node.js and onnxruntime-web")
@pytest.mark.parametrize("novelty_first", [False, True])
def test_the_page_reads_outputs_by_name_and_says_none_of_these_over_the_threshold(tmp_path, novelty_first):
    model = two_output_model(tmp_path / "model.onnx", novelty_first)
    script = tmp_path / "classify.mjs"
    script.write_text(CLASSIFY_IN_NODE % ((web_page.ASSETS / "classify.js").as_uri(),
                                          (web_page.ASSETS / "prepare.js").as_uri()))
    colours = json.dumps([[255, 0, 0], [0, 255, 255]])  # red, known; cyan: blue makes it novel
    preprocessing = {"resize_size": 8, "input_size": 8, "interpolation": "bilinear", "mean": [0, 0, 0],
                     "std": [1, 1, 1]}

    def answers(info: dict) -> list[dict]:
        (tmp_path / "model.json").write_text(json.dumps(info))
        done = subprocess.run([NODE, str(script), str(model), str(tmp_path / "model.json"), colours],
                              capture_output=True, text=True, check=True, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1])

    calibrated = answers(web_page.browser_info({"classes": ["red", "green"], "preprocessing": preprocessing,
                                                "novelty": {"thresholds": {"normal": 0.5}}}))
    assert [a["label"] for a in calibrated] == ["red", "green"]
    assert calibrated[0]["probability"] == pytest.approx(0.982, abs=1e-3)
    assert [a["unknown"] for a in calibrated] == [False, True]
    assert [a["novelty"] for a in calibrated] == [0, 1]
    plain = answers(web_page.browser_info({"classes": ["red", "green"], "preprocessing": preprocessing}))
    assert [a["unknown"] for a in plain] == [False, False] and plain[0]["novelty"] is None


@pytest.mark.skipif(NODE is None or not web_page.runtime_ready(), reason="needs Node.js and onnxruntime-web")
def test_a_close_call_is_not_sure_on_the_web_page_and_none_of_these_stays_apart(tmp_path):
    model = two_output_model(tmp_path / "model.onnx", False)
    script = tmp_path / "classify.mjs"
    script.write_text(CLASSIFY_IN_NODE % ((web_page.ASSETS / "classify.js").as_uri(),
                                          (web_page.ASSETS / "prepare.js").as_uri()))
    colours = json.dumps([[255, 0, 0], [0, 255, 255]])
    preprocessing = {"resize_size": 8, "input_size": 8, "interpolation": "bilinear", "mean": [0, 0, 0],
                     "std": [1, 1, 1]}

    def answers(margin: float) -> list[dict]:
        info = web_page.browser_info({"classes": ["red", "green"], "preprocessing": preprocessing,
                                      "novelty": {"thresholds": {"normal": 0.5}}, "unsure_margin": margin})
        assert info["unsure_margin"] == margin
        (tmp_path / "model.json").write_text(json.dumps(info))
        done = subprocess.run([NODE, str(script), str(model), str(tmp_path / "model.json"), colours],
                              capture_output=True, text=True, check=True, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1])

    sure = answers(0.5)  # red leads green by 96 points
    assert sure[0]["unsure"] is None
    close = answers(0.99)
    assert close[0]["unsure"] == ["red", "green"]
    assert close[1]["unknown"] is True and close[1]["unsure"] is None  # "None of these" is its own answer


def test_the_page_applies_the_chosen_strictness_only_to_a_calibrated_model():
    calibrated = {"classes": ["a"], "preprocessing": {}, "novelty": {"thresholds": {"strict": 0.2, "normal": 0.4}}}
    assert web_page.browser_info(calibrated, strictness="strict")["unknown_setting"] == "strict"
    assert "unknown_setting" not in web_page.browser_info({"classes": ["a"], "preprocessing": {}}, strictness="strict")
