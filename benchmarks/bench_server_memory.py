"""The web server's peak memory under two things a stranger can do, in this checkout and another.

    python benchmarks/bench_server_memory.py [--compare /work/main] [--visitors 30] [--ceiling-gb 8]

* **Upload attack**: a studio behind a password; a browser session that never typed it sends
  ``--bodies`` bodies of ``--body-mb`` MB straight to Streamlit's upload route
  (``PUT /_stcore/upload_file/<session>/<id>``), as a script can without the page.
* **Demo visitors**: ``--visitors`` demo sessions each drop a 64-megapixel PNG (under the demo's
  10 MB file limit) at the same moment and wait for their answer.

Each server is started as ``./studio app`` starts it (``python -m ui.launch``) from the checkout
under test, on a shared TRANSFER_HOME holding one demo of a run made from the bundled
EfficientNet-Lite0 with a fresh head. The numbers are the server process's peak resident memory
(``VmHWM``) above what it held before, and its resident memory afterwards. A server passing
``--ceiling-gb`` is killed (so a shared machine is not run out of memory) and reported as over it.
Clients are Python websockets speaking Streamlit's own protocol: no browser. Prints a table, then
one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from bench_predict import make_run  # noqa: E402
from browser.browsertools import free_port, put_upload, streamlit_session, wait_for_run  # noqa: E402

MB = 2**20


def memory_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1]) / 1024


class Server:
    """A studio server of ``checkout`` on ``home``, killed when it passes ``ceiling_mb``."""

    def __init__(self, checkout: Path, home: Path, env: dict, ceiling_mb: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if k not in ("TRANSFER_PASSWORD", "TRANSFER_HOST")}
        full_env.update({"TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1", "PYTHONPATH": str(checkout), **env})
        self.log = open(home / f"server-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ui.launch", "--server.port", str(self.port), "--server.headless", "true"],
            cwd=checkout, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        self.killed = False
        self._wait_until_serving()
        self._watch = threading.Thread(target=self._watch_memory, args=(ceiling_mb,), daemon=True)
        self._watch.start()

    def _wait_until_serving(self) -> None:
        import urllib.request

        for _ in range(300):
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the server did not start")

    def _watch_memory(self, ceiling_mb: float) -> None:
        while self.process.poll() is None:
            try:
                if memory_mb(self.process.pid, "VmRSS") > ceiling_mb:
                    self.killed = True
                    self.process.kill()
                    return
            except (OSError, StopIteration):
                return
            time.sleep(0.05)

    def peak(self) -> float:
        return memory_mb(self.process.pid, "VmHWM")

    def resident(self) -> float:
        return memory_mb(self.process.pid, "VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def upload_attack(checkout: Path, home: Path, bodies: int, body_mb: int, ceiling_mb: float) -> dict:
    server = Server(checkout, home, {"TRANSFER_PASSWORD": "bench password"}, ceiling_mb)
    try:
        with streamlit_session(server.url) as (session_id, xsrf, _):
            before = server.peak()
            answers = [put_upload(server.url, session_id, xsrf, body_mb * MB) for _ in range(bodies)]
            time.sleep(1)
            return {"answers": answers, "peak_growth_mb": round(server.peak() - before),
                    "resident_after_mb": round(server.resident()), "killed": server.killed}
    except (OSError, AssertionError):
        return {"answers": [], "peak_growth_mb": None, "resident_after_mb": None, "killed": server.killed}
    finally:
        server.stop()


def big_png(megapixels: int = 64) -> bytes:
    """A square PNG of ``megapixels`` (64: 8,000 x 8,000) that compresses under the demo's 10 MB limit."""
    from PIL import Image

    side = int((megapixels * 1_000_000) ** 0.5) // 250 * 250
    tile = Image.effect_noise((250, 250), 60).convert("RGB")
    picture = Image.new("RGB", (side, side))
    for x in range(0, side, 250):
        for y in range(0, side, 250):
            picture.paste(tile, (x, y))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def visitor(url: str, token: str, picture: bytes, ready: threading.Barrier, results: list) -> None:
    from streamlit.proto.BackMsg_pb2 import BackMsg

    try:
        with streamlit_session(url, f"demo={token}") as (session_id, xsrf, connection):
            file_id = str(uuid.uuid4())
            status = put_upload(url, session_id, xsrf, 0, data=picture, file_id=file_id, name="photo.png")
            ready.wait(timeout=600)  # every visitor has uploaded: all ask for answers at once
            rerun = BackMsg()
            rerun.rerun_script.query_string = f"demo={token}"
            widget = rerun.rerun_script.widget_states.widgets.add()
            widget.id = uploader_id(url, token)
            info = widget.file_uploader_state_value.uploaded_file_info.add()
            info.name, info.size, info.file_id = "photo.png", len(picture), file_id
            info.file_urls.file_id = file_id
            info.file_urls.upload_url = info.file_urls.delete_url = f"/_stcore/upload_file/{session_id}/{file_id}"
            connection.send(rerun.SerializeToString())
            elements = []
            wait_for_run(connection, elements)
            texts = [e.markdown.body for e in elements if e.WhichOneof("type") == "markdown"]
            texts += [e.alert.body for e in elements if e.WhichOneof("type") == "alert"]
            answered = any("Prediction:" in t for t in texts)
            refused = next((t for t in texts if "megapixels" in t or "cannot be used" in t), "")
            results.append({"upload": status, "answered": answered, "refused": bool(refused)})
    except Exception as error:  # noqa: BLE001 - a killed server ends every visitor
        results.append({"error": type(error).__name__})


