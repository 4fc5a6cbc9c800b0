"""What every subcommand prints the same way: JSON answers, tables, a run's result, errors.

With ``--json`` the last line a command prints is one JSON object (its answer, or
``{"error": sentence}``); without it, tables and sentences for a person.
"""

from __future__ import annotations

import json
import sys

from transfer.core.errors import TransferError


class UserError(TransferError):
    """A mistake the user can fix; printed as one sentence, never as a traceback."""


def print_json(obj) -> None:
    """``obj`` as one JSON line: with ``--json``, the last line a command prints is its answer."""
    print(json.dumps(obj, default=str), flush=True)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """``rows`` under a header of ``columns``, each column as wide as its widest cell."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def format_accuracy(value) -> str:
    """An accuracy with three decimals, or ``-`` where there is none yet."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def named_summary(run) -> dict:
    """A run's summary with its readable name (``transfer runs``, the result of ``train``)."""
    from transfer.models.run_names import run_name

    return {"name": run_name(run), **run.summary()}


def print_run_result(summary: dict, as_json: bool) -> None:
    """How a run ended (``transfer train``, ``transfer resume``): one JSON object, or its lines."""
    if as_json:
        print_json(summary)
        return
    named = f"{summary['name']!r} ({summary['id']})" if summary.get("name") else summary["id"]
    line = (f"run {named} {summary['state']}: epoch {summary.get('epoch') or 0}/{summary.get('epochs')}, "
            f"best val accuracy {format_accuracy(summary.get('best_val_accuracy'))}, "
            f"last {format_accuracy(summary.get('val_accuracy'))}")
    if summary.get("seconds") is not None:
        line += f", {summary['seconds']:.1f} s"
    print(line)
    if summary.get("message"):
        print(summary["message"])
    print(f"run folder: {summary['run_dir']}")


def report_error(args, message: str) -> None:
    """An error as ``{"error": sentence}`` with ``--json``, else as one line on stderr."""
    if getattr(args, "json", False):
        print_json({"error": message})
    else:
        print(f"error: {message}", file=sys.stderr)
