"""The ``transfer`` command: everything the web app does, from a terminal.

Each subcommand is a ``cmd_<name>(args) -> int`` function plus an ``add_<name>(subparsers)``
function that declares its arguments; ``COMMANDS`` lists them. With ``--json`` the last line
printed is one JSON object; without it, long work shows a progress bar.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from transfer.core.errors import TransferError


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
    from transfer.models.backbones import list_backbones

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


# --------------------------------------------------------------------------- runs, cancel, resume

DEFAULT_RUNS_DIR = "runs"
_EPOCH_FIELDS = (("loss", "loss {:.4f}"), ("accuracy", "acc {:.3f}"), ("val_loss", "val_loss {:.4f}"),
                 ("val_accuracy", "val_acc {:.3f}"), ("images_per_s", "{:.0f} img/s"),
                 ("elapsed", "{:.1f} s"))


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
    from pathlib import Path

    from transfer.core.runs import RunDir, find_run

    candidate = Path(arg)
    if ("/" in arg or os.sep in arg) and RunDir(candidate).exists():
        run = RunDir(candidate)
        return run, run.path.parent
    return find_run(runs_dir, arg), Path(runs_dir)


def follow_run(manager, run, quiet: bool = False) -> dict:
    """Wait for ``run`` to end, showing its progress on stderr unless ``quiet``; returns the
    final status. ``transfer train`` and ``transfer resume`` both use it. On Ctrl-C the run
    keeps training in the background and KeyboardInterrupt propagates."""
    show = None if quiet else _ProgressPrinter(sys.stderr)
    try:
        return manager.wait(run, on_event=show)
    finally:
        if show is not None:
            show.close()


class _ProgressPrinter:
    """Turns run events into a progress bar (on a terminal) and one line per epoch."""

    def __init__(self, stream):
        from transfer.cli.progress import ProgressBars

        self.bars = ProgressBars(stream)
        self.live = self.bars.live

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "step" and self.live:
            self._bar(event)
        elif kind == "epoch":
            self.bars.line(_epoch_line(event))
        elif kind in ("info", "warning") and event.get("message"):
            prefix = "warning: " if kind == "warning" else ""
            self.bars.line(prefix + str(event["message"]))

    def _bar(self, event: dict) -> None:
        details = {}
        if isinstance(event.get("loss"), (int, float)):
            details["loss"] = f"{event['loss']:.4f}"
        if isinstance(event.get("eta"), (int, float)):
            details["eta"] = f"{event['eta']:.0f} s"
        self.bars.show(f"epoch {event.get('epoch', '?')}", event.get("step") or 0, event.get("steps") or 0, **details)

    def close(self) -> None:
        self.bars.close()


def _epoch_line(event: dict) -> str:
    parts = [f"epoch {event.get('epoch', '?')}/{event.get('epochs', '?')}"]
    for key, fmt in _EPOCH_FIELDS:
        if isinstance(event.get(key), (int, float)):
            parts.append(fmt.format(event[key]))
    return "  ".join(parts)


def _format_accuracy(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def named_summary(run) -> dict:
    """A run's summary with its readable name (``transfer runs``, the result of ``train``)."""
    from transfer.models.run_names import run_name

    return {"name": run_name(run), **run.summary()}


def _summary_row(summary: dict) -> dict:
    epochs = summary.get("epochs")
    return {
        "name": summary.get("name") or "-",
        "id": summary["id"],
        "state": summary["state"] + (f" #{summary['queue_position']}" if summary.get("queue_position") else ""),
        "method": summary.get("method") or "-",
        "backbone": summary.get("backbone") or "-",
        "epoch": f"{summary.get('epoch') or 0}/{epochs if epochs is not None else '?'}",
        "best": _format_accuracy(summary.get("best_val_accuracy")),
        "last": _format_accuracy(summary.get("val_accuracy")),
        "seconds": "-" if summary.get("seconds") is None else f"{summary['seconds']:.0f}",
        "created": (summary.get("created") or "-").replace("T", " "),
    }


