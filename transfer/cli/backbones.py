"""``transfer backbones``: the backbone catalogue, whether each one's weights are here, and a
search of timm's pretrained models."""

from __future__ import annotations

from transfer.cli.output import print_json, print_table


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
