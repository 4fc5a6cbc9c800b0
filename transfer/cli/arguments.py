"""Arguments several subcommands share: the runs folder, a studio project's runs, and a run
given by its id or by its folder."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RUNS_DIR = "runs"


def add_runs_dir_argument(parser) -> None:
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                        help=f"folder holding the runs (default ./{DEFAULT_RUNS_DIR})")
    parser.add_argument("--project", metavar="NAME",
                        help="use the runs of this studio project (its name or id) instead of --runs-dir")


def use_project_runs(args) -> None:
    """``--project NAME``: the command works on that project's runs folder."""
    if getattr(args, "project", None):
        from transfer.runtime.projects import find_project

        args.runs_dir = str(find_project(args.project).runs_dir)


def resolve_run(arg: str, runs_dir: str):
    """A run given as an id inside ``runs_dir`` or as the path of a run folder; returns the run
    and the runs folder it lives in."""
    from transfer.core.runs import RunDir, find_run

    candidate = Path(arg)
    if ("/" in arg or os.sep in arg) and RunDir(candidate).exists():
        run = RunDir(candidate)
        return run, run.path.parent
    return find_run(runs_dir, arg), Path(runs_dir)


def run_folder(arg: str, runs_dir: str, marker: str = "config.json") -> Path:
    """The folder of a run given as a folder (one holding ``marker``) or as an id inside ``runs_dir``."""
    given = Path(arg)
    return given if (given / marker).is_file() else resolve_run(arg, runs_dir)[0].path
