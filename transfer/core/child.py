"""Starting the studio's child processes: the package's one way to do it.

Every child is ``python -m MODULE ...`` in a fresh interpreter (never a fork of a process that
may hold CUDA or the web server's threads) that imports this same ``transfer`` package:

- :func:`run_module` runs one of the studio's own modules and reads the JSON object it prints
  last: the web server hands heavy or memory-hungry work (a data check, the clean-up) to it, so
  its own process stays responsive and never holds that work's memory;
- :func:`run_child_job` runs one of the jobs of ``transfer.runtime.child_jobs`` (an export,
  predictions, a weights report, a saved project) the same way, its settings sent as JSON;
- :func:`start_module` starts a long-lived one in its own session and returns at once: the
  dispatcher's training workers, the worker's torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class ChildAnswer:
    returncode: int
    answer: dict  # the last line's JSON object, or {} when there is none
    stderr: str


def last_json_object(output: str) -> dict:
    """The JSON object on the last line of ``output``, or ``{}``."""
    lines = output.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def child_environment(env: dict | None = None) -> dict:
    """This process's environment with ``env`` over it, and this ``transfer`` package first on
    the import path."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, environment.get("PYTHONPATH")]))
    return environment


def run_module(module: str, arguments: list[str], *, timeout: float, env: dict | None = None,
               niced: bool = False) -> ChildAnswer:
    """``python -m module arguments...`` with this package importable, waited for; raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the child is killed)."""
    command = [sys.executable, "-m", module, *arguments]
    if niced and shutil.which("nice"):  # not preexec_fn: that is unsafe in a threaded server
        command = ["nice", "-n", "5", *command]
    done = subprocess.run(command, cwd=PACKAGE_PARENT, env=child_environment(env), capture_output=True, text=True,
                          timeout=timeout)
    return ChildAnswer(done.returncode, last_json_object(done.stdout), done.stderr)


CHILD_JOBS_MODULE = "transfer.runtime.child_jobs"


def run_child_job(job: str, settings: dict, *, timeout: float, env: dict | None = None,
                  niced: bool = False) -> ChildAnswer:
    """``python -m transfer.runtime.child_jobs JOB SETTINGS``: one job of the web server done in a
    child process, ``settings`` (its keyword arguments) sent as one JSON object; see
    :func:`run_module` for the answer and the timeout."""
    return run_module(CHILD_JOBS_MODULE, [job, json.dumps(settings)], timeout=timeout, env=env, niced=niced)


def start_module(module: str, arguments: list[str], *, env: dict | None = None, log=None,
                 pass_fds: tuple[int, ...] = (), preexec_fn=None) -> subprocess.Popen:
    """Start ``python -m module arguments...`` in a session of its own (a Ctrl-C or a restart of
    its parent does not reach it) and return at once; its output goes to ``log`` (an open file)
    and ``pass_fds`` stay open in it (held locks). The caller waits for it or lets it go."""
    return subprocess.Popen([sys.executable, "-m", module, *arguments], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT if log is not None else None, pass_fds=pass_fds,
                            start_new_session=True, env=child_environment(env), preexec_fn=preexec_fn)


def redirect_output(log_path: Path) -> None:
    """From now on this process writes its output to ``log_path`` (appended) and reads nothing."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
