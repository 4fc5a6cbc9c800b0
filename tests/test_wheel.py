"""The wheel, installed as a new user would: built from the project, installed (not editable) into
a fresh virtual environment, and used from a folder outside the checkout: a features training on
the bundled demo data through the `transfer` command (also with two ranks), a checked ONNX export,
and `transfer studio` answering its health check with the app's own settings.

The new environment reuses this one's packages (torch is large) through a ``.pth`` line naming
this environment's site-packages: a plain path line, so this environment's own editable install of
the checkout is not picked up, and the wheel's copy comes first on the import path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from browser.browsertools import free_port
from waiting import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs",
                                     ".pytest_cache", ".transfer-cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "transfer-studio"
    shutil.copytree(ROOT, source, ignore=NOT_SHIPPED)  # a build writes build/ and egg-info beside the sources
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, timeout=300)
    return next(out.glob("transfer_studio-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    new_site = Path(subprocess.check_output(
        [str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    (new_site / "reuse-installed-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python"), "install",
                    "--quiet", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], check=True, timeout=300)
    return folder


def outside_environment(venv: Path, home: Path) -> dict:
    """A shell in the new environment: no PYTHONPATH pointing at the checkout."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "TRANSFER_HOST", "TRANSFER_PASSWORD", "VIRTUAL_ENV")}
    env.update({"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "TRANSFER_HOME": str(home),
                "TRANSFER_OFFLINE": "1"})
    return env


def test_the_wheel_holds_every_module_the_data_and_the_web_app(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    engine = {path.relative_to(ROOT).as_posix() for path in (ROOT / "transfer").rglob("*.py")}
    assert engine <= names  # sub-packages (transfer/training/...) included
    assert "transfer/models/torchvision_catalogue.json" in names
    assert any(name.startswith("transfer/data/demo_data/flowers/") for name in names)
    for web_file in ("app.py", "pages/train.py", "ui/launch.py", ".streamlit/config.toml"):
        assert f"transfer_studio/{web_file}" in names
    assert not any(name.startswith(("tests/", "benchmarks/")) or name.endswith("setup.py") for name in names)


def test_an_installed_wheel_trains_and_serves_from_another_folder(venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = outside_environment(venv, tmp_path / "home")
    python = str(venv / "bin" / "python")
    imported = subprocess.check_output(
        [python, "-c", "import transfer, transfer.training, transfer.data.dataset as d; print(transfer.__file__);"
                       "print(d.demo_dataset_path())"], cwd=elsewhere, env=env, text=True).split()
    assert imported[0].startswith(str(venv))  # the wheel's copy, not the checkout's
    demo = imported[1]

    trained = subprocess.run(
        [str(venv / "bin" / "transfer"), "train", demo, "--method", "features", "--epochs", "2", "--json",
         "--runs-dir", str(elsewhere / "runs")], cwd=elsewhere, env=env, capture_output=True, text=True,
        timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = json.loads(trained.stdout.strip().splitlines()[-1])
    assert result["method"] == "features" and result["val_accuracy"] is not None
    assert Path(result["run_dir"]).is_relative_to(elsewhere / "runs")

    # Two ranks (transfer.training.distributed) and a checked export, also from the wheel's copy.
    ranks = subprocess.run(
        [str(venv / "bin" / "transfer"), "train", demo, "--method", "features", "--epochs", "1", "--json",
         "--nproc-per-node", "2", "--runs-dir", str(elsewhere / "runs")], cwd=elsewhere, env=env,
        capture_output=True, text=True, timeout=600)
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    assert json.loads(ranks.stdout.strip().splitlines()[-1])["world_size"] == 2
    exported = subprocess.run([str(venv / "bin" / "transfer"), "export", result["run_dir"], "--format", "onnx",
                               "--json"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert json.loads(exported.stdout.strip().splitlines()[-1])["max_abs_diff"] < 1e-3

    port = free_port()
    log = open(tmp_path / "studio.log", "wb")
    server = subprocess.Popen([str(venv / "bin" / "transfer"), "studio", "--port", str(port)], cwd=elsewhere,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def studio_log() -> str:
            return (tmp_path / "studio.log").read_text()[-3000:]

        wait_for(lambda: studio_is_healthy(f"http://127.0.0.1:{port}", server, studio_log),
                 lambda: "the studio's health check; its log:\n" + studio_log(), timeout=120, interval=0.3)
        serving_from = Path(os.readlink(f"/proc/{server.pid}/cwd"))
        assert serving_from.is_relative_to(venv) and (serving_from / ".streamlit" / "config.toml").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def studio_is_healthy(url: str, server: subprocess.Popen, log) -> bool:
    """Whether the studio at ``url`` answers its health check; fails with ``log()`` once it has exited."""
    assert server.poll() is None, f"the studio exited: {log()}"
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
            return response.read() == b"ok"
    except OSError:
        return False
