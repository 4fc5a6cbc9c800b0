"""Models that run in the visitor's browser: the files behind the live camera view and the
"web page" export.

``transfer/serving/web_assets/`` holds the browser code (plain JavaScript modules, no build step):
``prepare.js`` prepares a picture exactly as :mod:`transfer.data.picture` does (Pillow's
filters in its fixed-point arithmetic), ``classify.js`` runs the run's checked ONNX export with
onnxruntime-web, ``live.js`` classifies camera frames one after another, ``index.html`` +
``component.js`` are the studio's live view (a Streamlit component) and ``page.html`` +
``page.js`` the exported page. onnxruntime-web itself is pinned in the repository's
``package.json`` / ``package-lock.json``; the install step (``./studio``) runs ``npm ci`` and
copies the three files it needs into ``web_assets/ort/`` (``python -m transfer.serving.web_page
--install-runtime node_modules/onnxruntime-web/dist``), so the studio serves them itself and
nothing is fetched from the internet at run time.

The web page export is a zip of one folder: ``index.html``, ``model.onnx``, ``model.json``, the
page's scripts and ``ort/``. Any static file host serves it (``python -m http.server`` in the
folder will do); the ``#result`` element carries the current answer in ``data-label`` and
``data-probability`` for automated checks.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

from transfer.core.errors import TransferError

ASSETS = Path(__file__).with_name("web_assets")
RUNTIME_FOLDER = ASSETS / "ort"
#: onnxruntime-web's WebAssembly build (CPU, SIMD): the module, its loader and the binary.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: The page's own files, copied into every web page export (page.html becomes index.html).
PAGE_FILES = ("page.js", "classify.js", "prepare.js", "live.js", "style.css")
PAGE_FOLDER_SUFFIX = "-web"


class WebRuntimeMissing(TransferError):
    """onnxruntime-web's files are not installed next to the studio."""


def runtime_ready() -> bool:
    return all((RUNTIME_FOLDER / name).is_file() for name in RUNTIME_FILES)


def require_runtime() -> None:
    if not runtime_ready():
        raise WebRuntimeMissing(
            "The browser runtime (onnxruntime-web) is not installed, so models cannot run in the browser: "
            "run `./studio app` (or `npm ci` and `python -m transfer.serving.web_page --install-runtime "
            "node_modules/onnxruntime-web/dist`) once on a machine with npm, then try again.")


def install_runtime(dist: Path | str) -> list[Path]:
    """Copy onnxruntime-web's files from its npm ``dist`` folder into ``web_assets/ort/``."""
    dist = Path(dist)
    missing = [name for name in RUNTIME_FILES if not (dist / name).is_file()]
    if missing:
        raise WebRuntimeMissing(f"{dist} lacks {', '.join(missing)}: run `npm ci` in the repository first.")
    RUNTIME_FOLDER.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RUNTIME_FILES:
        temporary = RUNTIME_FOLDER / f".{name}.tmp"
        shutil.copyfile(dist / name, temporary)
        temporary.replace(RUNTIME_FOLDER / name)  # a page never sees half a file
        copied.append(RUNTIME_FOLDER / name)
    licence = dist.parent / "LICENSE"
    if licence.is_file():
        shutil.copyfile(licence, RUNTIME_FOLDER / "LICENSE")
    return copied


def browser_info(info: dict, title: str = "", strictness: str | None = None) -> dict:
    """What the browser needs of ``model.json``: classes, preprocessing, the ONNX contract and,
    when the model has one, its "None of these" calibration (``strictness`` names which of its
    thresholds applies; the page uses "normal" without it) and the margin below which an answer is
    "not sure" (``unsure_margin``, see :mod:`transfer.analysis.trust`). Nothing about the owner's data."""
    page = {"title": title or "Image classifier", "classes": list(info["classes"]),
            "preprocessing": info["preprocessing"],
            "onnx": {"file": "model.onnx", "input": "input", "output": "probabilities"}}
    if isinstance(info.get("unsure_margin"), (int, float)):
        page["unsure_margin"] = float(info["unsure_margin"])
    if isinstance(info.get("novelty"), dict):
        page["novelty"] = info["novelty"]
        if strictness:
            page["unknown_setting"] = strictness
    return page


def web_page_zip(folder_name: str, onnx: bytes, info: dict, title: str = "") -> bytes:
    """The web page export: one folder ``folder_name`` with everything the page needs."""
    require_runtime()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{folder_name}/index.html", (ASSETS / "page.html").read_text())
        for name in PAGE_FILES:
            archive.write(ASSETS / name, f"{folder_name}/{name}")
        for name in RUNTIME_FILES:
            archive.write(RUNTIME_FOLDER / name, f"{folder_name}/ort/{name}")
        if (RUNTIME_FOLDER / "LICENSE").is_file():
            archive.write(RUNTIME_FOLDER / "LICENSE", f"{folder_name}/ort/LICENSE")
        archive.writestr(f"{folder_name}/model.onnx", onnx)
        archive.writestr(f"{folder_name}/model.json", json.dumps(browser_info(info, title), indent=2) + "\n")
    return buffer.getvalue()


def unpack_page(zip_path: Path, target: Path) -> Path:
    """Unpack a web page export into the folder ``target`` (created; files directly inside).
    An entry naming a parent folder (``..``) or an absolute path is refused, whatever made the zip."""
    with zipfile.ZipFile(zip_path) as archive:
        for entry in archive.infolist():
            parts = Path(entry.filename).parts
            if ".." in parts or entry.filename.startswith(("/", "\\")):
                raise OSError(f"the page's zip names a file outside its folder ({entry.filename!r})")
            relative = Path(*parts[1:])
            if entry.is_dir() or not relative.parts:
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(entry))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install onnxruntime-web's files for the studio's browser models.")
    parser.add_argument("--install-runtime", metavar="DIST", required=True,
                        help="onnxruntime-web's dist folder (node_modules/onnxruntime-web/dist after npm ci)")
    args = parser.parse_args(argv)
    try:
        copied = install_runtime(args.install_runtime)
    except (WebRuntimeMissing, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    print(f"onnxruntime-web installed in {RUNTIME_FOLDER} ({len(copied)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
