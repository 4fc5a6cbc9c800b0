"""Start the studio's web server: ``./studio app [streamlit options]`` runs this module.

Three things happen before Streamlit starts:

- Where to listen: this computer only (127.0.0.1), unless ``TRANSFER_HOST`` (or
  ``--server.address``) names another address, which is refused without ``TRANSFER_PASSWORD``.
- The server starts in the app's own folder, whatever folder the command was given in (a checkout,
  or the installed ``transfer_studio`` package of ``transfer studio``): Streamlit reads its
  settings from ``.streamlit/config.toml`` there.
- Uploads are let in only from sessions the pages admitted, within a memory budget
  (see ``ui.upload_guard``).
- Streamlit is told that app.py builds the navigation, so that a link into a page as the first
  visit after a start shows the studio, not Streamlit's raw list of ``pages/`` files
  (see ``ui.pages_mode``).
- The chart libraries are imported once, before any session runs (see
  :func:`import_chart_libraries`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from transfer.runtime.access import DEFAULT_HOST, HOST_ENV, AccessError, check_listen_address, configured_password

APP = Path(__file__).resolve().parents[1] / "app.py"
ADDRESS_OPTION = "--server.address"


def listen_address(args: list[str], env: dict) -> str:
    """The address the server will listen on: ``--server.address``, else ``TRANSFER_HOST``, else local."""
    for index, arg in enumerate(args):
        if arg == ADDRESS_OPTION and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(ADDRESS_OPTION + "="):
            return arg.split("=", 1)[1]
    return env.get(HOST_ENV) or DEFAULT_HOST


def streamlit_arguments(args: list[str], env: dict) -> list[str]:
    """``streamlit run`` arguments for the studio; raises AccessError for an open network address."""
    address = listen_address(args, env)
    check_listen_address(address, configured_password(env))
    if not any(arg == ADDRESS_OPTION or arg.startswith(ADDRESS_OPTION + "=") for arg in args):
        args = [ADDRESS_OPTION, address, *args]
    return ["run", str(APP), *args]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        streamlit_args = streamlit_arguments(args, dict(os.environ))
    except AccessError as error:
        print(error, file=sys.stderr)
        return 2
    from streamlit.web import cli

    from ui import upload_guard
    from ui.pages_mode import declare_own_navigation

    declare_own_navigation()
    upload_guard.install()  # before Streamlit builds its server: no upload from a session not let in
    os.chdir(APP.parent)  # Streamlit reads .streamlit/config.toml from the folder it starts in
    import_chart_libraries()
    start_warm_worker()

    sys.argv = ["streamlit", *streamlit_args]
    return cli.main(prog_name="streamlit")


def import_chart_libraries() -> None:
    """Sessions run in threads of one process, and plotly imports pandas only when it first draws,
    looking it up in ``sys.modules`` without waiting for an import in progress. Two sessions that
    drew their first chart together after a start could find pandas half imported, and the page
    failed ("partially initialized module 'pandas'"). Imported here, before any session, it is
    whole for all of them."""
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401


def start_warm_worker() -> None:
    """While this server runs, new runs (from its pages and from `transfer train` on the same
    TRANSFER_HOME) fork from a warm worker instead of starting a fresh interpreter."""
    from transfer.runtime import warm
    from transfer.runtime.local_queue import queue_dir

    warm.announce_studio(queue_dir())


if __name__ == "__main__":
    sys.exit(main())
