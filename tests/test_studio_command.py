"""`transfer studio`: it finds the web app (checkout or installed wheel) and hands over to the same
launcher as ./studio app, with the address and port asked for."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from transfer.cli import main as cli
from transfer.cli import studio
from transfer.core.errors import TransferError

ROOT = Path(__file__).resolve().parents[1]


def test_in_a_checkout_the_app_lies_beside_the_engine():
    assert studio.app_folder() == ROOT


def test_the_launcher_gets_the_address_and_port_and_finds_ui_first_on_the_path():
    assert studio.launcher_command("0.0.0.0", 8661) == [
        sys.executable, "-m", "ui.launch", "--server.address", "0.0.0.0", "--server.port", "8661"]
    assert studio.launcher_command() == [sys.executable, "-m", "ui.launch"]
    env = studio.launcher_environment(ROOT, {"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/elsewhere"])
    with pytest.raises(TransferError, match="from 1 to 65535"):
        studio.launcher_command(port=70000)


def test_the_command_hands_over_to_the_launcher_from_the_apps_folder(monkeypatch, tmp_path):
    handed = {}

    def fake_execve(path, command, env):
        handed.update(path=path, command=command, env=env, cwd=os.getcwd())
        raise OSError("stopped here by the test")

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["studio", "--port", "8662"]) == 2  # the failed start as a sentence, not a traceback
    assert handed["command"][1:] == ["-m", "ui.launch", "--server.port", "8662"]
    assert handed["cwd"] == str(ROOT)  # where .streamlit/config.toml lies
    assert handed["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_an_installed_wheels_app_folder_is_found_beside_the_engine(tmp_path, monkeypatch):
    installed = tmp_path / "site-packages"
    (installed / "transfer").mkdir(parents=True)
    (installed / "transfer_studio" / "ui").mkdir(parents=True)
    (installed / "transfer_studio" / "app.py").write_text("")
    (installed / "transfer_studio" / "ui" / "launch.py").write_text("")
    monkeypatch.setattr(studio, "__file__", str(installed / "transfer" / "cli" / "studio.py"))
    assert studio.app_folder() == installed / "transfer_studio"
    (installed / "transfer_studio" / "app.py").unlink()
    with pytest.raises(studio.StudioNotFound, match="reinstall transfer-studio"):
        studio.app_folder()


def test_the_server_imports_the_chart_libraries_before_any_session_runs(tmp_path):
    # In a fresh interpreter, as the server starts: when Streamlit takes over, pandas is whole,
    # so sessions drawing their first charts at the same moment never meet it half imported.
    import subprocess

    probe = ("import sys\n"
             "from streamlit.web import cli\n"
             "from ui import launch\n"
             "launch.start_warm_worker = lambda: None\n"
             "cli.main = lambda **kw: print('pandas whole:', hasattr(sys.modules.get('pandas'), 'Series')) or 0\n"
             "sys.exit(launch.main([]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                          os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pandas whole: True" in out.stdout
