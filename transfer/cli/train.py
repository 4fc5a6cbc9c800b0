"""``transfer train``: queue a training run on a data set and follow it to its end (or return at
once with ``--no-wait``); several GPUs or machines through torchrun.

The data set is checked here, so data problems are reported at once and never reach a worker;
this process never imports torch: only the worker does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transfer.cli.arguments import add_runs_dir_argument
from transfer.cli.output import UserError, named_summary, print_json, print_run_result
from transfer.cli.progress import RunProgress


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
    from transfer.data.dataset import load_dataset
    from transfer.training.config import TrainConfig
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
    show = None if args.json else TrainProgress(sys.stderr)
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
    from transfer.models.weights import check_weights, chosen_backbone, resolve_source, store_file
    from transfer.training.config import DEFAULT_BACKBONE

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


class TrainProgress(RunProgress):
    """The run's progress printer, plus a bar while pictures are decoded or features computed."""

    _PHASES = {"features": "computing features", "decode": "decoding pictures"}

    def __call__(self, event: dict) -> None:
        if event.get("type") == "progress" and self.live:
            details = {"eta": f"{event['eta']:.0f} s"} if isinstance(event.get("eta"), (int, float)) else {}
            self.bars.show(self._PHASES.get(event.get("phase"), str(event.get("phase"))), event.get("done") or 0,
                           event.get("total") or 0, **details)
            return
        super().__call__(event)
