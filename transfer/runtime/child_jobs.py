"""Work the web server hands to a child process, and the JSON answer each job gives.

The web server never loads PyTorch and never holds an export's memory: it runs
``python -m transfer.runtime.child_jobs JOB SETTINGS`` (through
:func:`transfer.core.child.run_child_job`), SETTINGS being one JSON object of the job's keyword
arguments, at a lower priority. The child prints one JSON object as its last line: the job's
answer, or ``{"error": sentence}`` with exit status 2 when the engine refused with a sentence
(any other failure ends in a traceback on stderr). The jobs:

- ``export``: a finished run exported and checked against it; the export's own description;
- ``predict``: pictures (files, folders, zips) classified by a run; ``predictions`` and ``skipped``;
- ``weights``: a weights file (or a finished run's) checked against a backbone; ``report``;
- ``save-project``: a studio project saved as one file; ``path``.

``transfer predict``, ``transfer weights`` and ``transfer project save`` with ``--json`` print
these same answers: the functions that build them live here, once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transfer.core.errors import TransferError


def export(run_dir: str, format: str, precision: str = "float32", include_reference: bool | None = None) -> dict:
    """A finished run exported (kept in its ``exports/`` folder) and checked against the studio."""
    from transfer.serving.export import export_run

    return export_run(run_dir, format, None, precision=precision, include_reference=include_reference).to_dict()


def predict_pictures(run_dir: Path | str, pictures: list[str], top_k: int, csv_path: str | None = None,
                     unknown_threshold: str = "normal"):
    """Pictures classified by the run in ``run_dir``; the predictions also written as CSV where asked."""
    from transfer.serving.predict import predict_paths

    result = predict_paths(run_dir, pictures, top_k=top_k, unknown_threshold=unknown_threshold)
    if csv_path:
        Path(csv_path).write_bytes(result.csv_bytes())
    return result


def prediction_answer(run_dir: Path | str, top_k: int, result) -> dict:
    """The predictions as one JSON object: the run, ``top_k``, each picture's answer and the skipped files."""
    return {"run_dir": str(Path(run_dir).resolve()), "top_k": top_k, **result.to_dict()}


def predict(run_dir: str, pictures: list[str], top_k: int, csv_path: str | None = None,
            unknown_threshold: str = "normal") -> dict:
    return prediction_answer(run_dir, top_k, predict_pictures(run_dir, pictures, top_k, csv_path, unknown_threshold))


def check_weights_file(source: str, backbone: str | None, classes: int, dropout: float = 0.0,
                       hidden: int | None = None):
    """``(file, backbone, report)``: a weights file, or a finished run's, loaded into ``backbone``
    (default: the run's, else the catalogue's default) with a new head for ``classes`` classes."""
    from transfer.models.weights import check_weights, chosen_backbone, resolve_source
    from transfer.training.config import DEFAULT_BACKBONE

    path, run_backbone, run_id = resolve_source(source)
    backbone = chosen_backbone(backbone, run_backbone, run_id) or DEFAULT_BACKBONE
    return path, backbone, check_weights(path, backbone, classes, dropout=dropout, hidden=hidden)


def weights_answer(path: Path, backbone: str, classes: int, report) -> dict:
    """The weights report as one JSON object, with the file's SHA-256."""
    from transfer.models.weights import file_sha256

    return {"file": str(path), "sha256": file_sha256(path), "backbone": backbone, "classes": classes,
            "report": report.to_dict()}


def weights(source: str, backbone: str | None, classes: int, dropout: float = 0.0, hidden: int | None = None) -> dict:
    path, chosen, report = check_weights_file(source, backbone, classes, dropout, hidden)
    return weights_answer(path, chosen, classes, report)


def saved_project_answer(project, saved) -> dict:
    """A project saved as one file, as one JSON object: the project, the file and what went in."""
    return {"id": project.id, "name": project.name, "path": str(saved.path.resolve()), "bytes": saved.bytes,
            "parts": saved.parts, "runs": saved.runs, "seconds": round(saved.seconds, 3)}


def save_project(project: str, output: str) -> dict:
    """The project (its name or id) saved as the file ``output``."""
    from transfer.runtime.project_files import save_project as save
    from transfer.runtime.projects import find_project

    found = find_project(project)
    return saved_project_answer(found, save(found.id, output))


JOBS = {"export": export, "predict": predict, "weights": weights, "save-project": save_project}


def main(argv: list[str] | None = None) -> int:
    """Do one job (``JOB SETTINGS``) and print its answer as the last line."""
    job, settings = sys.argv[1:] if argv is None else argv
    try:
        answer = JOBS[job](**json.loads(settings))
    except TransferError as error:  # engine errors carry user-facing sentences
        print(json.dumps({"error": str(error)}), flush=True)
        return 2
    print(json.dumps(answer, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
