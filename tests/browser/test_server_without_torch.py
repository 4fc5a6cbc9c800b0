"""The real studio server with torch, torchvision and timm unimportable in its own process only
(its children - the worker, the exporter, the explainer - import them as usual). A browser walks
every page of a session with a finished run, asks for a prediction with its Grad-CAM heat map,
and opens a demo link and predicts there. No page may fail, and the server process must end
with no torch library mapped. Prints the server's memory (VmRSS) at the end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from browsertools import ROOT, _wait_until_serving, free_port, stop_studio, wait_for_app
from transfer.runtime.access import issue_session_token
from transfer.training.config import TrainConfig
from transfer.runtime.jobs import JobManager

pytestmark = pytest.mark.browser

# Run as the server: refuse torch and friends in this process, then start the studio as
# `./studio app` does. Children are fresh interpreters and do not inherit the refusal.
SERVER = """
import sys
BLOCKED = ("torch", "torchvision", "timm")
class RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} must not be imported in the web server's process")
        return None
sys.meta_path.insert(0, RefuseTorch())
from ui.launch import main
sys.exit(main(sys.argv[1:]))
"""
PAGES = ["", "data", "configure", "train", "evaluate", "predict"]


@pytest.fixture(scope="module")
def prepared_home(tmp_path_factory):
    """A home with one session holding a tiny finished run, and a demo link of it; trained before
    the server starts (a cold worker), as if the server had been restarted since."""
    from pictures import write_class_folders

    from transfer.serving.share import DemoStore

    home = tmp_path_factory.mktemp("torchless_home")
    dataset = write_class_folders(tmp_path_factory.mktemp("torchless_data") / "colours",
                                  {"red": 10, "green": 10, "blue": 10})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFER_HOME", str(home))
        patch.setenv("TRANSFER_OFFLINE", "1")
        token = issue_session_token()
        (home / "sessions" / token).mkdir(parents=True, exist_ok=True)
        (home / "sessions" / token / "dataset.json").write_text(
            f'{{"source": "{dataset}", "name": "colours", "val_fraction": 0.25, "seed": 0}}')
        manager = JobManager(home / "sessions" / token / "runs")
        config = TrainConfig.for_method("features", dataset=str(dataset), epochs=2, image_size=64)
        run = manager.submit(config.to_dict())
        status = manager.wait(run.id, timeout=300)
        assert status["state"] == "finished", status
        demo_token, _ = DemoStore().create(run.path, title="Colours without torch")
    return home, token, run, demo_token


@pytest.fixture(scope="module")
def torchless_studio(prepared_home):
    home = prepared_home[0]
    port = free_port()
    env = {key: value for key, value in __import__("os").environ.items()
           if key not in ("TRANSFER_HOST", "TRANSFER_PASSWORD")}
    env.update({"TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    log = open(home / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-c", SERVER, "--server.port", str(port), "--server.headless",
                                "true", "--browser.gatherUsageStats", "false"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop_studio(process)


def no_exception(page) -> None:
    wait_for_app(page)
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, shown.first.inner_text()


def torch_libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if re.search(r"libtorch|/torch/|/timm/", line)})


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_every_page_a_heat_map_and_a_demo_work_without_torch_in_the_server(torchless_studio, prepared_home, page,
                                                                             make_picture, tmp_path):
    url, process = torchless_studio
    home, token, run, demo_token = prepared_home
    for name in PAGES:
        page.goto(f"{url}/{name}?s={token}")
        no_exception(page)

    picture = tmp_path / "red.png"
    make_picture(0, 901, (96, 80)).save(picture)
    page.goto(f"{url}/predict?s={token}&run={run.id}")
    no_exception(page)
    page.get_by_text("Show where the model looked (Grad-CAM)").click()
    wait_for_app(page)
    page.locator('input[type="file"]').first.set_input_files(str(picture))
    page.get_by_text("Prediction:", exact=False).first.wait_for(timeout=120_000)
    page.get_by_text("Where the model looked for", exact=False).first.wait_for(timeout=300_000)
    no_exception(page)

    page.goto(f"{url}/?demo={demo_token}")
    page.get_by_role("heading", name="Colours without torch").wait_for(timeout=120_000)
    page.locator('input[type="file"]').first.set_input_files(str(picture))
    page.get_by_text("Prediction:", exact=False).first.wait_for(timeout=120_000)
    no_exception(page)

    assert process.poll() is None
    assert torch_libraries(process.pid) == []
    assert "must not be imported" not in (home / "server.log").read_text()
    print(f"\nserver process after every page, a prediction with Grad-CAM and a demo: "
          f"{resident_mb(process.pid):.0f} MB resident, no torch loaded")
