"""``transfer cluster``: where the studio's jobs run (this machine's queue or a Ray cluster), the
machines that run them with their CPUs, GPUs and memory, and the studio's jobs with their states."""

from __future__ import annotations

import os

from transfer.cli.output import UserError, print_json, print_table

NODE_COLUMNS = ["node", "alive", "cpus", "gpus", "memory"]
JOB_COLUMNS = ["run_id", "project", "method", "job", "state", "node", "waiting_for"]


def add_cluster(sub) -> None:
    p = sub.add_parser("cluster", help="the machines that run the studio's jobs, and those jobs with their states")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_cluster(args) -> int:
    from transfer.runtime.backends import RAY_ADDRESS_ENV, job_backend

    backend = job_backend()
    try:
        overview = backend.overview()
        if overview.get("reachable") is False:
            raise ConnectionError("no answer")
        nodes, jobs = backend.nodes(), backend.jobs()
    except OSError as error:  # the cluster's job address does not answer (refused, unknown host, timed out)
        address = os.environ.get(RAY_ADDRESS_ENV, "")
        raise UserError(f"Could not reach the Ray cluster at {address} ({RAY_ADDRESS_ENV}, "
                        f"{error.__class__.__name__}): check that its head is running and that its job port "
                        "is open to this machine.") from error
    if args.json:
        print_json({"backend": overview, "nodes": nodes, "jobs": jobs})
        return 0
    print(_backend_sentence(overview, RAY_ADDRESS_ENV))
    print()
    print_table([_node_row(node) for node in nodes], NODE_COLUMNS)
    print()
    if jobs:
        print_table([_job_row(job) for job in jobs], JOB_COLUMNS)
    elif overview.get("kind") == "ray":
        print("The cluster holds no jobs of the studio.")
    else:
        print("No jobs are waiting or running on this machine.")
    return 0


def _backend_sentence(overview: dict, address_env: str) -> str:
    """Which back end runs the jobs and how busy it is, in one sentence for the terminal (which,
    unlike a browser, may see the cluster's address: the person who set it is at it)."""
    counts = f"{overview.get('waiting', 0)} waiting, {overview.get('running', 0)} running"
    if overview.get("kind") == "ray":
        return f"Jobs run on a Ray cluster ({os.environ.get(address_env)}): {counts}."
    return (f"Jobs run on this machine's queue: {counts}. "
            f"Set {address_env} to a Ray cluster's job address to send them there.")


def _node_row(node: dict) -> dict:
    name = (node.get("node") or "-") + (" (head)" if node.get("head") else "")
    return {"node": name, "alive": "yes" if node.get("alive") else "no",
            "cpus": _count(node.get("cpus")), "gpus": _count(node.get("gpus")),
            "memory": _bytes(node.get("memory_bytes"))}


def _job_row(job: dict) -> dict:
    return {column: job.get(column) or "-" for column in JOB_COLUMNS}


def _count(value) -> str:
    """Ray counts resources as floats (2.0 CPUs, 0.5 GPU): whole ones print without a point."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bytes(value) -> str:
    if not value:
        return "-"
    return f"{value / 2**30:.1f} GiB"
