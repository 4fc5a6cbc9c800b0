"""``transfer gc``: delete idle projects and empty folders, shrink the caches, drop stored
starting weights no run uses, collect expired demos."""

from __future__ import annotations

from pathlib import Path

from transfer.cli.output import print_json


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