def print_run_result(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    named = f"{summary['name']!r} ({summary['id']})" if summary.get("name") else summary["id"]
    line = (f"run {named} {summary['state']}: epoch {summary.get('epoch') or 0}/{summary.get('epochs')}, "
            f"best val accuracy {_format_accuracy(summary.get('best_val_accuracy'))}, "
            f"last {_format_accuracy(summary.get('val_accuracy'))}")
    if summary.get("seconds") is not None:
        line += f", {summary['seconds']:.1f} s"
    print(line)
    if summary.get("message"):
        print(summary["message"])
    print(f"run folder: {summary['run_dir']}")


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


# --------------------------------------------------------------------------- check


def add_check(sub) -> None:
    p = sub.add_parser("check", help="check a data set (folder or .zip) and print its report")
    p.add_argument("data", help="a folder of class folders, a folder with train/ and val/, or a .zip of either")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class drawn for validation when no val/ folder is given (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation draw (default 0)")
    p.add_argument("--max-skipped", type=int, default=30, help="most skipped files to list (default 30; --json lists all)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def cmd_check(args) -> int:
    from transfer.data.dataset import check_dataset

    report = check_dataset(args.data, val_fraction=args.val_fraction, seed=args.seed)
    if args.json:
        print_json(report.to_dict())
    else:
        _print_check_report(report, args.max_skipped)
    return 0 if report.ok else 2


def _print_check_report(report, max_skipped: int) -> None:
    layout = {"split_folders": "train/ and validation folders", "class_folders": "class folders"}.get(report.layout, "?")
    split = "given by the folders" if report.split == "given" else f"drawn: {report.val_fraction:.0%} per class, seed {report.seed}"
    print(f"data:    {report.root or report.source}")
    if report.layout:
        print(f"layout:  {layout}; validation split {split}")
    if report.classes:
        rows = [{"class": name, "train": row["train"], "val": row["val"], "total": row["train"] + row["val"]} for name, row in report.counts.items()]
        rows.append({"class": "total", "train": sum(r["train"] for r in rows), "val": sum(r["val"] for r in rows), "total": report.total_images})
        print()
        print_table(rows, ["class", "train", "val", "total"])
    if report.sizes:
        z = report.sizes
        print()
        print(f"sizes:   {z['min_width']}x{z['min_height']} to {z['max_width']}x{z['max_height']}, median {z['median_width']}x{z['median_height']}")
        print("modes:   " + ", ".join(f"{mode} {count}" for mode, count in report.modes.items()))
        print("formats: " + ", ".join(f"{fmt} {count}" for fmt, count in report.formats.items()))
    if report.imbalance:
        b = report.imbalance
        print(f"balance: largest {b['largest']} ({b['largest_count']}), smallest {b['smallest']} ({b['smallest_count']}), ratio {b['ratio']}x")
    if report.duplicates:
        print()
        print(f"duplicates ({len(report.duplicates)} groups):")
        for group in report.duplicates[:max_skipped]:
            print(f"  {group.kind}: " + ", ".join(group.files))
    if report.skipped:
        print()
        print(f"skipped files ({len(report.skipped)}):")
        rows = [{"file": s.path, "reason": s.reason, "detail": s.detail[:70]} for s in report.skipped[:max_skipped]]
        print_table(rows, ["file", "reason", "detail"])
        if len(report.skipped) > max_skipped:
            print(f"... and {len(report.skipped) - max_skipped} more (--json lists all)")
    for title, lines in (("warnings", report.warnings), ("errors", report.errors)):
        if lines:
            print()
            print(f"{title}:")
            for line in lines:
                print(f"  - {line}")
    print()
    print("ready to train." if report.ok else "not ready: fix the errors above, then check again.")


# --------------------------------------------------------------------------- gc


def add_gc(sub) -> None:
    p = sub.add_parser("gc", help="remove empty project folders, shrink the caches (least recently used first)")
    p.add_argument("--max-idle-days", type=float, default=None,
                   help="also delete projects unused for longer than this (default $TRANSFER_GC_MAX_IDLE_DAYS; "
                        "unset: projects are kept until deleted)")
    p.add_argument("--max-cache-gb", type=float, default=None,
                   help="shrink TRANSFER_HOME/cache to this size (default $TRANSFER_GC_MAX_CACHE_GB or 20)")
    p.add_argument("--runs-dir", action="append", default=[], metavar="DIR",
                   help="also sweep this runs folder's store of starting weights (repeatable; "
                        "the browser sessions' are always swept)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_gc(args) -> int:
    from transfer.runtime.gc import collect

    result = collect(args.max_idle_days, args.max_cache_gb, dry_run=args.dry_run,
                     runs_dirs=[Path(folder) for folder in args.runs_dir])
    if args.json:
        print_json(result.to_dict())
        return 0
    verb = "would free" if result.dry_run else "freed"
    if result.max_idle_days is None:
        print("projects: kept until deleted (no idle limit set)")
    else:
        print(f"projects idle over {result.max_idle_days:g} days: {len(result.sessions_removed)} "
              f"{'to delete' if result.dry_run else 'deleted'}"
              + (f", {len(result.sessions_kept_running)} kept (a run is active)" if result.sessions_kept_running else ""))
    print(f"empty folders of visits that made nothing: {result.empty_folders_removed} "
          f"{'to delete' if result.dry_run else 'deleted'}")
    print(f"caches: {result.cache_bytes_before / 1e9:.2f} GB -> {result.cache_bytes_after / 1e9:.2f} GB "
          f"(limit {result.max_cache_bytes / 1e9:g} GB), {len(result.cache_entries_removed)} entries "
          f"{'to delete' if result.dry_run else 'deleted'}, least recently used first")
    print(f"stored starting weights no run uses: {len(result.weights_removed)} "
          f"{'to delete' if result.dry_run else 'deleted'}")
    print(f"expired demos whose model files and kept pictures were deleted: {len(result.demos_collected)} "
          f"{'to collect' if result.dry_run else 'collected'}")
    print(f"{verb} {result.bytes_freed / 1e6:.1f} MB in all; live demos and active runs are never touched.")
    return 0


# --------------------------------------------------------------------------- predict


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
    from pathlib import Path

    from transfer.serving.predict import predict_paths

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1.")
    run_path = Path(args.run)
    run_dir = run_path if (run_path / "config.json").is_file() else resolve_run(args.run, args.runs_dir)[0].path
    result = predict_paths(run_dir, args.images, top_k=args.top_k, unknown_threshold=args.unknown_threshold)
    if args.csv:
        Path(args.csv).write_bytes(result.csv_bytes())
    if args.json:
        print_json({"run_dir": str(Path(run_dir).resolve()), "top_k": args.top_k, **result.to_dict()})
    else:
        _print_predictions(result, args.top_k)
    return 0 if result.rows else 1


def _print_predictions(result, top_k: int) -> None:
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


# --------------------------------------------------------------------------- export


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
    from pathlib import Path

    from transfer.serving.export import export_run
    from transfer.core.quota import human_size

    run_path = Path(args.run)
    run_dir = run_path if (run_path / "model.json").is_file() else resolve_run(args.run, args.runs_dir)[0].path
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


# --------------------------------------------------------------------------- train


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on a folder or zip of labelled pictures")
    p.add_argument("data", metavar="DATA", help="folder of class folders, folder with train/ and val/, or a .zip")
    p.add_argument("--backbone", default=None, help="catalogue name (default efficientnet_lite0; see `transfer backbones`)")
    p.add_argument("--method", default="features", choices=["features", "finetune", "scratch"],
                   help="features: train a new head on frozen features (fast); finetune: adapt the whole "
                        "network; scratch: same network from random weights")
    p.add_argument("--epochs", type=int, help="passes over the training pictures (default: the method's)")
    p.add_argument("--batch-size", type=int, help="pictures per step (default: the method's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the method's)")
    p.add_argument("--image-size", type=int, help="training resolution in pixels (default: the backbone's)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (default): bfloat16 autocast where the GPU or CPU computes it natively")
    add_runs_dir_argument(p)
    p.add_argument("--augmentation", choices=["none", "light", "strong"], help="augmentation preset")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], help="default adamw")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], help="learning-rate schedule")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--patience", type=int, dest="early_stopping_patience",
                   help="stop after this many epochs without a lower validation loss")
    p.add_argument("--train-blocks", type=int, help="finetune: how many of the last backbone blocks learn")
    p.add_argument("--head-only-epochs", type=int, help="finetune: epochs of head-only training first")
    p.add_argument("--feature-views", type=int, help="features: centre crop + augmented views per training picture")
    p.add_argument("--no-probe", dest="probe_init", action="store_const", const=False,
                   help="finetune: start from a random head instead of one trained on frozen features")
    p.add_argument("--dropout", type=float, help="dropout before the new head")
    p.add_argument("--hidden", type=int, help="width of a hidden layer in the new head")
    p.add_argument("--val-fraction", type=float, help="validation share when DATA has no val/ folder (default 0.2)")
    p.add_argument("--weights", metavar="FILE|RUN_DIR",
                   help="start the backbone from these weights (.safetensors, .pt, .pth) or from a finished "
                        "run of the same architecture, instead of the catalogue's")
    p.add_argument("--no-wait", action="store_true", help="queue the run and return at once")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")
    add_distributed_arguments(p)


