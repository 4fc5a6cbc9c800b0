"""``transfer lr-find``: a learning rate suggested by a range test (fastai's ``lr_find``)."""

from __future__ import annotations

from pathlib import Path

from transfer.cli.output import UserError, print_json


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
