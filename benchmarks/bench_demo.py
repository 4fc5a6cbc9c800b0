"""What a stranger waits for on a demo link: page, first prediction, and each picture after it.

    python benchmarks/bench_demo.py [--visitors 3] [--pictures 6]

A run folder is made from the bundled EfficientNet-Lite0 (224 px) with a fresh 3-class head
(see bench_predict.make_run; latency does not depend on the head's values) and shared as a demo
(the time to share includes the checked ONNX export). A studio server is started on a free
port with its own TRANSFER_HOME, then each visitor, a fresh chromium context with no cookies:

* opens the link: seconds until the demo's title is on screen, and until the page has finished
  running (the model is then loaded: the first visitor of a server process pays for it);
* drops a photo: seconds until its prediction is on screen (time to first prediction);
* drops ``--pictures`` more photos one at a time: the latency a visitor sees per picture
  (upload, the cap's bookkeeping, ONNX prediction, top-k bars drawn in the browser).

Photos come from the hymenoptera data set when this machine has it, else generated JPEGs.
Prints a table, then one JSON line. Needs playwright and Debian's chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_predict import HYMENOPTERA, make_run  # noqa: E402


def photos(scratch: Path, count: int) -> list[Path]:
    found = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg")) if HYMENOPTERA.is_dir() else []
    if len(found) >= count:
        return found[:count]
    from PIL import Image

    made = []
    for index in range(count):
        path = scratch / f"photo-{index}.jpg"
        Image.effect_noise((640, 480), 40 + index).convert("RGB").save(path, quality=90)
        made.append(path)
    return made


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = open(home / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.headless", "true", "--server.address", "127.0.0.1",
                                "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the studio server did not start within 120 s")


def wait_for_run_end(page) -> None:
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=120_000)


def visit(browser, link: str, title: str, pictures: list[Path]) -> dict:
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        started = time.monotonic()
        page.goto(link)
        page.get_by_role("heading", name=title).wait_for()
        title_s = time.monotonic() - started
        page.locator('input[type="file"]').first.wait_for(state="attached")
        wait_for_run_end(page)
        ready_s = time.monotonic() - started
        latencies = []
        for index, picture in enumerate(pictures):
            started = time.monotonic()
            page.locator('input[type="file"]').first.set_input_files(str(picture))
            page.locator("text=Prediction:").nth(index).wait_for()
            latencies.append(time.monotonic() - started)
        return {"title_s": title_s, "ready_s": ready_s, "first_prediction_s": latencies[0], "next_s": latencies[1:]}
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=3)
    parser.add_argument("--pictures", type=int, default=6, help="pictures after the first, per visitor")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        os.environ.update({"TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1"})
        os.environ.setdefault("TRANSFER_DEMO_PICTURES_PER_MINUTE", "1000")
        from transfer.core.runs import RunDir
        from transfer.serving.share import DemoStore, demo_link

        run = RunDir(make_run(home / "runs" / "bench-run"))
        run.update_status(state="finished")
        started = time.monotonic()
        token, demo = DemoStore().create(run.path, title="Bench demo")
        share_s = time.monotonic() - started
        pictures = photos(Path(scratch), 1 + args.pictures)
        process, url = start_server(home)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
                visits = [visit(browser, demo_link(url, token), demo.title, pictures) for _ in range(args.visitors)]
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=20)
    report(share_s, visits, os.getloadavg()[0])


def report(share_s: float, visits: list[dict], load: float) -> None:
    later = [s for v in visits for s in v["next_s"]]
    rows = [("share (snapshot + checked ONNX export)", share_s)]
    for number, v in enumerate(visits, 1):
        rows += [(f"visitor {number}: title on screen", v["title_s"]), (f"visitor {number}: page ready", v["ready_s"]),
                 (f"visitor {number}: first prediction after the drop", v["first_prediction_s"])]
    if later:
        rows += [("each later picture, p50", statistics.median(later)), ("each later picture, max", max(later))]
    print(f"{'what':<48} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:<48} {seconds:>8.2f}")
    print(f"(1-minute load average at the end: {load:.1f} on {os.cpu_count()} cores)")
    print(json.dumps({"benchmark": "demo", "share_s": round(share_s, 2), "load_average": round(load, 1),
                      "visitors": [{k: (round(x, 2) if isinstance(x, float) else [round(y, 2) for y in x])
                                    for k, x in v.items()} for v in visits],
                      "later_picture_p50_s": round(statistics.median(later), 2) if later else None}))


if __name__ == "__main__":
    main()