def add_distributed_arguments(parser) -> None:
    """torchrun's settings for training on several GPUs or machines (see transfer.runtime.launch)."""
    group = parser.add_argument_group("several GPUs or machines (through torchrun)")
    group.add_argument("--nproc-per-node", type=int, metavar="N",
                       help="training processes on this machine: one per GPU, or CPU processes (default 1)")
    group.add_argument("--nnodes", type=int, metavar="M", help="machines training together (default 1)")
    group.add_argument("--node-rank", type=int, metavar="R", help="this machine's place, 0 to M-1 (0: the master)")
    group.add_argument("--master-addr", metavar="HOST", help="host name or address of machine 0")
    group.add_argument("--master-port", type=int, metavar="P",
                       help="free port on machine 0, the same on every machine (default: any free port, one machine only)")


_DISTRIBUTED_SETTINGS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")
_TRAIN_SETTINGS = ("backbone", "epochs", "batch_size", "lr", "image_size", "seed", "device", "augmentation",
                   "optimizer", "schedule", "label_smoothing", "weight_decay", "early_stopping_patience",
                   "train_blocks", "head_only_epochs", "feature_views", "dropout", "hidden", "val_fraction",
                   "probe_init", "precision") + _DISTRIBUTED_SETTINGS


def cmd_train(args) -> int:
    import time
    from pathlib import Path

    from transfer.training.config import TrainConfig
    from transfer.data.dataset import load_dataset
    from transfer.runtime.jobs import JobManager

    started = time.time()
    source = Path(args.data)
    if not source.exists():
        raise UserError(f"{args.data} does not exist: give a folder of class folders or a .zip of one.")
    settings = {name: getattr(args, name) for name in _TRAIN_SETTINGS}
    # Checked here, so data problems are reported at once and never reach a worker. This process
    # never imports torch (the method defaults come from transfer.models.catalogue): only the worker does.
    dataset = load_dataset(source.resolve(), val_fraction=settings["val_fraction"] or 0.2)
    if args.weights:
        settings.update(initial_weights_setting(args, len(dataset.classes)))
    config = TrainConfig.for_method(args.method, dataset=dataset.to_dict(), **settings)
    manager = JobManager(args.runs_dir)
    run = manager.submit(config.to_dict())
    if args.no_wait:
        summary = run.summary()
        if args.json:
            print_json(summary)
        else:
            print(f"Run {run.id} queued; `transfer runs --runs-dir {args.runs_dir}` shows its progress.")
        return 0
    show = None if args.json else _TrainProgress(sys.stderr)
    try:
        # A short poll: a features run ends within seconds, and each poll only reads a small file.
        status = manager.wait(run, on_event=show, poll=0.05)
    except KeyboardInterrupt:
        print(f"\nRun {run.id} keeps training in the background; `transfer cancel {run.id}` stops it.",
              file=sys.stderr)
        return 130
    finally:
        if show is not None:
            show.close()
    result = train_result(run, status, time.time() - started)
    if args.json:
        print_json(result)
    else:
        print_run_result(named_summary(run), False)
    return 0 if status["state"] == "finished" else 1


