"""Run one of the studio's own commands in a child process and read the JSON object it prints last.

The web server hands heavy or memory-hungry work (an export, a weights report, the clean-up) to a
fresh interpreter, so its own process stays responsive and never holds that work's memory. Every
such command follows the ``--json`` contract: its last line of output is one JSON object.
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


def run_module(module: str, arguments: list[str], *, timeout: float, env: dict | None = None,
               niced: bool = False) -> ChildAnswer:
    """``python -m module arguments...`` with this checkout importable; raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the child is killed)."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", module, *arguments]
    if niced and shutil.which("nice"):  # not preexec_fn: that is unsafe in a threaded server
        command = ["nice", "-n", "5", *command]
    done = subprocess.run(command, cwd=PACKAGE_PARENT, env=environment, capture_output=True, text=True,
                          timeout=timeout)
    return ChildAnswer(done.returncode, last_json_object(done.stdout), done.stderr)
