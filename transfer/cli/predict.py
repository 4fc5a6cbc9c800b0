"""``transfer predict``: classify pictures (files, folders, zips) with a finished run; a table,
a CSV, or the JSON answer the web server's child processes also give."""

from __future__ import annotations

from transfer.cli.arguments import add_runs_dir_argument, run_folder
from transfer.cli.output import UserError, print_json, print_table


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify pictures with a finished run (files, folders or .zip archives)")
    p.add_argument("run", metavar="RUN_DIR", help="run folder (or run id inside --runs-dir)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="picture files, folders of pictures or .zip archives")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show per picture (default 5)")
    p.add_argument("--csv", metavar="FILE", help="also write the predictions as a CSV file")
    p.add_argument("--unknown-threshold", default="normal", metavar="X|relaxed|normal|strict|off",
                   help="novelty above which a picture is 'None of these': a number, a strictness (relaxed, normal, "
                        "strict keep about 99/95/90%% of pictures like the training ones; default normal) or off")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_predict(args) -> int:
    from transfer.runtime.child_jobs import predict_pictures, prediction_answer

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1.")
    run_dir = run_folder(args.run, args.runs_dir)
    result = predict_pictures(run_dir, args.images, args.top_k, args.csv, args.unknown_threshold)
    if args.json:
        print_json(prediction_answer(run_dir, args.top_k, result))
    else:
        _print_predictions(result, args.top_k)
    return 0 if result.rows else 1


def _print_predictions(result, top_k: int) -> None:
    """The predictions as a table, then the skipped files and why."""
    rows = [{"file": r["file"], "label": f"None of these (closest: {r['label']})" if r["unknown"] else r["label"],
             "probability": f"{r['probability']:.3f}", "novelty": "" if r["novelty"] is None else f"{r['novelty']:.3f}",
             "runners-up": ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"][1:top_k])}
            for r in result.rows]
    if rows:
        columns = ["file", "label", "probability"] + (["novelty"] if result.novelty else [])
        print_table(rows, columns + (["runners-up"] if top_k > 1 else []))
    if rows and not result.novelty:
        print(result.to_dict()["note"])
    if result.skipped:
        print()
        print(f"skipped ({len(result.skipped)}):")
        print_table([{"file": s["file"], "reason": s["reason"], "detail": (s.get("detail") or "")[:70]}
                     for s in result.skipped], ["file", "reason", "detail"])
    if not rows:
        print("No picture could be predicted; see the reasons above.")
