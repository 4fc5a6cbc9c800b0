"""A picture's way to an answer, in one file: decoded, prepared for the model, answered.

The studio turns every picture into the model's input by the rules in this module: training
(transfer.data.images, transfer.data.cache, transfer.data.augment), both predictors
(transfer.serving.predict, transfer.serving.server_predict) and the web page (its prepare.js
repeats these rules in JavaScript, held to them bit for bit by tests/test_web_page.py). The file
needs only numpy and pillow, and is copied verbatim into every exported bundle as ``predict.py``
(next to ``model.onnx`` and ``model.json``), so a bundle prepares and answers a picture exactly as
the studio did when it trained and validated the model:

    python predict.py IMAGE_OR_FOLDER... [--top-k K] [--json]

1. decode the first frame, EXIF orientation applied, every colour mode turned into 8-bit RGB
   (transparency composited on white, 16-bit and float pictures scaled to 0..255); a JPEG is
   decoded at the smallest DCT scale that keeps the short side at least ``resize_size``;
2. scale the short side to ``resize_size`` (:class:`Preprocessing`) with the interpolation
   recorded in ``model.json`` (bicubic for timm models, bilinear for torchvision and the
   EfficientNet-Lite weights);
3. take the central square (:func:`model_square`, what the studio's picture banks hold), then
   its central ``input_size`` crop;
4. divide by 255 and normalise with the recorded mean and std (:func:`model_input`);
5. the model returns probabilities and, for a model with a novelty reference, each picture's
   novelty: :func:`answers` lists the top-k classes, and above the threshold ``model.json``
   records (``--unknown-threshold``), the answer is "None of these".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: File name endings read as pictures (in a folder given to the bundle, in a studio data set).
PICTURE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                      ".ppm", ".pgm", ".pbm", ".pnm")
#: Decoders a picture may use. Pillow can also open formats such as EPS by running external
#: programs; a user's file must never reach those, so the list is closed.
SAFE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
#: 64 megapixels (e.g. 8000 x 8000) is above any phone photo and far below what would exhaust
#: memory once decoded; larger pictures are refused as possible decompression bombs.
MAX_PIXELS = 64_000_000
MAX_ASPECT = 4.0
#: Bump when a rule below changes the decoded pixels: the studio's decode caches, picture banks
#: and feature caches key on it, so nothing decoded the old way is reused.
PIXEL_RULES_VERSION = 1
#: "How sure must it be that a picture belongs to a class?": the share of pictures like the
#: training ones each setting keeps (the studio's transfer.models.novelty calibrates on these).
STRICTNESS = {"relaxed": 0.99, "normal": 0.95, "strict": 0.90}

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_EXIF_ORIENTATION_TAG = 0x0112
# How to undo each EXIF orientation (the camera stored the sensor's pixels, not the view).
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# --------------------------------------------------------------------------- what a backbone expects


@dataclass(frozen=True)
class Preprocessing:
    """How pictures must be prepared for a backbone's pretrained weights (``model.json`` records it)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @property
    def resize_size(self) -> int:
        """Short side before the centre crop, as the weights were evaluated."""
        return int(round(self.input_size / self.crop_pct))

    @classmethod
    def from_info(cls, recorded: dict) -> "Preprocessing":
        """The preprocessing ``model.json`` records under ``"preprocessing"``."""
        return cls(int(recorded["input_size"]), tuple(recorded["mean"]), tuple(recorded["std"]),
                   recorded.get("interpolation", "bilinear"), float(recorded["crop_pct"]))


# --------------------------------------------------------------------------- pixel rules


