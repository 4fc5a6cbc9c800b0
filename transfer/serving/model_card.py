"""The model card (README.md) of an exported bundle: what the model tells apart, from which data,
how well it did on pictures it never trained on, and what it cannot know.

Everything comes from the run folder: ``model.json`` (classes, backbone, preprocessing),
``config.json`` and ``status.json`` (method, epochs, date), the ``data_counts`` event the trainer
writes (pictures per class and split) and ``val_predictions.json`` (accuracy, precision, recall,
F1 and the confusion matrix, see transfer.analysis.evaluate).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from transfer.analysis.evaluate import EvaluationNotReady, load_evaluation
from transfer.core.quota import human_size
from transfer.models.model_io import read_model_info
from transfer.core.runs import RunDir


def render_model_card(run_dir: Path | str, int8_check=None) -> str:
    """The card; ``int8_check`` (transfer.serving.quantize.Int8Check) for a bundle of the smaller
    model, whose precision section then gives the check's figures."""
    run = RunDir(run_dir)
    info = read_model_info(run.path)
    classes = [str(name) for name in info["classes"]]
    sections = [
        _summary(run, info, classes),
        _data_section(run, classes),
        _quality_section(run),
        _usage_section(info),
        _precision_section(int8_check),
        _novelty_section(run, info),
        _limits_section(classes, bool(info.get("novelty"))),
    ]
    return "\n\n".join(section.strip() for section in sections if section.strip()) + "\n"


def _summary(run: RunDir, info: dict, classes: list[str]) -> str:
    status = run.status() if run.exists() else {}
    config = _config(run)
    finished = status.get("ended_at") or status.get("created_at")
    date = datetime.fromtimestamp(finished, timezone.utc).strftime("%Y-%m-%d") if finished else "unknown"
    prep = info["preprocessing"]
    return f"""
# Image classifier: {", ".join(classes)}

Trained with Transfer Studio (run `{run.id}`). It sorts a picture into one of {len(classes)} classes:
{", ".join(f"**{name}**" for name in classes)}.

| | |
|---|---|
| backbone | `{info.get("backbone")}` |
| weights' licence | {_licence(str(info.get("backbone", "")))} |
| transfer method | {info.get("method") or config.get("method", "unknown")} |
| epochs | {status.get("epoch") or config.get("epochs", "unknown")} |
| trained on | {date} |
| input | {prep["input_size"]} x {prep["input_size"]} RGB: short side scaled to {prep["resize_size"]} ({prep.get("interpolation", "bilinear")}), centre crop, normalised with mean {_numbers(prep["mean"])} and std {_numbers(prep["std"])} |
"""


def _data_section(run: RunDir, classes: list[str]) -> str:
    counts = _data_counts(run)
    if not counts:
        return "## Training data\n\nThe run did not record how many pictures each class had."
    rows = "\n".join(f"| {name} | {counts.get(name, {}).get('train', 0)} | {counts.get(name, {}).get('val', 0)} |"
                     for name in classes)
    total_train = sum(c.get("train", 0) for c in counts.values())
    total_val = sum(c.get("val", 0) for c in counts.values())
    return f"""
## Training data

| class | training pictures | validation pictures |
|---|---|---|
{rows}
| **total** | {total_train} | {total_val} |
"""


def _counted_accuracy(run: RunDir, evaluation) -> str:
    """``**8 of 10 (80 %, likely between 49 % and 94 %)**.``, and the cross-validated figure when the run made one."""
    from transfer.analysis.trust import Accuracy, run_accuracy

    stored = run_accuracy(run.path)
    counted = Accuracy(sum(1 for item in evaluation.predictions if item.correct), evaluation.count)
    text = f"**{counted.describe()}**."
    if stored is not None and stored.cross_validated:
        text += " " + stored.describe_cross_validation()
    return text


def _quality_section(run: RunDir) -> str:
    try:
        evaluation = load_evaluation(run.path)
    except EvaluationNotReady as error:
        return f"## How well it does\n\n{error}"
    metrics = "\n".join(f"| {m.name} | {_percent(m.precision)} | {_percent(m.recall)} | {_percent(m.f1)} | {m.support} |"
                        for m in evaluation.per_class())
    header = " | ".join(evaluation.classes)
    confusion = "\n".join(f"| **{name}** | " + " | ".join(str(int(v)) for v in row) + " |"
                          for name, row in zip(evaluation.classes, evaluation.confusion()))
    epoch = f" (best epoch {evaluation.epoch})" if evaluation.epoch else ""
    return f"""
## How well it does

Validation accuracy{epoch}, on pictures it never trained on: {_counted_accuracy(run, evaluation)}

| class | precision | recall | F1 | pictures |
|---|---|---|---|---|
{metrics}

Confusion matrix (rows: true class, columns: what the model said):

| true \\ said | {header} |
|---|{"---|" * len(evaluation.classes)}
{confusion}
"""


