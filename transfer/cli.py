"""The ``transfer`` command: everything the web app does, from a terminal.

Each subcommand is a ``cmd_<name>(args) -> int`` function plus an ``add_<name>(subparsers)``
function that declares its arguments; ``COMMANDS`` lists them. With ``--json`` the last line
printed is one JSON object; without it, long work shows a progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys

from transfer.errors import TransferError


class UserError(TransferError):
    """A mistake the user can fix; printed as one sentence, never as a traceback."""


def print_json(obj) -> None:
    print(json.dumps(obj, default=str), flush=True)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


# --------------------------------------------------------------------------- backbones


def add_backbones(sub) -> None:
    p = sub.add_parser("backbones", help="list the backbone catalogue and weights status")
    p.add_argument("--search", help="also search timm's pretrained models for this text")
    p.add_argument("--limit", type=int, default=50, help="most timm matches to list (default 50)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_backbones(args) -> int:
    from transfer.backbones import list_backbones

    entries = list_backbones(args.search, timm_limit=args.limit)
    if args.json:
        print_json({"backbones": [e.to_dict() for e in entries]})
        return 0
    rows = [
        {
            "name": e.name,
            "source": e.source,
            "params": f"{e.params / 1e6:.1f}M" if e.params else "?",
            "top1": f"{e.imagenet_top1:.1f}" if e.imagenet_top1 else "?",
            "size": e.preprocessing.input_size,
            "speed": e.speed,
            "weights": e.status,
        }
        for e in entries
    ]
    print_table(rows, ["name", "source", "params", "top1", "size", "speed", "weights"])
    return 0


# --------------------------------------------------------------------------- dispatch

COMMANDS = {
    "backbones": (add_backbones, cmd_backbones),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transfer", description="Transfer learning for images, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run = COMMANDS[args.command]
    try:
        return run(args)
    except UserError as error:
        _report_error(args, str(error))
        return 2
    except TransferError as error:  # engine errors carry user-facing sentences
        _report_error(args, str(error))
        return 2


def _report_error(args, message: str) -> None:
    if getattr(args, "json", False):
        print_json({"error": message})
    else:
        print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
