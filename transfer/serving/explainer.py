"""Grad-CAM for the web server, computed in a child process: the server never imports torch.

Grad-CAM needs the PyTorch model and its gradients, which the ONNX model the server predicts
with cannot give. Each server process therefore keeps one explainer child
(``python -m transfer.serving.explainer``), started on the first heat map and reused after: it loads a
model folder's PyTorch model once (the last few are kept) and answers one request at a time,
as JSON lines over its standard input and output. :class:`Explainer` is the server's side: its
lock lets one request through at a time, so sessions asking at once simply queue, and a child
that died or hangs is replaced on the next request. The child runs at a lower CPU priority with
a bounded number of threads and leaves when the server does (its input closes).

The server only asks about folders it would predict with itself (a session's own finished
runs, a demo's snapshot); the child reads nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer.core.errors import TransferError

FIRST_ANSWER_SECONDS = 300.0  # the first request imports torch and loads a model on a busy machine
ANSWER_SECONDS = 120.0
MODELS_KEPT = 4
MAX_PICTURE_BYTES = 64 * 2**20


class ExplainError(TransferError):
    """A heat map that could not be made."""


@dataclass(frozen=True)
class HeatMap:
    """Grad-CAM of one picture: the overlay (None with the reason in ``note``), the class it is for."""

    overlay: np.ndarray | None
    note: str
    label: str = ""


class Explainer:
    """The server's handle on its explainer child; safe to share between threads and sessions."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._answered = False

    def explain(self, folder: Path | str, picture: bytes) -> HeatMap:
        """Where the model of ``folder`` looked for its top class in ``picture`` (the file's bytes)."""
        if len(picture) > MAX_PICTURE_BYTES:
            raise ExplainError("This picture is too large for a heat map; use one under 64 MB.")
        answer = self._ask({"kind": "explain", "folder": str(folder),
                            "picture": base64.b64encode(picture).decode("ascii")})
        overlay = None
        if answer.get("overlay_png"):
            from PIL import Image

            overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"]))).convert("RGB"))
        return HeatMap(overlay, without_paths(str(answer.get("note", ""))), str(answer.get("label", "")))

    def layer(self, folder: Path | str) -> tuple[bool, str]:
        """Whether the model of ``folder`` has a layer Grad-CAM can use, and which (or why not)."""
        answer = self._ask({"kind": "layer", "folder": str(folder)})
        return bool(answer.get("found")), str(answer.get("note", ""))

    def close(self) -> None:
        with self._lock:
            self._stop()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # ----------------------------------------------------------------- the child

    def _ask(self, request: dict) -> dict:
        with self._lock:
            for attempt in (1, 2):  # a child that died since the last request is replaced once
                try:
                    answer = self._exchange(request)
                except (OSError, ValueError, TimeoutError):
                    self._stop()
                    if attempt == 2:
                        raise ExplainError("The heat map could not be made (its worker process stopped); "
                                           "try again in a moment.") from None
                    continue
                if "error" in answer:
                    raise ExplainError(without_paths(str(answer["error"])))
                return answer
        raise AssertionError("unreachable")

    def _exchange(self, request: dict) -> dict:
        process = self._running()
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        timeout = ANSWER_SECONDS if self._answered else FIRST_ANSWER_SECONDS
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the explainer did not answer")
        line = process.stdout.readline()
        if not line:
            raise OSError("the explainer stopped")
        self._answered = True
        return json.loads(line)

    def _running(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = start_child()
            self._answered = False
        return self._process

    def _stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._process = None


def start_child() -> subprocess.Popen:
    from transfer.core import paths
    from transfer.core.child import PACKAGE_PARENT

    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "transfer.serving.explainer"]
    with open(paths.home() / "explainer.log", "ab") as log:
        return subprocess.Popen(["nice", "-n", "5", *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, env=environment, cwd=PACKAGE_PARENT)


_shared: Explainer | None = None
_shared_lock = threading.Lock()


def shared_explainer() -> Explainer:
    """This process's explainer (one child per server process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Explainer()
        return _shared


# --------------------------------------------------------------------------- inside the child


# Two or more path components: what a traceback's text names of the server's folders.
_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"(),:;/\\]+){2,}[/\\]?")


def without_paths(text: str) -> str:
    """The explainer's sentence as a visitor may read it: no folder or file of this server named."""
    return _SERVER_PATH.sub("(a file on the server)", text)


def serve(requests, answers) -> None:
    """Answer JSON-line requests until the input closes."""
    models: dict[tuple, object] = {}
    for line in requests:
        try:
            answer = handle(json.loads(line), models)
        except TransferError as error:
            answer = {"error": str(error)}
        except Exception as error:  # noqa: BLE001 - one bad request must not end the child
            answer = {"error": f"The heat map could not be made ({type(error).__name__}: {error})."}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def handle(request: dict, models: dict) -> dict:
    predictor = model_of(Path(request["folder"]), models)
    if request.get("kind") == "layer":
        from transfer.analysis.explain import cam_layer_info

        info = cam_layer_info(predictor.model)
        return {"found": info.found, "note": info.description}
    explanation = predictor.explain(base64.b64decode(request["picture"]))
    overlay = explanation.overlay()
    answer = {"note": explanation.layer, "label": explanation.label}
    if overlay is not None:
        buffer = io.BytesIO()
        overlay.save(buffer, format="PNG")
        answer["overlay_png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return answer


def model_of(folder: Path, models: dict):
    """The folder's predictor (its PyTorch model loaded for Grad-CAM), kept for the next request."""
    from transfer.serving.predict import Predictor

    try:
        version = (folder / "model.safetensors").stat().st_mtime_ns
    except OSError:
        raise ExplainError("This model is no longer there; reload the page.") from None
    key = (str(folder), version)
    if key not in models:
        if len(models) >= MODELS_KEPT:
            models.pop(next(iter(models)))
        models[key] = Predictor.from_run(folder, warm_up=False)
    return models[key]


def main() -> int:
    """The child: answers on the original standard output; anything else printed goes to stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    serve(sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
