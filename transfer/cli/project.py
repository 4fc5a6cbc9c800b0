"""``transfer project``: list, save as one file, open, rename or delete the studio's projects."""

from __future__ import annotations

import sys
import time

from transfer.cli.output import UserError, format_accuracy, print_json, print_table


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
    """``answer`` with ``--json``, else ``sentence``."""
    if args.json:
        print_json(answer)
    else:
        print(sentence)


def _confirmed_on_terminal(question: str) -> bool:
    """The person at the terminal answered yes (never, where no one is there to ask)."""
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
                      "runs": s["runs"], "best": format_accuracy(s["best_accuracy"]),
                      "last opened": time.strftime("%Y-%m-%d %H:%M", time.localtime(s["last_opened"]))}
                     for s in summaries], ["name", "id", "classes", "pictures", "runs", "best", "last opened"])
    return 0


def _project_save(args, project) -> int:
    from transfer.runtime.child_jobs import saved_project_answer
    from transfer.runtime.project_files import SUFFIX, save_project

    stem = "-".join("".join(ch if ch.isalnum() else " " for ch in project.name).split())[:60] or "project"
    saved = save_project(project.id, args.output or f"{stem}{SUFFIX}")
    _say(args, saved_project_answer(project, saved),
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
