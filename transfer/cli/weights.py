"""``transfer weights``: check a weights file (or a finished run's) against a backbone before
training from it: what loads, what is missing, what does not fit."""

from __future__ import annotations

import argparse

from transfer.cli.output import UserError, print_json


def add_weights(sub) -> None:
    p = sub.add_parser("weights", help="check a weights file (or a finished run) against a backbone before training")
    p.add_argument("weights", metavar="FILE|RUN_DIR", help=".safetensors, .pt or .pth file, or a finished run's folder")
    p.add_argument("--backbone", default=None, help="catalogue name (default: the run's, else efficientnet_lite0)")
    p.add_argument("--classes", type=int, default=2, help="classes of the data set to train on (default 2)")
    p.add_argument("--dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_weights(args) -> int:
    from transfer.runtime.child_jobs import check_weights_file, weights_answer

    if not 1 <= args.classes <= 100_000:
        raise UserError("--classes must be a whole number from 1 to 100000.")
    path, backbone, report = check_weights_file(args.weights, args.backbone, args.classes, args.dropout, args.hidden)
    if args.json:
        print_json(weights_answer(path, backbone, args.classes, report))
    else:
        print(f"{path.name} into {backbone} with a head for {args.classes} classes:")
        print(report.describe())
    return 0