def _usage_section(info: dict) -> str:
    return """
## Use it

```
pip install -r requirements.txt
python predict.py photo.jpg                 # or a folder of pictures
python predict.py photos/ --top-k 3 --json
```

`predict.py` needs only onnxruntime, numpy and pillow, and prepares each picture exactly as the
studio did. `model.onnx` takes a float batch `N x 3 x H x W` prepared as `model.json` says and
returns class probabilities (and, when the model has one, each picture's novelty as a second
output); `model.safetensors` holds the PyTorch weights.

The same model also runs inside a web browser: the studio's "Download as a web page" (or
`transfer export RUN_DIR --format web`) gives a folder with an `index.html` that classifies
dropped pictures and the live camera on the visitor's device with onnxruntime-web, with the same
preparation and answers; put it on any static file host (`python -m http.server` will do).
"""


def _precision_section(int8_check) -> str:
    if int8_check is None:
        return """
## Precision

float32: `model.onnx` computes with the trained weights as they are; its probabilities were checked
against the studio's model on the run's validation pictures.
"""
    c = int8_check
    unknown = "" if c.unknown_agreement is None else \
        f"\n| same \"None of these\" decision (every strictness) | {c.unknown_agreement:.1%} |"
    return f"""
## Precision

int8: `model.onnx` is the smaller model ({human_size(c.int8_bytes)} instead of {human_size(c.float_bytes)}):
weights in int8 (per channel), activations in uint8 with ranges measured on {c.calibration_pictures}
training pictures; the first convolution (which reads the picture), the softmax and the "None
of these" computation stay in float32. Before it was offered it was
checked against the float32 model on {c.pictures} validation pictures:

| check | result |
|---|---|
| same top class as float32 | {c.top1_agreement:.1%} |
| accuracy (float32 / int8) | {c.float_accuracy:.1%} / {c.int8_accuracy:.1%} |{unknown}
| largest probability difference | {c.max_probability_diff:.3f} |
"""


def _novelty_section(run: RunDir, info: dict) -> str:
    from transfer.models.novelty import STRICTNESS, validation_novelty

    novelty = info.get("novelty")
    if not novelty:
        return ""
    thresholds = novelty["thresholds"]
    rows = "\n".join(f"| {name} | {keep:.0%} | {thresholds[name]:.4f} |" for name, keep in STRICTNESS.items())
    scores = validation_novelty(run.path)
    validation = ""
    if scores:
        unknown = sum(score > thresholds["normal"] for score in scores)
        validation = (f"\nAt the normal setting, {unknown} of the {len(scores)} validation pictures "
                      f"({unknown / len(scores):.0%}) are called unknown.\n")
    return f"""
## "None of these"

Besides its class probabilities the model measures how unlike the training pictures a picture
looks: its **novelty** is the {novelty["metric"]} (k = {novelty["k"]}) in the backbone's
feature space, from {novelty["reference_pictures"]} reference pictures stored inside `model.onnx`
(second output `novelty`; also in `{novelty["file"]}`). Above the threshold, `predict.py` answers
"None of these" (`"unknown": true`) and names the closest class second.

The thresholds were set from the training pictures alone: {novelty["calibration"]}.

| strictness | training-like pictures kept | novelty threshold |
|---|---|---|
{rows}
{validation}
Choose with `python predict.py photo.jpg --unknown-threshold relaxed|normal|strict|off` or a number.
"""


def _limits_section(classes: list[str], has_novelty: bool = False) -> str:
    anything_else = ("A picture of anything else is usually called \"None of these\" (see above), but not "
                     "always: a picture close enough to a class in the backbone's eyes still gets its label."
                     if has_novelty else
                     "A picture of anything else still gets one of these labels, often with a high probability.")
    return f"""
## What it cannot know

It only knows the classes it was trained on ({", ".join(classes)}). {anything_else} The validation figures hold for
pictures like the training pictures (same cameras, lighting, framing); check it on your own
pictures before relying on it.
"""


def _data_counts(run: RunDir) -> dict:
    try:
        events = run.events("info")
    except (OSError, ValueError):
        return {}
    counts = [event["data_counts"] for event in events if isinstance(event.get("data_counts"), dict)]
    return counts[-1] if counts else {}


def _config(run: RunDir) -> dict:
    try:
        return run.config
    except Exception:  # noqa: BLE001 - a bundle folder or snapshot may have no config
        return {}


def _licence(backbone: str) -> str:
    try:
        from transfer.models.backbones import get_backbone

        return get_backbone(backbone).license
    except Exception:  # noqa: BLE001 - a card without the licence is better than no card
        return "unknown"


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"
