"""``transfer suggest``: which unlabelled pictures to label first, with a finished run's guesses."""

from __future__ import annotations

import sys
from pathlib import Path

from transfer.cli.arguments import add_runs_dir_argument, run_folder
from transfer.cli.output import UserError, print_json, print_table
from transfer.cli.progress import PhaseBar


def add_suggest(sub) -> None:
    p = sub.add_parser("suggest", help="which unlabelled pictures to label first, with the run's guesses")
    p.add_argument("pool", metavar="POOL", help="folder (or .zip) of unlabelled pictures")
    p.add_argument("--run", default=None, metavar="RUN_DIR", help="a finished run: its guesses and what it covers")
    p.add_argument("--count", type=int, default=20, help="how many suggestions (default 20)")
    p.add_argument("--even-out", action="store_true",
                   help="when the run's classes are uneven, suggest first the pictures it guesses to be of the "
                        "classes with the fewest labels (off by default: it cost accuracy when measured)")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_suggest(args) -> int:
    from transfer.analysis.suggest import suggest

    if not Path(args.pool).exists():
        raise UserError(f"{args.pool} does not exist: give a folder (or .zip) of pictures without labels.")
    run_dir = None
    if args.run:
        run_dir = run_folder(args.run, args.runs_dir)
    bar = None if args.json else PhaseBar(sys.stderr)
    try:
        result = suggest(Path(args.pool), run_dir=run_dir, count=args.count, even_out=args.even_out,
                         progress=bar)
    finally:
        if bar is not None:
            bar.close()
    rows = [{"file": s.file, "guess": s.guess, "probability": s.probability, "unknown": s.unknown,
             "reason": s.reason} for s in result.suggestions]
    if args.json:
        print_json({"pool": result.pool, "run": result.run, "backbone": result.backbone, "pictures": result.pictures,
                    "labelled": result.labelled, "seconds": result.seconds, "evened": result.evened,
                    "suggestions": rows})
        return 0
    print(f"{result.pictures} unlabelled pictures, {result.labelled} labelled, {result.backbone} features "
          f"({result.features_cached} cached), {result.seconds:.1f} s. Label these first:")
    print_table([{"#": i + 1, **row, "probability": "" if row["probability"] is None else f"{row['probability']:.0%}",
                  "guess": row["guess"] or ""} for i, row in enumerate(rows)], ["#", "file", "guess", "probability", "reason"])
    return 0
