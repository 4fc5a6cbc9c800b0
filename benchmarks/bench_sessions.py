"""Load: N real browser sessions each upload a zip and start a run with the default settings,
while a fresh visitor opens the Home page. Is the studio still quick for everyone?

A studio server is started on a free port with its own empty ``TRANSFER_HOME``; Debian's
chromium is driven by Playwright, one browser context per session. Each session

1. opens the Data page and uploads a small zip of generated pictures (its own, 3 classes);
2. changes to the Train page through the sidebar and clicks "Start training" (the defaults:
   it never visits Configure);
3. while its run is queued or training, keeps changing pages (Train, Evaluate, Home, Train)
   and times each change until the new page's title is drawn.

Once every session has started its run, a fresh visitor opens the Home page a few times (a
new browser context each time), each time after a plain HTTP GET of the root page (the
server's own latency, without a browser). Reported: the time from the click to the run's headline
(time to start) and to its worker starting, the time until all runs ended, the fresh
visitor's render times, page-change times in the busy sessions (p50/p95), and whether every
run finished with no exception shown on any page. Targets on a 2-core machine with N = 8:
every run finishes, no exception, the fresh visitor's Home page within 3 s and page changes
in the busy sessions within 3 s at the 95th percentile.

    python benchmarks/bench_sessions.py [--sessions 8] [--pictures 10] [--timeout 900] [--browser-nice 15]

The N browsers run on the server's own cores here; in real use they run on the visitors'
computers. ``--browser-nice 15`` starts the busy sessions' browser at a low CPU priority and the
fresh visitor in a browser of its own at normal priority, so that the figures show the
server's own responsiveness rather than how the server's cores share out with 8 browsers.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "browser"), str(ROOT / "tests")]

from browsertools import free_port, start_studio, stop_studio  # noqa: E402  (tests/browser)
from conftest import CHROMIUM_FLAGS, _chromium  # noqa: E402  (tests/browser)
from pictures import make_picture  # noqa: E402

TITLES = {"Train": "Train", "Evaluate": "Evaluate", "Home": "Transfer Studio", "Data": "Data"}
TOUR = ["Evaluate", "Home", "Train"]
TARGET_SECONDS = 3.0


def make_zip(session_index: int, pictures: int) -> bytes:
    """A zip of 3 class folders of generated pictures, different for every session."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for class_index, name in enumerate(["red", "green", "blue"]):
            for number in range(pictures):
                picture = io.BytesIO()
                make_picture(class_index, 100 * session_index + number).save(picture, "PNG")
                archive.writestr(f"{name}/{name}_{number:03d}.png", picture.getvalue())
    return buffer.getvalue()


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Session:
    """One browser session's journey and its timings."""

    def __init__(self, index: int, browser, url: str, home: Path, zip_path: Path):
        self.index, self.browser, self.url, self.home, self.zip_path = index, browser, url, home, zip_path
        self.page = None
        self.token = self.run_id = None
        self.upload_seconds = self.start_seconds = None
        self.page_changes: list[float] = []
        self.exceptions: list[str] = []
        self.failed = False
        self.think_seconds = 1.0

    async def open(self) -> None:
        context = await self.browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = await context.new_page()
        self.page.set_default_timeout(180_000)
        self.page.on("pageerror", lambda error: self.exceptions.append(f"page error: {error}"))
        await self.page.goto(f"{self.url}/data", timeout=180_000)
        await self.page.wait_for_url("**/data?s=*")
        self.token = self.page.url.split("s=")[1].split("&")[0]

    async def upload(self) -> None:
        started = time.perf_counter()
        await self.page.locator('input[type="file"]').first.set_input_files(str(self.zip_path))
        await self.page.get_by_text("Using the pictures in", exact=False).first.wait_for()
        self.upload_seconds = time.perf_counter() - started

    async def change_page(self, name: str) -> float:
        started = time.perf_counter()
        await self.page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name).click()
        await self.page.get_by_role("heading", name=TITLES[name], exact=True).first.wait_for()
        seconds = time.perf_counter() - started
        await self._look_for_exceptions()
        return seconds

    async def start_run(self) -> None:
        await self.change_page("Train")
        button = self.page.get_by_role("button", name="Start training")
        await button.wait_for()
        started = time.perf_counter()
        await button.click()
        await self.page.wait_for_url("**run=*")
        self.run_id = self.page.url.split("run=")[1].split("&")[0]
        await self.page.get_by_text(f"Run {self.run_id}", exact=False).first.wait_for()
        self.start_seconds = time.perf_counter() - started

    async def attempt(self, step, *args) -> None:
        """Run one step of the journey; a failure is recorded as this session's exception."""
        if self.failed:
            return
        try:
            await step(*args)
        except Exception as error:  # a timeout or a lost page: the session's journey ends here
            self.failed = True
            self.exceptions.append(f"{step.__name__}: {type(error).__name__}: {str(error).splitlines()[0]}")

    def status(self) -> dict:
        if self.run_id is None:
            return {}
        path = self.home / "sessions" / self.token / "runs" / self.run_id / "status.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    async def browse_until_the_run_ends(self, deadline: float) -> None:
        step = 0
        while self.status().get("state") in (None, "queued", "running") and time.monotonic() < deadline:
            self.page_changes.append(await self.change_page(TOUR[step % len(TOUR)]))
            step += 1
            await asyncio.sleep(self.think_seconds)

    async def _look_for_exceptions(self) -> None:
        shown = self.page.locator('[data-testid="stException"]')
        if await shown.count():
            self.exceptions.append(await shown.first.inner_text())


