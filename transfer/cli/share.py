"""``transfer share``: make, list or revoke demo links (one frozen model anyone with the link can
try in a browser)."""

from __future__ import annotations

import time
from pathlib import Path

from transfer.cli.arguments import add_runs_dir_argument, resolve_run
from transfer.cli.output import UserError, print_json, print_table


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
    """``--list``: every demo on this machine, with the tokens this command made."""
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
    """A moment as local date and time, or ``never``."""
    return "never" if timestamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