_UPLOADER_IDS: dict[str, str] = {}


def uploader_id(url: str, token: str) -> str:
    """The widget id of the demo's picture uploader, read from the page a first session draws."""
    if url not in _UPLOADER_IDS:
        with streamlit_session(url, f"demo={token}") as (_, _, connection):
            from streamlit.proto.BackMsg_pb2 import BackMsg

            rerun = BackMsg()
            rerun.rerun_script.query_string = f"demo={token}"
            connection.send(rerun.SerializeToString())
            elements = []
            wait_for_run(connection, elements)
        _UPLOADER_IDS[url] = next(e.file_uploader.id for e in elements if e.WhichOneof("type") == "file_uploader")
    return _UPLOADER_IDS[url]


def demo_visitors(checkout: Path, home: Path, token: str, visitors: int, picture: bytes, ceiling_mb: float) -> dict:
    server = Server(checkout, home, {}, ceiling_mb)
    try:
        uploader_id(server.url, token)  # the model is loaded by this first visit
        before = server.peak()
        results: list = []
        ready = threading.Barrier(visitors)
        threads = [threading.Thread(target=visitor, args=(server.url, token, picture, ready, results))
                   for _ in range(visitors)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=900)
        return {"peak_growth_mb": round(server.peak() - before) if not server.killed else None,
                "seconds": round(time.monotonic() - started, 1), "killed": server.killed,
                "answered": sum(1 for r in results if r.get("answered")),
                "refused": sum(1 for r in results if r.get("refused")),
                "failed": sum(1 for r in results if "error" in r)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", type=Path, help="another checkout, measured the same way first")
    parser.add_argument("--visitors", type=int, default=30)
    parser.add_argument("--bodies", type=int, default=3)
    parser.add_argument("--body-mb", type=int, default=200)
    parser.add_argument("--ceiling-gb", type=float, default=8.0)
    parser.add_argument("--megapixels", type=int, default=64, help="the demo visitors' picture (16: the demo's cap)")
    args = parser.parse_args()
    ceiling_mb = args.ceiling_gb * 1024
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        home = Path(scratch)
        os.environ.update({"TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1"})
        os.environ.setdefault("TRANSFER_DEMO_PICTURES_PER_MINUTE", "1000")  # the caps are not measured here
        from transfer.core.runs import RunDir
        from transfer.serving.share import DemoStore

        run = RunDir(make_run(home / "runs" / "bench-run"))
        run.update_status(state="finished")
        token, demo = DemoStore().create(run.path, title="Bench demo")
        picture = big_png(args.megapixels)
        rows = []
        record = demo.folder / "demo.json"
        own_record = record.read_text()
        for label, checkout in ([("before", args.compare)] if args.compare else []) + [("this checkout", ROOT)]:
            # An older checkout refuses a demo record with fields it does not know: it gets one without.
            fields = json.loads(own_record)
            if checkout != ROOT:
                fields.pop("include_reference", None)
            record.write_text(json.dumps(fields))
            attack = upload_attack(checkout, home, args.bodies, args.body_mb, ceiling_mb)
            crowd = demo_visitors(checkout, home, token, args.visitors, picture, ceiling_mb)
            rows.append({"checkout": label, "path": str(checkout), "upload_attack": attack, "demo_visitors": crowd})
    print(f"upload attack: {args.bodies} x {args.body_mb} MB from a locked page; demo: {args.visitors} visitors x "
          f"{len(picture) / MB:.1f} MB PNG ({args.megapixels} MP); load average {os.getloadavg()[0]:.1f}")
    print(f"{'checkout':<15} {'attack answers':<22} {'attack peak +MB':>15} {'RSS after':>10} "
          f"{'demo peak +MB':>14} {'answered':>9} {'refused':>8} {'s':>6}")
    for row in rows:
        attack, crowd = row["upload_attack"], row["demo_visitors"]
        peak = "killed" if crowd["killed"] else crowd["peak_growth_mb"]
        print(f"{row['checkout']:<15} {str(attack['answers']):<22} {attack['peak_growth_mb']!s:>15} "
              f"{attack['resident_after_mb']!s:>10} {peak!s:>14} {crowd['answered']:>9} {crowd['refused']:>8} "
              f"{crowd['seconds']:>6}")
    print(json.dumps({"picture_mb": round(len(picture) / MB, 2), "rows": rows}))


if __name__ == "__main__":
    main()
