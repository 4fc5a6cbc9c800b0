"""``transfer runs``, ``rename-run``, ``cancel`` and ``resume``: the runs of a runs folder (or of a
studio project), listed, named, stopped and continued."""

from __future__ import annotations

import os
import sys

from transfer.cli.arguments import add_runs_dir_argument, resolve_run
from transfer.cli.output import format_accuracy, named_summary, print_json, print_run_result, print_table
from transfer.cli.progress import follow_run


def _summary_row(summary: dict) -> dict:
    """One line of the ``transfer runs`` table."""
    epochs = summary.get("epochs")
    return {
        "name": summary.get("name") or "-",
        "id": summary["id"],
        "state": summary["state"] + (f" #{summary['queue_position']}" if summary.get("queue_position") else ""),
        "method": summary.get("method") or "-",
        "backbone": summary.get("backbone") or "-",
        "epoch": f"{summary.get('epoch') or 0}/{epochs if epochs is not None else '?'}",
        "best": format_accuracy(summary.get("best_val_accuracy")),
        "last": format_accuracy(summary.get("val_accuracy")),
        "seconds": "-" if summary.get("seconds") is None else f"{summary['seconds']:.0f}",
        "created": (summary.get("created") or "-").replace("T", " "),
    }


def add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list the training runs and their state")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_runs(args) -> int:
    from transfer.runtime.jobs import JobManager

    summaries = [named_summary(run) for run in JobManager(args.runs_dir).list()]
    if args.json:
        print_json({"runs_dir": os.path.abspath(args.runs_dir), "runs": summaries})
    elif not summaries:
        print(f"No runs in {args.runs_dir} yet; `transfer train DATA` starts one.")
    else:
        print_table([_summary_row(s) for s in summaries],
                    ["name", "id", "state", "method", "backbone", "epoch", "best", "last", "seconds", "created"])
    return 0


def add_rename_run(sub) -> None:
    p = sub.add_parser("rename-run", help="give a run a name people can read (its id stays the same)")
    p.add_argument("run", metavar="RUN", help="run id inside --runs-dir, or a run folder")
    p.add_argument("name", help="the new name, e.g. \"Lite0 on the May photos\"")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_rename_run(args) -> int:
    from transfer.models.run_names import rename_run

    run, _ = resolve_run(args.run, args.runs_dir)
    name = rename_run(run, args.name)
    if args.json:
        print_json({"id": run.id, "name": name, "run_dir": str(run.path)})
    else:
        print(f"Run {run.id} is now called {name!r}.")
    return 0


def add_cancel(sub) -> None:
    p = sub.add_parser("cancel", help="stop a queued or running run (it keeps its last finished epoch)")
    p.add_argument("run", metavar="RUN", help="run id (see `transfer runs`) or run folder")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_cancel(args) -> int:
    from transfer.runtime.jobs import JobManager

    run, runs_dir = resolve_run(args.run, args.runs_dir)
    before = run.state
    JobManager(runs_dir).cancel(run)
    summary = run.summary()
    if args.json:
        print_json({**summary, "previous_state": before})
    elif before == "running":
        print(f"Asked run {run.id} to stop; it ends after its current step and keeps its last finished epoch.")
    elif summary["state"] == "cancelled" and before != "cancelled":
        print(f"Run {run.id} cancelled.")
    else:
        print(f"Run {run.id} had already ended ({before}); nothing to cancel.")
    return 0


def add_resume(sub) -> None:
    p = sub.add_parser("resume", help="continue an interrupted, cancelled or failed run from its last finished epoch")
    p.add_argument("run", metavar="RUN", help="run id (see `transfer runs`) or run folder")
    add_runs_dir_argument(p)
    p.add_argument("--no-wait", action="store_true", help="queue it and return at once")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_resume(args) -> int:
    from transfer.runtime.jobs import JobManager

    run, runs_dir = resolve_run(args.run, args.runs_dir)
    manager = JobManager(runs_dir)
    manager.resume(run)
    if args.no_wait:
        if args.json:
            print_json(run.summary())
        else:
            print(f"Run {run.id} queued again; `transfer runs --runs-dir {runs_dir}` shows its progress.")
        return 0
    try:
        status = follow_run(manager, run, quiet=args.json)
    except KeyboardInterrupt:
        print(f"\nRun {run.id} keeps training in the background; `transfer cancel {run.id}` stops it.",
              file=sys.stderr)
        return 130
    print_run_result(run.summary(), args.json)
    return 0 if status["state"] == "finished" else 1