def initial_weights_setting(args, num_classes: int) -> dict:
    """``--weights``: the backbone (a chained run fixes it) and the stored, checked weights file.

    A file that cannot be read safely or does not fit the architecture stops here, before a run
    is created; the full report is the run's first event."""
    from pathlib import Path

    from transfer.training.config import DEFAULT_BACKBONE
    from transfer.models.weights import check_weights, chosen_backbone, resolve_source, store_file

    if args.method == "scratch":
        raise UserError("Training from scratch starts from random weights: choose --method features or finetune "
                        "to start from your weights, or leave out --weights.")
    path, run_backbone, run_id = resolve_source(args.weights)
    backbone = chosen_backbone(args.backbone, run_backbone, run_id) or DEFAULT_BACKBONE
    spec = store_file(path, Path(args.runs_dir), name=run_id and f"{run_id}/{path.name}",
                      origin="run" if run_id else "file", run=run_id)
    check_weights(spec.path, backbone, num_classes, dropout=args.dropout or 0.0, hidden=args.hidden,
                  name=spec.name)
    return {"backbone": backbone, "initial_weights": spec.to_dict()}


# Validation counts of the kept weights, and the cross-validation over all labelled pictures
# (feature transfer on a small data set): in status.json at the end of a run.
OUTCOME_KEYS = ("val_correct", "val_total", "cv_accuracy", "cv_correct", "cv_total", "cv_folds")