def resampling(interpolation: str) -> Image.Resampling:
    """Pillow's filter for an interpolation name as timm and torchvision record it."""
    try:
        return _RESAMPLING[str(interpolation).lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation '{interpolation}'; use one of {', '.join(_RESAMPLING)}") from None


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - broken EXIF must not make a good picture unreadable
        return 1


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    method = _UNDO_ORIENTATION.get(orientation)
    return image.transpose(method) if method is not None else image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any colour mode as 8-bit RGB; raises ValueError for a mode that cannot be converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"colour mode {mode} cannot be converted ({error})") from None


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit files use their full range (65535 is white); 32-bit integer and float pictures
    within 0..255 (0..1 for floats) are kept, anything else is stretched from min to max."""
    with np.errstate(invalid="ignore", over="ignore"):
        values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:
            scaled = np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def resize_short_side(image: Image.Image, short_side: int, interpolation: str = "bilinear",
                      max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Scale ``image`` so its short side is exactly ``short_side`` pixels, keeping the aspect.

    A strip far longer than it is wide is centre-cropped to ``max_aspect`` first: scaling a
    10 x 10000 banner up to a 256-pixel short side would otherwise need gigabytes.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long > short * max_aspect:
        keep = max(1, int(short * max_aspect))
        left = (width - keep) // 2 if width > height else 0
        top = (height - keep) // 2 if height > width else 0
        image = image.crop((left, top, left + min(width, keep), top + min(height, keep)))
        width, height = image.size
        short = min(width, height)
    if short == short_side:
        return image
    scale = short_side / short
    if width <= height:
        new_size = (short_side, max(short_side, round(height * scale)))
    else:
        new_size = (max(short_side, round(width * scale)), short_side)
    # reducing_gap lets Pillow shrink in integer steps first: much faster, same look.
    return image.resize(new_size, resampling(interpolation), reducing_gap=3.0 if scale < 1 else None)


def centre_square(array: np.ndarray) -> np.ndarray:
    """The central ``short x short`` part of a ``(H, W, 3)`` picture."""
    height, width = array.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return array[top : top + side, left : left + side]


def open_picture(path: Path, min_short_side: int) -> Image.Image:
    """The first frame of a picture file as oriented RGB; raises for anything unusable."""
    Image.init()
    with Image.open(path, formats=[name for name in SAFE_FORMATS if name in Image.OPEN]) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width} x {height} pixels is more than {MAX_PIXELS:,}")
        orientation = exif_orientation(image)
        image.seek(0)
        if image.format in ("JPEG", "MPO"):
            image.draft(image.mode, (min_short_side, min_short_side))
        image.load()
        return to_rgb(apply_orientation(image.copy(), orientation))


# --------------------------------------------------------------------------- the model's input


def model_square(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """The ``(resize_size, resize_size, 3)`` uint8 centre square of an RGB picture whose short side
    is scaled to ``resize_size``: the square training and validation start from (the studio's
    picture banks hold these), so a picture is predicted exactly as it was validated."""
    resized = resize_short_side(image, preprocessing.resize_size, preprocessing.interpolation)
    return centre_square(np.asarray(resized.convert("RGB"), dtype=np.uint8))


def model_input(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """The normalised ``(3, input_size, input_size)`` float32 array the model expects."""
    side, size = preprocessing.resize_size, preprocessing.input_size
    offset = (side - size) // 2
    crop = model_square(image, preprocessing)[offset:offset + size, offset:offset + size].astype(np.float32)
    factor, shift = (np.asarray(v, dtype=np.float32)
                     for v in normalising_factors(preprocessing.mean, preprocessing.std, 1 / 255))
    return np.ascontiguousarray((crop * factor - shift).transpose(2, 0, 1))


def normalising_factors(mean, std, scale: float) -> tuple[list[float], list[float]]:
    """``(x * scale - mean) / std`` as ``x * factor - shift``: the per-channel factor and shift,
    in double precision (the studio rounds them to float32 exactly as this script does)."""
    return [scale / s for s in std], [m / s for m, s in zip(mean, std)]


# --------------------------------------------------------------------------- answers


def unknown_threshold(novelty: dict | None, setting="normal") -> float | None:
    """The novelty above which a picture is "None of these": ``setting`` is a strictness name
    (its threshold recorded in ``model.json``), a number, or ``off``; None means never unknown
    (also for a model trained without novelty). Raises ValueError for anything else."""
    if setting is None or str(setting).strip().lower() == "off":
        return None
    text = str(setting).strip().lower()
    if text in STRICTNESS:
        return float(novelty["thresholds"][text]) if novelty else None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--unknown-threshold takes a number, {', '.join(STRICTNESS)} or off, not '{setting}'") from None
    if not 0.0 <= value <= 2.0:
        raise ValueError(f"--unknown-threshold {setting} is outside 0..2, the range of a cosine distance")
    return value


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one picture, most likely first, and how unlike the training pictures
    it looks (``novelty``, None for a model without it; ``unknown``: "None of these")."""

    labels: list[str]
    probabilities: list[float]
    indices: list[int]
    novelty: float | None = None
    unknown: bool = False

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "probability": self.probability,
            "top_k": [{"label": name, "probability": p} for name, p in zip(self.labels, self.probabilities)],
            "unknown": self.unknown,
            "novelty": self.novelty,
        }


