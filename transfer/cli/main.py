"""The ``transfer`` command: everything the web app does, from a terminal.

Each subcommand has its own module in this folder, with an ``add_<name>(subparsers)`` function
that declares its arguments and a ``cmd_<name>(args) -> int`` function that runs it (its exit
status); ``COMMANDS`` lists them. With ``--json`` the last line printed is one JSON object;
without it, long work shows a progress bar. A mistake the user can fix, and any refusal of the
engine, ends with its sentence and exit status 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import sys

from transfer.cli.arguments import use_project_runs
from transfer.cli.audit import add_audit, cmd_audit
from transfer.cli.backbones import add_backbones, cmd_backbones
from transfer.cli.check import add_check, cmd_check
from transfer.cli.cluster import add_cluster, cmd_cluster
from transfer.cli.export import add_export, cmd_export
from transfer.cli.gc import add_gc, cmd_gc
from transfer.cli.lr_find import add_lr_find, cmd_lr_find
from transfer.cli.output import report_error
from transfer.cli.predict import add_predict, cmd_predict
from transfer.cli.project import add_project, cmd_project
from transfer.cli.runs import (add_cancel, add_rename_run, add_resume, add_runs, cmd_cancel, cmd_rename_run,
                               cmd_resume, cmd_runs)
from transfer.cli.share import add_share, cmd_share
from transfer.cli.studio import add_studio, cmd_studio
from transfer.cli.suggest import add_suggest, cmd_suggest
from transfer.cli.train import add_train, cmd_train
from transfer.cli.weights import add_weights, cmd_weights
from transfer.core.errors import TransferError

COMMANDS = {
    "backbones": (add_backbones, cmd_backbones),
    "train": (add_train, cmd_train),
    "lr-find": (add_lr_find, cmd_lr_find),
    "weights": (add_weights, cmd_weights),
    "check": (add_check, cmd_check),
    "runs": (add_runs, cmd_runs),
    "rename-run": (add_rename_run, cmd_rename_run),
    "cancel": (add_cancel, cmd_cancel),
    "resume": (add_resume, cmd_resume),
    "predict": (add_predict, cmd_predict),
    "gc": (add_gc, cmd_gc),
    "export": (add_export, cmd_export),
    "share": (add_share, cmd_share),
    "audit": (add_audit, cmd_audit),
    "studio": (add_studio, cmd_studio),
    "suggest": (add_suggest, cmd_suggest),
    "project": (add_project, cmd_project),
    "cluster": (add_cluster, cmd_cluster),
}


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: one subcommand per entry of ``COMMANDS``, in its order."""
    parser = argparse.ArgumentParser(prog="transfer", description="Transfer learning for images, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``transfer ARGUMENTS`` (``argv``, else this process's) and return its exit status."""
    args = build_parser().parse_args(argv)
    _, run = COMMANDS[args.command]
    try:
        use_project_runs(args)
        return run(args)
    except TransferError as error:  # UserError and the engine's errors carry user-facing sentences
        report_error(args, str(error))
        return 2


if __name__ == "__main__":
    sys.exit(main())
