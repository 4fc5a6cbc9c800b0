"""``transfer studio``: serve the web app, from a checkout or from an installed wheel.

The web app (``app.py``, ``pages/``, ``ui/``, ``.streamlit/config.toml``) lies beside the
``transfer`` package in a checkout, and under ``transfer_studio/`` beside it once the wheel is
installed. Either way the studio starts through the same launcher as ``./studio app``
(``python -m ui.launch``), which applies the password rule and serves from the app's own folder
so that its Streamlit settings (upload limits, no developer menu, no collection pause) hold.
This module only finds that folder and hands over to the launcher; it never imports Streamlit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from transfer.core.errors import TransferError

INSTALLED_APP_PACKAGE = "transfer_studio"
PORT_RANGE = range(1, 65536)


class StudioNotFound(TransferError):
    """The web app's files are not where this ``transfer`` package expects them."""


def app_folder() -> Path:
    """The folder holding ``app.py`` and ``ui/``: the checkout's top folder, or the installed
    ``transfer_studio`` folder."""
    beside = Path(__file__).resolve().parents[2]  # transfer/cli/studio.py -> the folder holding transfer/
    for folder in (beside, beside / INSTALLED_APP_PACKAGE):
        if (folder / "app.py").is_file() and (folder / "ui" / "launch.py").is_file():
            return folder
    raise StudioNotFound(
        f"The web app's files (app.py, ui/) are missing beside {beside}; reinstall transfer-studio "
        "(pip install transfer-studio, or pip install . in a checkout).")


def launcher_command(address: str | None = None, port: int | None = None) -> list[str]:
    """The command that serves the studio: the launcher, with the address and port asked for."""
    command = [sys.executable, "-m", "ui.launch"]
    if address is not None:
        command += ["--server.address", address]
    if port is not None:
        if port not in PORT_RANGE:
            raise TransferError(f"The port must be a whole number from 1 to 65535, not {port}; choose another.")
        command += ["--server.port", str(port)]
    return command


def launcher_environment(folder: Path, env: dict | None = None) -> dict:
    """This environment, with the web app's folder first on the import path (for ``ui``)."""
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), environment.get("PYTHONPATH")]))
    return environment


def serve(address: str | None = None, port: int | None = None) -> None:
    """Replace this process with the studio's web server (it runs until stopped with Ctrl-C)."""
    folder = app_folder()
    command = launcher_command(address, port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(folder)
    try:
        os.execve(command[0], command, launcher_environment(folder))
    except OSError as error:
        raise TransferError(f"Could not start the web server ({error}); check that {command[0]} runs.") from error


def add_studio(sub) -> None:
    p = sub.add_parser("studio", help="serve the web app (this computer only unless TRANSFER_PASSWORD is set)")
    p.add_argument("--address", default=None,
                   help="address to listen on (default $TRANSFER_HOST or 127.0.0.1; others need TRANSFER_PASSWORD)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8501)")


def cmd_studio(args) -> int:
    serve(args.address, args.port)  # returns only when the server could not be started
    return 1