def answers(probabilities, labels: list[str], k: int, novelty=None, threshold: float | None = None) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probabilities`` (``(N, classes)``): the ``k`` likeliest
    of ``labels`` (ties keep the class order), each picture's ``novelty`` (``N`` values, or None)
    and "None of these" where its novelty is over ``threshold`` (None: never)."""
    k = min(k, len(labels))
    scores = [None] * len(probabilities) if novelty is None else [float(n) for n in np.ravel(novelty)]
    results = []
    for row, score in zip(np.asarray(probabilities), scores):
        order = np.argsort(-row, kind="stable")[:k]
        unknown = score is not None and threshold is not None and score > threshold
        results.append(Prediction([labels[i] for i in order], [float(row[i]) for i in order],
                                  [int(i) for i in order], score, unknown))
    return results


# --------------------------------------------------------------------------- the bundle's own command line


def picture_files(arguments: list[str]) -> list[Path]:
    files = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            for directory, subdirs, names in os.walk(path):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                files += [Path(directory) / n for n in sorted(names)
                          if not n.startswith(".") and n.lower().endswith(PICTURE_EXTENSIONS)]
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"{path} does not exist; give pictures or folders of pictures.")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify pictures with this exported model.")
    parser.add_argument("images", nargs="+", help="picture files or folders of pictures")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to list per picture")
    parser.add_argument("--unknown-threshold", default="normal", metavar="X|relaxed|normal|strict|off",
                        help="novelty above which a picture is 'None of these' (default: the model's normal setting)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise SystemExit("--top-k must be at least 1.")
    import onnxruntime

    here = Path(__file__).resolve().parent
    info = json.loads((here / "model.json").read_text())
    classes, preprocessing = info["classes"], Preprocessing.from_info(info["preprocessing"])
    try:
        threshold = unknown_threshold(info.get("novelty"), args.unknown_threshold)
    except ValueError as error:
        raise SystemExit(f"{error}.") from None
    session = onnxruntime.InferenceSession(str(here / "model.onnx"), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    scores_novelty = [output.name for output in session.get_outputs()][1:2] == ["novelty"]
    predictions, skipped = [], []
    for path in picture_files(args.images):
        try:
            batch = model_input(open_picture(path, preprocessing.resize_size), preprocessing)[None]
        except Exception as error:  # noqa: BLE001 - one bad file is reported, never fatal
            skipped.append({"file": str(path), "reason": f"{type(error).__name__}: {error}"})
            continue
        outputs = session.run(None, {input_name: batch})
        prediction = answers(outputs[0], classes, args.top_k, outputs[1] if scores_novelty else None, threshold)[0]
        predictions.append({"file": str(path), **prediction.to_dict()})
    if args.json:
        print(json.dumps({"predictions": predictions, "skipped": skipped}))
    else:
        for row in predictions:
            others = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in row["top_k"][1:])
            answer = (f"None of these (looks unlike every class; closest: {row['label']} {row['probability']:.1%})"
                      if row["unknown"] else f"{row['label']} ({row['probability']:.1%})")
            print(f"{row['file']}: {answer}" + (f"  [{others}]" if others else ""))
        for row in skipped:
            print(f"{row['file']}: skipped ({row['reason']})", file=sys.stderr)
    return 0 if predictions or not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
