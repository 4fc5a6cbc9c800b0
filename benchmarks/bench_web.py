"""The model in the browser: agreement of the web page export with `transfer predict` on real
photos, the live camera's rate in headless chromium, and the export's size.

    python benchmarks/bench_web.py [--run RUN_DIR] [--pictures N] [--seconds 10]
    python benchmarks/bench_web.py --run RUN_DIR --int8 [--pictures N] [--seconds 10]

Without --run, a run with the bundled EfficientNet-Lite0 and an untrained head is made (its
probabilities sit away from 0 and 1, which makes the agreement check harder, not easier). The
photos are the ants/bees validation set (/work/shared/datasets/hymenoptera_data, or
--photos). Each photo is classified twice: by the exported page in chromium (preparation in
JavaScript, onnxruntime-web) and by the studio's predictor; once with the run's recorded
interpolation and once with bicubic (the timm backbones' rule). The live rate is measured with
chromium's fake camera playing a y4m video made from one photo. Prints a table, then one JSON line.

``--int8`` (a finished run with its pictures) measures the float32 page and the page with the
smaller int8 model side by side instead: size, agreement with the studio's predictor running the
same ONNX file (top class, probability, "None of these"), the median time for one picture
through the page (file chooser to answer) and the live camera's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests" / "browser"), str(ROOT / "tests")]

from bench_predict import HYMENOPTERA, make_run, served_copy  # noqa: E402
from webtools import (CHROMIUM_FLAGS, answer_for, chromium, fake_camera_flags, serve_folder,  # noqa: E402
                      wait_until_ready, y4m_from_picture)


def agreement(browser, run: Path, photos: list[Path], scratch: Path, precision: str = "float32") -> dict:
    from transfer.serving.export import export_run
    from transfer.serving.predict import Predictor

    page_folder = scratch / f"page-{run.name}-{precision}"
    shutil.rmtree(page_folder, ignore_errors=True)
    export_run(run, "web", page_folder, precision=precision)
    # The studio's predictor on the very ONNX file the page carries (float32 or int8).
    predictor = Predictor.from_run(served_copy(run, page_folder / "model.onnx", scratch / f"model-{run.name}-{precision}"))
    differences, same, same_unknown, seconds, rows = [], 0, 0, [], []
    with serve_folder(page_folder) as url:
        page = browser.new_page()
        page.goto(url)
        wait_until_ready(page)
        for photo in photos:
            started = time.perf_counter()
            web = answer_for(page, photo)
            seconds.append(time.perf_counter() - started)
            studio = predictor.predict(photo, 1)[0]
            same += web["label"] == studio.label
            same_unknown += web["unknown"] == studio.unknown
            differences.append(abs(web["probability"] - studio.probability))
            rows.append((photo.name, studio.label, studio.probability, web["label"], web["probability"]))
        page.close()
    return {"pictures": len(photos), "same_top_class": same, "same_unknown": same_unknown,
            "page_ms_p50": round(statistics.median(seconds) * 1000, 1), "max_abs_diff": max(differences),
            "median_abs_diff": statistics.median(differences), "within_0.01": sum(d <= 0.01 for d in differences),
            "worst": max(rows, key=lambda r: abs(r[2] - r[4]))}


def with_interpolation(run: Path, interpolation: str, scratch: Path) -> Path:
    """A copy of ``run`` whose model.json records another interpolation (the weights are the same)."""
    copy = scratch / f"{run.name}-{interpolation}"
    if not copy.exists():
        copy.mkdir(parents=True)
        for name in ("model.json", "model.safetensors", "config.json", "labels.json"):
            if (run / name).is_file():
                shutil.copyfile(run / name, copy / name)
        info = json.loads((copy / "model.json").read_text())
        info["preprocessing"]["interpolation"] = interpolation
        (copy / "model.json").write_text(json.dumps(info))
    return copy


def live_rate(playwright, run: Path, video: Path, seconds: float, scratch: Path, precision: str = "float32") -> dict:
    from transfer.serving.export import export_run

    page_folder = scratch / f"page-{run.name}-{precision}"
    if not page_folder.exists():
        export_run(run, "web", page_folder, precision=precision)
    browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS + fake_camera_flags(video))
    try:
        with serve_folder(page_folder) as url:
            page = browser.new_page()
            page.goto(url)
            wait_until_ready(page)
            page.click("#start")
            page.wait_for_function("() => Number(document.querySelector('#result').dataset.count || 0) >= 3",
                                   timeout=120_000)
            start_count = int(page.locator("#result").get_attribute("data-count"))
            started = time.monotonic()
            time.sleep(seconds)
            count = int(page.locator("#result").get_attribute("data-count")) - start_count
            elapsed = time.monotonic() - started
            shown = page.locator("#rate").text_content()
    finally:
        browser.close()
    return {"answers": count, "seconds": round(elapsed, 1), "per_second": round(count / elapsed, 2), "shown": shown}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: Lite0 with an untrained head)")
    photos = next((folder / "val" for folder in (HYMENOPTERA, ROOT.parents[1] / "shared" / "datasets" /
                   "hymenoptera_data") if folder.is_dir()), HYMENOPTERA / "val")
    parser.add_argument("--photos", type=Path, default=photos)
    parser.add_argument("--pictures", type=int, default=60, help="photos per interpolation (0: all)")
    parser.add_argument("--seconds", type=float, default=10.0, help="live camera measuring time")
    parser.add_argument("--int8", action="store_true", help="the float32 and int8 pages of --run side by side")
    args = parser.parse_args()
    if args.int8 and args.run is None:
        parser.error("--int8 needs --run: the int8 model is calibrated and checked on a run's own pictures")
    if chromium() is None:
        print("chromium is not installed: nothing to measure.")
        return 1
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="bench-web-"))
    os.environ.setdefault("TRANSFER_HOME", str(scratch / "home"))
    run = args.run or make_run(scratch / "run", classes=("ants", "bees"))
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = photos if args.pictures == 0 else photos[:: max(1, len(photos) // args.pictures)][: args.pictures]
    if not photos:
        print(f"No photos under {args.photos}: give --photos.")
        return 1
    if args.int8:
        return int8_pages(args.run, photos, args.seconds, scratch)
    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        recorded = json.loads((run / "model.json").read_text())["preprocessing"]["interpolation"]
        for interpolation in dict.fromkeys([recorded, "bicubic"]):
            target = run if interpolation == recorded else with_interpolation(run, interpolation, scratch)
            results[interpolation] = agreement(browser, target, photos, scratch)
        browser.close()
        video = y4m_from_picture(photos[0], scratch / "camera.y4m")
        live = live_rate(playwright, run, video, args.seconds, scratch)
    size = sum(p.stat().st_size for p in (scratch / f"page-{run.name}-float32").rglob("*") if p.is_file())
    load = os.getloadavg()
    print(f"{'interpolation':<14}{'photos':>7}{'same top':>10}{'max |dp|':>10}{'median':>10}{'<=0.01':>8}")
    for name, row in results.items():
        print(f"{name:<14}{row['pictures']:>7}{row['same_top_class']:>10}{row['max_abs_diff']:>10.4f}"
              f"{row['median_abs_diff']:>10.5f}{row['within_0.01']:>8}")
    print(f"live camera: {live['per_second']} answers a second over {live['seconds']} s (page shows '{live['shown']}')")
    print(f"web page export: {size / 1e6:.1f} MB; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(json.dumps({"agreement": {k: {**v, "worst": list(v["worst"])} for k, v in results.items()}, "live": live,
                      "export_bytes": size, "load_average": [round(x, 2) for x in load]}))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def int8_pages(run: Path, photos: list[Path], seconds: float, scratch: Path) -> int:
    """The float32 and int8 web pages of ``run`` side by side: prints a table and one JSON line."""
    from playwright.sync_api import sync_playwright

    from transfer.serving.export import ExportError, export_run

    try:
        export_run(run, "onnx", precision="int8")
    except ExportError as error:
        print(f"int8 refused for {run.name}: {error}")
        print(json.dumps({"benchmark": "web_int8", "run": str(run), "refused": str(error)}))
        return 0
    results, live = {}, {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        for precision in ("float32", "int8"):
            results[precision] = agreement(browser, run, photos, scratch, precision)
        browser.close()
        video = y4m_from_picture(photos[0], scratch / "camera.y4m")
        for precision in ("float32", "int8"):
            live[precision] = live_rate(playwright, run, video, seconds, scratch, precision)
    sizes = {precision: sum(p.stat().st_size for p in (scratch / f"page-{run.name}-{precision}").rglob("*")
                            if p.is_file()) for precision in results}
    load = os.getloadavg()
    print(f"{'':<46}{'float32':>10}{'int8':>10}")
    rows = [("web page export, MB", [sizes[p] / 1e6 for p in results], "{:.1f}"),
            ("one picture through the page, p50 ms", [results[p]["page_ms_p50"] for p in results], "{:.0f}"),
            ("live camera, answers a second", [live[p]["per_second"] for p in results], "{:.1f}"),
            (f"same top class as the studio (of {len(photos)})", [results[p]["same_top_class"] for p in results], "{}"),
            ("same \"None of these\" as the studio", [results[p]["same_unknown"] for p in results], "{}"),
            ("largest probability difference", [results[p]["max_abs_diff"] for p in results], "{:.4f}")]
    for label, values, fmt in rows:
        print(f"{label:<46}" + "".join(f"{fmt.format(v):>10}" for v in values))
    print(f"(the studio's predictor runs the same ONNX file as each page; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} on {os.cpu_count()} shared cores)")
    print(json.dumps({"benchmark": "web_int8", "run": str(run), "sizes": sizes, "live": live,
                      "agreement": {k: {**v, "worst": list(v["worst"])} for k, v in results.items()},
                      "load_average": [round(x, 2) for x in load]}))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
