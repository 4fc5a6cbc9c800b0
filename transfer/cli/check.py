"""``transfer check``: a data set's report (classes, split, sizes, duplicates, skipped files) and
whether it is ready to train."""

from __future__ import annotations

from transfer.cli.output import print_json, print_table


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