def train_result(run, status: dict, seconds: float) -> dict:
    """The JSON summary of a finished ``transfer train``."""
    from transfer.models.run_names import run_name
    from transfer.models.weights import record

    config = run.config
    return {
        "run_dir": str(run.path),
        "run_id": run.id,
        "name": run_name(run),
        "state": status["state"],
        "message": status.get("message"),
        "method": config.get("method"),
        "backbone": config.get("backbone"),
        "epochs": status.get("epoch") or 0,
        "epochs_planned": config.get("epochs"),
        "val_accuracy": status.get("val_accuracy"),
        "best_val_accuracy": status.get("best_val_accuracy"),
        "best_epoch": status.get("best_epoch"),
        **{key: status[key] for key in OUTCOME_KEYS if key in status},
        "world_size": config.get("world_size", 1),
        "initial_weights": record(config["initial_weights"]) if config.get("initial_weights") else None,
        "seconds": round(seconds, 2),
        "train_seconds": run.summary().get("seconds"),
    }


def add_lr_find(sub) -> None:
    p = sub.add_parser("lr-find", help="suggest a learning rate with a range test (fastai's lr_find)")
    p.add_argument("data", metavar="DATA", help="folder of class folders, folder with train/ and val/, or a .zip")
    p.add_argument("--backbone", default=None, help="catalogue name (default efficientnet_lite0)")
    p.add_argument("--method", default="features", choices=["features", "finetune", "scratch"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--steps", type=int, default=100, help="steps of the range test (default 100)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_lr_find(args) -> int:
    from pathlib import Path

    from transfer.training.config import TrainConfig
    from transfer.data.dataset import load_dataset
    from transfer.training.lr_find import find_learning_rate

    if not Path(args.data).exists():
        raise UserError(f"{args.data} does not exist: give a folder of class folders or a .zip of one.")
    dataset = load_dataset(Path(args.data).resolve())
    config = TrainConfig.for_method(args.method, dataset=dataset.to_dict(), backbone=args.backbone,
                                    batch_size=args.batch_size, image_size=args.image_size, device=args.device)
    result = find_learning_rate(config, num_steps=args.steps)
    if args.json:
        print_json({"suggestion": result.suggestion, "min_loss_lr": result.min_loss_lr, "method": config.method,
                    "backbone": config.backbone, "lrs": result.lrs, "losses": result.losses})
    else:
        print(f"Suggested learning rate: {result.suggestion:.2e} (lowest loss at {result.min_loss_lr:.2e}); "
              f"train with --lr {result.suggestion:.1e}")
    return 0


def add_weights(sub) -> None:
    p = sub.add_parser("weights", help="check a weights file (or a finished run) against a backbone before training")
    p.add_argument("weights", metavar="FILE|RUN_DIR", help=".safetensors, .pt or .pth file, or a finished run's folder")
    p.add_argument("--backbone", default=None, help="catalogue name (default: the run's, else efficientnet_lite0)")
    p.add_argument("--classes", type=int, default=2, help="classes of the data set to train on (default 2)")
    p.add_argument("--dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_weights(args) -> int:
    from transfer.training.config import DEFAULT_BACKBONE
    from transfer.models.weights import check_weights, chosen_backbone, file_sha256, resolve_source

    if not 1 <= args.classes <= 100_000:
        raise UserError("--classes must be a whole number from 1 to 100000.")
    path, run_backbone, run_id = resolve_source(args.weights)
    backbone = chosen_backbone(args.backbone, run_backbone, run_id) or DEFAULT_BACKBONE
    report = check_weights(path, backbone, args.classes, dropout=args.dropout, hidden=args.hidden)
    if args.json:
        print_json({"file": str(path), "sha256": file_sha256(path), "backbone": backbone, "classes": args.classes,
                    "report": report.to_dict()})
    else:
        print(f"{path.name} into {backbone} with a head for {args.classes} classes:")
        print(report.describe())
    return 0


class _TrainProgress(_ProgressPrinter):
    """The run's progress printer, plus a bar while pictures are decoded or features computed."""

    _PHASES = {"features": "computing features", "decode": "decoding pictures"}

    def __call__(self, event: dict) -> None:
        if event.get("type") == "progress" and self.live:
            details = {"eta": f"{event['eta']:.0f} s"} if isinstance(event.get("eta"), (int, float)) else {}
            self.bars.show(self._PHASES.get(event.get("phase"), str(event.get("phase"))), event.get("done") or 0,
                           event.get("total") or 0, **details)
            return
        super().__call__(event)


# --------------------------------------------------------------------------- share


def add_share(sub) -> None:
    p = sub.add_parser("share", help="make, list or revoke demo links: one frozen model anyone with the link can try")
    p.add_argument("run", metavar="RUN_DIR", nargs="?", help="the finished run to share (folder or run id)")
    p.add_argument("--title", default="", help="shown at the top of the demo page")
    p.add_argument("--description", default="", help="a sentence or two under the title")
    p.add_argument("--expires", default="7d", help="90m, 1h, 1d, 7d, 30d ... or never (default 7d)")
    p.add_argument("--allow-download", action="store_true", help="let visitors download the model bundle")
    p.add_argument("--strictness", choices=("relaxed", "normal", "strict"), default="normal",
                   help="when the demo answers 'None of these' (keeps about 99/95/90%% of pictures like the "
                        "training ones; default normal)")
    p.add_argument("--include-reference", action="store_true",
                   help="send the 'None of these' reference to visitors' devices (live camera, bundle); without "
                        "it they answer classes only and 'None of these' is judged on this server")
    p.add_argument("--list", action="store_true", help="list the demos on this machine")
    p.add_argument("--revoke", metavar="TOKEN", help="end a demo now (its token, or its id from --list)")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_share(args) -> int:
    from transfer.serving import share

    store = share.DemoStore()
    if sum([bool(args.run), args.list, bool(args.revoke)]) != 1:
        raise UserError("Give a run to share, or --list, or --revoke TOKEN (one of the three).")
    if args.list:
        return _list_demos(store, args.json)
    if args.revoke:
        demo = store.revoke(args.revoke)
        if args.json:
            print_json({"revoked": demo.id, "title": demo.title})
        else:
            print(f"demo {demo.id} ({demo.title}) is revoked: its link no longer works.")
        return 0
    run, _ = resolve_run(args.run, args.runs_dir)
    # A project's demo links are recorded with it, so deleting the project revokes them.
    owner = Path(args.runs_dir).parent / share.OWNER_FILE if args.project else share.command_line_record()
    token, demo = store.create(run.path, title=args.title, description=args.description, expires=args.expires,
                               allow_download=args.allow_download, owner_record=owner,
                               strictness=args.strictness, include_reference=args.include_reference)
    link = share.demo_link(share.public_base_url(), token)
    if args.json:
        print_json({"token": token, "link": link, **demo.to_dict(store.clock())})
    else:
        print(link)
        print(f"demo {demo.id}: '{demo.title}', expires {_when(demo.expires_at)}; "
              "set TRANSFER_PUBLIC_URL to the address visitors use if it is not this one.")
    return 0


def _list_demos(store, as_json: bool) -> int:
    from transfer.serving import share

    now = store.clock()
    tokens = {share.token_digest(t): t for t in share.remembered_tokens(share.command_line_record())}
    demos = [{**demo.to_dict(now), "token": tokens.get(demo.digest)} for demo in store.list()]
    if as_json:
        print_json({"demos": demos})
        return 0
    print_table([{**d, "title": d["title"][:40], "created": _when(d["created_at"]), "expires": _when(d["expires_at"]),
                  "pictures": d["pictures_tried"], "token": d["token"] or "(made in the web app)"} for d in demos],
                ["id", "state", "title", "run_id", "created", "expires", "pictures", "token"])
    return 0


def _when(timestamp) -> str:
    import time

    return "never" if timestamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


# --------------------------------------------------------------------------- audit


def add_audit(sub) -> None:
    p = sub.add_parser("audit", help="find likely label mistakes, near-duplicates and outliers from features")
    p.add_argument("data", metavar="DATA", help="folder of class folders, folder with train/ and val/, or a .zip")
    p.add_argument("--backbone", default=None, help="catalogue name (default efficientnet_lite0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share when DATA has no val/ folder")
    p.add_argument("--top", type=int, default=20, help="rows shown per list without --json (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_audit(args) -> int:
    from pathlib import Path

    from transfer.analysis.audit import audit_dataset
    from transfer.data.dataset import load_dataset

    if not Path(args.data).exists():
        raise UserError(f"{args.data} does not exist: give a folder of class folders or a .zip of one.")
    dataset = load_dataset(Path(args.data).resolve(), val_fraction=args.val_fraction)
    bar = None if args.json else _PhaseBar(sys.stderr)
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


class _PhaseBar:
    """A progress bar on stderr for work reported as ``(phase, done, total)``."""

    _TITLES = {"features": "computing features", "heads": "cross-validating", "map": "drawing the map"}

    def __init__(self, stream):
        from transfer.cli.progress import ProgressBars

        self.bars = ProgressBars(stream)

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.bars.show(self._TITLES.get(phase, phase), done, total)

    def close(self) -> None:
        self.bars.close()


# --------------------------------------------------------------------------- studio


def add_studio(sub) -> None:
    p = sub.add_parser("studio", help="serve the web app (this computer only unless TRANSFER_PASSWORD is set)")
    p.add_argument("--address", default=None,
                   help="address to listen on (default $TRANSFER_HOST or 127.0.0.1; others need TRANSFER_PASSWORD)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8501)")


def cmd_studio(args) -> int:
    from transfer.cli.studio import serve

    serve(args.address, args.port)  # returns only when the server could not be started
    return 1


# --------------------------------------------------------------------------- suggest


def add_suggest(sub) -> None:
    p = sub.add_parser("suggest", help="which unlabelled pictures to label first, with the run's guesses")
    p.add_argument("pool", metavar="POOL", help="folder (or .zip) of unlabelled pictures")
    p.add_argument("--run", default=None, metavar="RUN_DIR", help="a finished run: its guesses and what it covers")
    p.add_argument("--count", type=int, default=20, help="how many suggestions (default 20)")
    add_runs_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def cmd_suggest(args) -> int:
    from pathlib import Path

    from transfer.analysis.suggest import suggest

    if not Path(args.pool).exists():
        raise UserError(f"{args.pool} does not exist: give a folder (or .zip) of pictures without labels.")
    run_dir = None
    if args.run:
        run_dir = Path(args.run) if (Path(args.run) / "config.json").is_file() else \
            resolve_run(args.run, args.runs_dir)[0].path
    bar = None if args.json else _PhaseBar(sys.stderr)
    try:
        result = suggest(Path(args.pool), run_dir=run_dir, count=args.count, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    rows = [{"file": s.file, "guess": s.guess, "probability": s.probability, "unknown": s.unknown,
             "reason": s.reason} for s in result.suggestions]
    if args.json:
        print_json({"pool": result.pool, "run": result.run, "backbone": result.backbone, "pictures": result.pictures,
                    "labelled": result.labelled, "seconds": result.seconds, "suggestions": rows})
        return 0
    print(f"{result.pictures} unlabelled pictures, {result.labelled} labelled, {result.backbone} features "
          f"({result.features_cached} cached), {result.seconds:.1f} s. Label these first:")
    print_table([{"#": i + 1, **row, "probability": "" if row["probability"] is None else f"{row['probability']:.0%}",
                  "guess": row["guess"] or ""} for i, row in enumerate(rows)], ["#", "file", "guess", "probability", "reason"])
    return 0


# --------------------------------------------------------------------------- projects


def add_project(sub) -> None:
    p = sub.add_parser("project", help="list, save as a file, open, rename or delete the studio's projects")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every project of this studio (TRANSFER_HOME)")
    save = actions.add_parser("save", help="save a project as one file (data, corrections, settings, finished runs)")
    save.add_argument("name", metavar="NAME", help="the project's name or id")
    save.add_argument("--output", help="the file to write (default ./NAME.transfer.zip)")
    opening = actions.add_parser("open", help="bring a project file in as a new project")
    opening.add_argument("file", metavar="FILE")
    rename = actions.add_parser("rename", help="give a project a new name")
    rename.add_argument("name", metavar="NAME", help="the project's name or id")
    rename.add_argument("new_name", metavar="NEW_NAME")
    delete = actions.add_parser("delete", help="delete a project with everything in it (and revoke its demo links)")
    delete.add_argument("name", metavar="NAME", help="the project's name or id")
    delete.add_argument("--yes", action="store_true", help="delete without asking")
    for action in (listing, save, opening, rename, delete):
        action.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_project(args) -> int:
    from transfer.runtime import projects

    if args.action == "list":
        return _project_list(args)
    if args.action == "open":
        return _project_open(args)
    project = projects.find_project(args.name)
    if args.action == "save":
        return _project_save(args, project)
    if args.action == "rename":
        renamed = projects.rename_project(project.id, args.new_name)
        _say(args, {"id": renamed.id, "name": renamed.name}, f"Project {project.name!r} is now called {renamed.name!r}.")
        return 0
    if not args.yes and not _confirmed_on_terminal(f"Delete the project {project.name!r} with everything in it? [y/N] "):
        raise UserError(f"The project {project.name!r} was not deleted; add --yes to delete it without asking.")
    freed = projects.delete_project(project.id)
    _say(args, {"id": project.id, "name": project.name, "bytes_freed": freed},
         f"Deleted the project {project.name!r} ({freed / 1e6:.1f} MB freed).")
    return 0


def _say(args, answer: dict, sentence: str) -> None:
    if args.json:
        print_json(answer)
    else:
        print(sentence)


def _confirmed_on_terminal(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


def _project_list(args) -> int:
    from transfer.runtime import projects

    summaries = [projects.summarise(project).to_dict() for project in projects.list_projects()]
    if args.json:
        print_json({"projects": summaries})
    elif not summaries:
        print("No projects yet; the web app (`transfer studio`) starts one, `transfer project open FILE` brings one in.")
    else:
        print_table([{"name": s["name"], "id": s["id"][:8] + "…", "classes": s["classes"], "pictures": s["pictures"],
                      "runs": s["runs"], "best": _format_accuracy(s["best_accuracy"]),
                      "last opened": time.strftime("%Y-%m-%d %H:%M", time.localtime(s["last_opened"]))}
                     for s in summaries], ["name", "id", "classes", "pictures", "runs", "best", "last opened"])
    return 0


def _project_save(args, project) -> int:
    from transfer.runtime.project_files import SUFFIX, save_project

    stem = "-".join("".join(ch if ch.isalnum() else " " for ch in project.name).split())[:60] or "project"
    saved = save_project(project.id, args.output or f"{stem}{SUFFIX}")
    _say(args, {"id": project.id, "name": project.name, "path": str(saved.path.resolve()), "bytes": saved.bytes,
                "parts": saved.parts, "runs": saved.runs, "seconds": round(saved.seconds, 3)},
         f"Saved {project.name!r} ({saved.runs} finished run(s), {saved.bytes / 1e6:.1f} MB) to {saved.path}.")
    return 0


def _project_open(args) -> int:
    from transfer.runtime.project_files import open_project_file

    opened = open_project_file(args.file)
    project = opened.project
    _say(args, {"id": project.id, "name": project.name, "runs_dir": str(project.runs_dir), "bytes": opened.bytes,
                "parts": opened.parts, "runs": opened.runs, "seconds": round(opened.seconds, 3)},
         f"Opened {project.name!r} as a new project ({opened.runs} finished run(s)); "
         f"`transfer runs --project {project.id}` lists its runs.")
    return 0


# --------------------------------------------------------------------------- dispatch

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
        use_project_runs(args)
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
