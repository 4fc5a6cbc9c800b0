"""What visitors of one demo link cost the server: 4 in live camera mode (the model runs in their
browsers) against 4 dropping one picture a second the old way (each picture predicted on the server).

    python benchmarks/bench_live_server.py [--visitors 4] [--seconds 20]

A demo is made from the bundled EfficientNet-Lite0 with a fresh head (bench_predict.make_run), a
studio server is started with its own TRANSFER_HOME (and the demo's picture cap lifted), and
chromium (with its fake camera playing a y4m made from a photo) opens the link in
``--visitors`` fresh contexts. For each scenario the server process's CPU time (user + system,
from /proc) is read before and after ``--seconds`` of activity, as a share of one core; the
live scenario also counts the answers the browsers computed. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests" / "browser"), str(ROOT / "tests")]

from bench_demo import photos, start_server, wait_for_run_end  # noqa: E402
from bench_predict import make_run  # noqa: E402
from webtools import CHROMIUM_FLAGS, chromium, fake_camera_flags, y4m_from_picture  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_visitors(browser, link: str, title: str, count: int) -> list:
    pages = []
    for _ in range(count):
        page = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
        page.set_default_timeout(240_000)
        page.goto(link)
        page.get_by_role("heading", name=title).wait_for()
        wait_for_run_end(page)
        pages.append(page)
    return pages


def live_answers(page) -> int:
    return int(page.frame_locator('iframe[title*="live_camera"]').locator("#result").get_attribute("data-count") or 0)


def measure_live(pages, pid: int, seconds: float) -> dict:
    for page in pages:
        page.get_by_role("tab", name="🎥 Live camera").click()
        page.get_by_role("button", name="Live camera").click()
    for page in pages:
        page.frame_locator('iframe[title*="live_camera"]').locator("#result[data-count]").wait_for()
    time.sleep(2)  # let every page's first rerun after the click settle
    answers, cpu, started = [live_answers(p) for p in pages], cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    elapsed, used = time.monotonic() - started, cpu_seconds(pid) - cpu
    computed = sum(live_answers(p) for p in pages) - sum(answers)
    return {"server_cpu_share": used / elapsed, "server_cpu_s": used, "seconds": elapsed,
            "answers_per_second": computed / elapsed}


def measure_uploads(pages, pid: int, seconds: float, pictures: list[Path]) -> dict:
    """Each visitor drops a new picture once a second (the visitors take turns every 1/N s)."""
    cpu, started, sent, turn = cpu_seconds(pid), time.monotonic(), 0, 0
    while time.monotonic() - started < seconds:
        page = pages[turn % len(pages)]
        page.locator('input[type="file"]').first.set_input_files(str(pictures[sent % len(pictures)]))
        sent, turn = sent + 1, turn + 1
        time.sleep(max(0.0, started + sent / len(pages) - time.monotonic()))
    elapsed, used = time.monotonic() - started, cpu_seconds(pid) - cpu
    # On a busy machine the browsers may not keep up with one picture a second each: the CPU
    # time per picture then gives the share the planned rate would take.
    return {"server_cpu_share": used / elapsed, "server_cpu_s": used, "seconds": elapsed,
            "pictures_per_second": sent / elapsed, "cpu_s_per_picture": used / max(1, sent),
            "share_at_planned_rate": used / max(1, sent) * len(pages)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if chromium() is None:
        print("chromium is not installed: nothing to measure.")
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-live-") as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        os.environ.update({"TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1",
                           "TRANSFER_DEMO_PICTURES_PER_MINUTE": "100000"})
        from transfer.core.runs import RunDir
        from transfer.serving.share import DemoStore, demo_link

        run = RunDir(make_run(home / "runs" / "bench-run", classes=("ants", "bees")))
        run.update_status(state="finished")
        token, demo = DemoStore().create(run.path, title="Live bench")
        pictures = photos(Path(scratch), 40)
        video = y4m_from_picture(pictures[0], Path(scratch) / "camera.y4m")
        process, url = start_server(home)
        results = {}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium(),
                                                     args=CHROMIUM_FLAGS + fake_camera_flags(video))
                link = demo_link(url, token)
                results["live camera"] = measure_live(open_visitors(browser, link, demo.title, args.visitors),
                                                      process.pid, args.seconds)
                browser.close()
                browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
                results["one picture a second"] = measure_uploads(
                    open_visitors(browser, link, demo.title, args.visitors), process.pid, args.seconds, pictures)
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=20)
    load = os.getloadavg()
    print(f"{args.visitors} visitors of one demo link, {args.seconds:.0f} s each scenario")
    print(f"{'scenario':<24}{'server CPU':>12}{'CPU s':>8}{'answers/s':>11}")
    for name, row in results.items():
        rate = row.get("answers_per_second", row.get("pictures_per_second"))
        print(f"{name:<24}{row['server_cpu_share']:>11.1%}{row['server_cpu_s']:>8.2f}{rate:>11.2f}")
    uploads = results["one picture a second"]
    print(f"uploads: {uploads['cpu_s_per_picture']:.3f} CPU s per picture on the server, so {args.visitors} visitors at "
          f"one picture a second each take {uploads['share_at_planned_rate']:.0%} of a core")
    print(f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          "live answers are computed by the browsers, uploads by the server)")
    print(json.dumps({"benchmark": "live_server", "visitors": args.visitors,
                      "results": {k: {m: round(v, 3) for m, v in row.items()} for k, row in results.items()},
                      "load_average": [round(x, 2) for x in load]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
