"""``transfer export``: a finished run as a bundle zip, ONNX, TorchScript or a static web page,
checked against the studio's own answers (int8 against float32)."""

from __future__ import annotations

import argparse

from transfer.cli.arguments import add_runs_dir_argument, run_folder
from transfer.cli.output import print_json


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a finished run as a bundle zip, ONNX or TorchScript, checked against it")
    p.add_argument("run", metavar="RUN_DIR", help="run folder (or run id inside --runs-dir)")
    p.add_argument("--format", required=True, choices=["bundle", "onnx", "torchscript", "web"],
                   help="bundle: zip with model.onnx, weights, model card and a torch-free predict.py; "
                        "web: a static web page that runs the model in the browser")
    p.add_argument("--output", metavar="PATH", help="file or folder to write (default: kept in RUN_DIR/exports/); "
                                                    "for web, a folder unless PATH ends in .zip")
    p.add_argument("--precision", choices=["float32", "int8"], default="float32",
                   help="int8: the smaller model (onnx, bundle, web), checked against float32 on the validation "
                        "pictures and refused with its figures when it answers differently")
    p.add_argument("--include-reference", action=argparse.BooleanOptionalAction, default=None,
                   help="carry the \"None of these\" reference (features of training pictures; whoever has the "
                        "file can test whether a photo was one of them); default: yes, except for web")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_export(args) -> int:
    from transfer.core.quota import human_size
    from transfer.serving.export import export_run

    run_dir = run_folder(args.run, args.runs_dir, marker="model.json")
    result = export_run(run_dir, args.format, args.output, precision=args.precision,
                        include_reference=args.include_reference)
    if args.json:
        print_json(result.to_dict())
    elif result.check:
        print(f"int8 {result.format} written to {result.path} ({human_size(result.bytes)}); "
              f"{result.int8_check().summary()}.")
    else:
        print(f"{result.format} written to {result.path} ({human_size(result.bytes)}); probabilities within "
              f"{result.max_abs_diff:.1e} of the studio's on {result.checked_on} {result.check_inputs}.")
    return 0