async def fresh_visit(browser, url: str, failures: list[str]) -> float | None:
    """Seconds until a new visitor's Home page shows its title; None (and a failure) if it
    did not within 180 s."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    started = time.perf_counter()
    try:
        await page.goto(url, timeout=180_000, wait_until="commit")
        await page.get_by_role("heading", name="Transfer Studio", exact=True).first.wait_for(timeout=180_000)
        return time.perf_counter() - started
    except Exception as error:  # a visitor who gave up is a result, not a crash of the benchmark
        failures.append(f"fresh visitor: {type(error).__name__}: {str(error).splitlines()[0]}")
        return None
    finally:
        await context.close()


def browser_command(nice: int, scratch: Path) -> str:
    """Debian's chromium, started at CPU priority ``nice`` through a small wrapper script."""
    if nice <= 0:
        return _chromium()
    wrapper = scratch / "chromium-niced"
    wrapper.write_text(f'#!/bin/sh\nexec nice -n {int(nice)} {_chromium()} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """Seconds a process has run (all its threads, ended ones too), and a lower bound of the
    seconds its live threads waited, ready to run, for a CPU: what the machine, not the
    server, held back."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ran = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waited += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError):
            continue
    return ran, waited / 1e9


def http_get_seconds(url: str) -> float:
    """A plain HTTP GET of the root page: the server's own responsiveness, without a browser."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=180) as response:
        response.read()
    return time.perf_counter() - started


async def measure(args, url: str, home: Path, scratch: Path, server_pid: int) -> dict:
    from playwright.async_api import async_playwright

    zips = []
    for index in range(args.sessions):
        path = scratch / f"pictures-{index}.zip"
        path.write_bytes(make_zip(index, args.pictures))
        zips.append(path)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=browser_command(args.browser_nice, scratch),
                                                   args=CHROMIUM_FLAGS)
        # The fresh visitor's browser is a separate one at normal priority: it stands for a
        # newcomer's own computer, which the busy sessions' browsers do not slow down.
        visitor_browser = await playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS) \
            if args.browser_nice > 0 else browser
        sessions = [Session(i, browser, url, home, zips[i]) for i in range(args.sessions)]
        for session in sessions:
            session.think_seconds = args.think
        for session in sessions:  # opening is not what is measured; one at a time is kinder to the server
            await session.open()
        await asyncio.gather(*(s.attempt(s.upload) for s in sessions))
        clicked, server_cpu = time.time(), cpu_seconds(server_pid)
        await asyncio.gather(*(s.attempt(s.start_run) for s in sessions))
        deadline = time.monotonic() + args.timeout
        browsing = asyncio.gather(*(s.attempt(s.browse_until_the_run_ends, deadline) for s in sessions))
        visits, gets, failures = [], [], []
        for _ in range(args.visits):
            gets.append(await asyncio.to_thread(http_get_seconds, url))
            visits.append(await fresh_visit(visitor_browser, url, failures))
            await asyncio.sleep(2.0)
        await browsing
        while any(s.status().get("state") in ("queued", "running") for s in sessions) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
        server_now, elapsed = cpu_seconds(server_pid), time.time() - clicked
        server_cpu_share = (server_now[0] - server_cpu[0]) / elapsed
        server_wait_share = (server_now[1] - server_cpu[1]) / elapsed
        await browser.close()
        if visitor_browser is not browser:
            await visitor_browser.close()
    statuses = [s.status() for s in sessions]
    ended = [st.get("ended_at") for st in statuses if st.get("ended_at")]
    waits = [st["started_at"] - st["created_at"] for st in statuses if st.get("started_at") and st.get("created_at")]
    changes = [seconds for s in sessions for seconds in s.page_changes]
    return {
        "sessions": args.sessions,
        "pictures_per_session": 3 * args.pictures,
        "runs_finished": sum(st.get("state") == "finished" for st in statuses),
        "run_states": sorted(st.get("state", "?") for st in statuses),
        "exceptions": [e for s in sessions for e in s.exceptions] + failures,
        "upload_s_p50": percentile([s.upload_seconds for s in sessions if s.upload_seconds], 0.5),
        "start_s_p50": percentile([s.start_seconds for s in sessions if s.start_seconds], 0.5),
        "start_s_max": max((s.start_seconds for s in sessions if s.start_seconds), default=None),
        "queue_wait_s_max": max(waits, default=None),
        "all_runs_end_s": (max(ended) - clicked) if len(ended) == len(sessions) else None,
        "fresh_home_s": visits,
        "fresh_home_s_max": None if None in visits else max(visits, default=None),
        "http_get_root_s": gets,
        "page_changes": len(changes),
        "page_change_s_p50": percentile(changes, 0.5),
        "page_change_s_p95": percentile(changes, 0.95),
        "page_change_s_max": max(changes, default=None),
        "server_cpu_share": server_cpu_share,
        "server_cpu_wait_share": server_wait_share,
        "load_average": os.getloadavg()[0],
        "worker_threads": os.environ.get("TRANSFER_WORKER_THREADS", "default"),
        "think_s": args.think,
        "browser_nice": args.browser_nice,
        "cpus": os.cpu_count(),
    }


def report(result: dict) -> None:
    def show(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, list):
            return ", ".join(show(v) for v in value) or "none"
        return str(value)

    verdicts = {
        "runs_finished": result["runs_finished"] == result["sessions"],
        "exceptions": not result["exceptions"],
        "fresh_home_s_max": (result["fresh_home_s_max"] or 1e9) <= TARGET_SECONDS,
        "page_change_s_p95": (result["page_change_s_p95"] or 1e9) <= TARGET_SECONDS,
    }
    print(f"{'measure':<22} {'value':>30}  target")
    for key, value in result.items():
        mark = "" if key not in verdicts else ("  ok" if verdicts[key] else "  MISSED")
        print(f"{key:<22} {show(value):>30}{mark}")
    result["targets_met"] = all(verdicts.values())
    print(json.dumps(result, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--pictures", type=int, default=10, help="pictures per class in each zip (3 classes)")
    parser.add_argument("--visits", type=int, default=3, help="fresh visitors opening Home while the runs train")
    parser.add_argument("--think", type=float, default=1.0, help="seconds a busy session waits between page changes")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for all runs")
    parser.add_argument("--browser-nice", type=int, default=0,
                        help="run the N browsers at this lower CPU priority (0-19): in real use they run on the "
                             "visitors' own computers, not on the server's cores")
    args = parser.parse_args()
    if _chromium() is None:
        print("Debian's chromium is needed: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-sessions-", ignore_cleanup_errors=True) as scratch:
        home = Path(scratch) / "home"
        home.mkdir()
        port = free_port()
        server, url = start_studio(home, port), f"http://127.0.0.1:{port}"
        try:
            result = asyncio.run(measure(args, url, home, Path(scratch), server.pid))
        finally:
            stop_studio(server)
            _stop_workers(home)
    report(result)
    return 0 if result["targets_met"] else 1


def _stop_workers(home: Path) -> None:
    """Cancel whatever is still queued or running, so no worker outlives the benchmark."""
    from transfer.runtime.jobs import JobManager

    os.environ["TRANSFER_HOME"] = str(home)
    for runs_dir in home.glob("sessions/*/runs"):
        manager = JobManager(runs_dir)
        for run in manager.active_runs():
            manager.cancel(run)
            manager.wait(run, timeout=60)


if __name__ == "__main__":
    sys.exit(main())
