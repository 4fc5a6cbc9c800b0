"""``transfer audit``: likely label mistakes, near-duplicates and outliers of a data set, found from
its pictures' features."""

from __future__ import annotations

import sys
from pathlib import Path

from transfer.cli.output import UserError, print_json, print_table
from transfer.cli.progress import PhaseBar


def add_audit(sub) -> None:
    p = sub.add_parser("audit", help="find likely label mistakes, near-duplicates and outliers from features")
    p.add_argument("data", metavar="DATA", help="folder of class folders, folder with train/ and val/, or a .zip")
    p.add_argument("--backbone", default=None, help="catalogue name (default efficientnet_lite0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share when DATA has no val/ folder")
    p.add_argument("--top", type=int, default=20, help="rows shown per list without --json (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_audit(args) -> int:
    from transfer.analysis.audit import audit_dataset
    from transfer.data.dataset import load_dataset

    if not Path(args.data).exists():
        raise UserError(f"{args.data} does not exist: give a folder of class folders or a .zip of one.")
    dataset = load_dataset(Path(args.data).resolve(), val_fraction=args.val_fraction)
    bar = None if args.json else PhaseBar(sys.stderr)
    try:
        result = audit_dataset(dataset, backbone=args.backbone, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print_json({key: value for key, value in result.to_dict().items() if key != "map"})
        return 0
    top = max(1, args.top)
    print(f"{result.pictures} pictures, {len(result.classes)} classes, {result.folds}-fold heads on "
          f"{result.backbone} features ({result.features_cached} cached), {result.seconds:.1f} s.")
    for title, rows, columns in (
            ("Likely label mistakes", [vars(s) for s in result.suspects], ["score", "given", "suggested", "path"]),
            ("Near-duplicates", [vars(d) for d in result.near_duplicates], ["similarity", "kind", "a", "b"]),
            ("Outliers", [vars(o) for o in result.outliers], ["score", "given", "path"])):
        print(f"\n{title}: {len(rows)}" + (f" (first {top})" if len(rows) > top else ""))
        if rows:
            print_table(rows[:top], columns)
    return 0
