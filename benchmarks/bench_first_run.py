"""A new user's first run in the browser, and the web server's memory, for one or two checkouts.

    python benchmarks/bench_first_run.py [--compare /work/main]

For each checkout (this one, and the one given by --compare, e.g. today's main), in a fresh
``TRANSFER_HOME``: start the studio as ``./studio app`` does (``python -m ui.launch``); for this
checkout, wait until its warm worker listens (a studio that has been up for a while). Then in
Debian's chromium (Playwright): Data page, "Use the demo data set", Train page, and the clock
runs from the click on "Start training" (defaults) until the finished run's accuracy is on
screen. Then the Predict page drops one picture with Grad-CAM on. The server process's resident
memory (VmRSS) is read after the run and after the heat map, and whether torch is loaded in it.
Prints a table, then one JSON line with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_studio(code: Path, home: Path, port: int) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in ("TRANSFER_HOST", "TRANSFER_PASSWORD")}
    env.update({"TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1", "PYTHONPATH": str(code)})
    log = open(home / "server.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "ui.launch", "--server.port", str(port), "--server.headless",
                               "true", "--browser.gatherUsageStats", "false"], cwd=code, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the studio did not start")


def wait_for_warm_worker(home: Path, timeout: float = 300) -> float:
    started = time.monotonic()
    while not (home / "queue" / "warm.sock").exists():
        if time.monotonic() - started > timeout:
            return float("nan")
        time.sleep(0.5)
    return time.monotonic() - started


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def settled(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
                           " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText"
                           ".includes('Running')", timeout=120_000)


def journey(browser, url: str, server: subprocess.Popen, picture: Path) -> dict:
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}/data")
    page.wait_for_url(re.compile(r"[?&]s=[\w-]+"))
    settled(page)
    token = re.search(r"[?&]s=([\w-]+)", page.url).group(1)
    page.get_by_role("tab", name="Demo data").click()
    page.get_by_role("button", name="Use the demo data set").click()
    page.get_by_text("ready for training", exact=False).first.wait_for()
    page.goto(f"{url}/train?s={token}")
    settled(page)
    started = time.monotonic()
    page.get_by_role("button", name="Start training").click()
    page.get_by_role("heading", name=re.compile(r": finished")).wait_for(timeout=600_000)
    accuracy = page.locator('[data-testid="stMetricValue"]').first.inner_text()
    first_run = time.monotonic() - started
    after_run = resident_mb(server.pid)
    page.goto(f"{url}/predict?s={token}")
    settled(page)
    page.get_by_text("Show where the model looked (Grad-CAM)").click()
    settled(page)
    started = time.monotonic()
    page.locator('input[type="file"]').first.set_input_files(str(picture))
    page.get_by_text("Where the model looked for", exact=False).first.wait_for(timeout=600_000)
    heat_map = time.monotonic() - started
    return {"first_run_seconds": round(first_run, 2), "accuracy_on_screen": accuracy,
            "server_mb_after_run": after_run, "first_heat_map_seconds": round(heat_map, 2),
            "server_mb_after_heat_map": resident_mb(server.pid), "torch_in_server": torch_loaded(server.pid)}


def measure(code: Path, browser, picture: Path) -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-first-run-"))
    port = free_port()
    server = start_studio(code, home, port)
    try:
        warm_up = wait_for_warm_worker(home) if (code / "transfer" / "runtime" / "warm.py").is_file() else None
        result = journey(browser, f"http://127.0.0.1:{port}", server, picture)
        result["warm_worker_ready_seconds"] = None if warm_up is None else round(warm_up, 1)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="another checkout to measure the same way (e.g. /work/main)")
    args = parser.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()
    picture = Path(tempfile.mkdtemp(prefix="bench-picture-")) / "picture.png"
    Image.new("RGB", (160, 120), (200, 40, 40)).save(picture)
    checkouts = {"this": ROOT, **({"compare": args.compare} if args.compare else {})}
    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        for label, code in checkouts.items():
            results[label] = {"code": str(code), **measure(code, browser, picture)}
            print(f"{label}: {results[label]}", file=sys.stderr, flush=True)
        browser.close()
    columns = ["first_run_seconds", "accuracy_on_screen", "first_heat_map_seconds", "server_mb_after_run",
               "server_mb_after_heat_map", "torch_in_server"]
    print(f"{'checkout':<10}" + "".join(f"{c:>26}" for c in columns))
    for label, row in results.items():
        print(f"{label:<10}" + "".join(f"{str(row[c]):>26}" for c in columns))
    print(json.dumps({"benchmark": "first_run", "results": results, "cores": os.cpu_count(),
                      "load_average_before": load_before, "load_average_after": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
