"""The engine as a few verbs, for notebooks and scripts: check, train, predict, export, audit, suggest.

    import transfer
    report = transfer.check("photos/")                  # what is in the data set, and whether it can train
    run = transfer.train("photos/", method="features")  # a run folder under ./runs, trained in a worker
    answers = run.predict(["new.jpg"])                  # one Prediction per picture
    bundle = run.export("bundle")                       # a zip with model.onnx and a torch-free predict.py

Each verb calls the same engine functions as the ``transfer`` command of the same name, so a run
trained here is the same run folder (config.json, status.json, events.jsonl, the model) that
``transfer runs``, the web app and the worker read. Nothing heavy is imported until a verb is
called: ``import transfer`` loads no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # for the type hints only; importing them would load the engine
    from PIL import Image

    from transfer.analysis.audit import AuditResult
    from transfer.analysis.suggest import SuggestResult
    from transfer.core.runs import RunDir
    from transfer.data.report import Report
    from transfer.serving.server_predict import Prediction

DEFAULT_RUNS_DIR = "runs"  # the ``transfer`` command's default too: ./runs


class Run:
    """One training run: a folder holding its settings, progress and, once finished, its model.

    Cheap to make; every property reads the folder, so it follows a run that a worker, the web app
    or the ``transfer`` command is changing. Get one from :func:`train`, :func:`runs` or
    :func:`open_run`.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path).resolve()
        self._predictor = None

    def __repr__(self) -> str:
        return f"Run({self.name!r}, id={self.id!r}, state={self.state!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def folder(self) -> "RunDir":
        """The run folder's contract (:class:`transfer.core.runs.RunDir`): status, events, labels."""
        from transfer.core.runs import RunDir

        return RunDir(self.path)

    @property
    def id(self) -> str:
        """The folder's name, which commands and links take (``20250101-120000-ab12``)."""
        return self.path.name

    @property
    def name(self) -> str:
        """The readable name: the one given with :meth:`rename`, else method, backbone and date."""
        from transfer.models.run_names import run_name

        return run_name(self.folder)

    @property
    def state(self) -> str:
        """queued, running, finished, failed, cancelled or interrupted."""
        return self.folder.state

    @property
    def config(self) -> dict:
        """The training settings the run was started with (its ``config.json``)."""
        return self.folder.config

    def summary(self) -> dict:
        """One row of ``transfer runs --json``: name, id, state, method, backbone, accuracies, seconds."""
        return {"name": self.name, **self.folder.summary()}

    def wait(self, timeout: float | None = None, on_event: Callable[[dict], None] | None = None) -> dict:
        """Block until the run ends and return its final status (``status.json``).

        ``on_event(event)`` sees every event of ``events.jsonl`` in order (epochs, progress,
        messages). Raises ``TimeoutError`` after ``timeout`` seconds; on Ctrl-C the run keeps
        training in the background.
        """
        from transfer.runtime.jobs import JobManager

        # A short poll, as `transfer train` uses: a features run ends within seconds.
        return JobManager(self.path.parent).wait(self.folder, timeout=timeout, poll=0.05, on_event=on_event)

    def predict(self, pictures: "Path | str | bytes | Image.Image | Sequence[Path | str | bytes | Image.Image]",
                top_k: int = 5, *,
                unknown_threshold: str | float | None = "normal") -> list["Prediction"]:
        """The answer for each picture (paths, bytes or PIL images), in order.

        Each :class:`~transfer.serving.server_predict.Prediction` has ``label`` and
        ``probability`` (the top class), ``labels`` and ``probabilities`` (the ``top_k``), and
        ``unknown``: True when the picture is unlike the training pictures ("None of these") at
        ``unknown_threshold`` (relaxed, normal, strict, a number, or "off"). The model is
        loaded on the first call and kept. ``transfer predict`` also takes folders and zips.
        """
        if self._predictor is None:
            from transfer.serving.predict import Predictor

            self._predictor = Predictor.from_run(self.path)
        return self._predictor.predict(pictures, top_k, unknown_threshold=unknown_threshold)

    def export(self, format: str = "bundle", output: Path | str | None = None, *, precision: str = "float32",
               include_reference: bool | None = None) -> Path:
        """Export the finished run, checked against the studio's own predictions; returns the file.

        ``format``: "bundle" (a zip with model.onnx, the weights, a model card and a torch-free
        predict.py), "onnx", "torchscript" or "web" (a page that runs the model in the browser).
        ``precision="int8"``: the smaller model, refused when it answers differently. The export is
        kept in the run's ``exports/`` folder; ``output`` (a file or folder) gets a copy.
        """
        from transfer.serving.export import export_run

        return export_run(self.path, format, output, precision=precision, include_reference=include_reference).path

    def rename(self, name: str) -> str:
        """Give the run a readable name (its id stays the same); returns the name as kept."""
        from transfer.models.run_names import rename_run

        return rename_run(self.folder, name)


def check(data: Path | str, *, val_fraction: float = 0.2, seed: int = 0) -> "Report":
    """Read a data set and report on it, as ``transfer check`` does; never raises for bad data.

    ``data`` is a folder of class folders, a folder with ``train/`` and ``val/``, or a ``.zip`` of
    either. The :class:`~transfer.data.report.Report` has ``ok``, ``classes``, ``counts`` (train
    and validation pictures per class), ``errors``, ``warnings``, ``skipped`` files and
    ``duplicates``; ``to_dict()`` is ``transfer check --json``.
    """
    from transfer.data.dataset import check_dataset

    return check_dataset(data, val_fraction=val_fraction, seed=seed)


def train(data: Path | str, *, method: str = "features", backbone: str | None = None, epochs: int | None = None,
          runs_dir: Path | str = DEFAULT_RUNS_DIR, wait: bool = True,
          on_event: Callable[[dict], None] | None = None, **settings) -> Run:
    """Train a model on ``data`` the way ``transfer train`` does, and return its :class:`Run`.

    ``method``: "features" (a new head on frozen features; seconds), "finetune" (adapt the whole
    network) or "scratch" (the same network from random weights). ``backbone``: a catalogue name
    (default efficientnet_lite0; see ``transfer backbones``). ``epochs`` and the other ``settings``
    (batch_size, lr, image_size, seed, device, precision, augmentation, val_fraction, ...) are
    ``transfer train``'s options with underscores; left out, they are the method's defaults.

    The run is queued in ``runs_dir`` and trained by a worker process, like every run of the
    studio. With ``wait`` (the default) this returns when the run has ended; look at
    ``run.state`` and ``run.summary()`` for how it went. Data that cannot train raises
    :class:`~transfer.data.samples.DataError` before any run is made.
    """
    from transfer.data.dataset import load_dataset
    from transfer.runtime.jobs import JobManager
    from transfer.training.config import TrainConfig

    dataset = load_dataset(Path(data).resolve(), val_fraction=settings.get("val_fraction") or 0.2)
    config = TrainConfig.for_method(method, dataset=dataset.to_dict(), backbone=backbone, epochs=epochs, **settings)
    run = Run(JobManager(runs_dir).submit(config.to_dict()).path)
    if wait:
        run.wait(on_event=on_event)
    return run


def runs(runs_dir: Path | str = DEFAULT_RUNS_DIR) -> list[Run]:
    """Every run in ``runs_dir``, newest first (``transfer runs``)."""
    from transfer.runtime.jobs import JobManager

    return [Run(folder.path) for folder in JobManager(runs_dir).list()]


def open_run(run: Run | Path | str, runs_dir: Path | str = DEFAULT_RUNS_DIR) -> Run:
    """The run given as a :class:`Run`, a run folder (a ``Path``, or text with a ``/``), or a run
    id inside ``runs_dir``. Raises :class:`~transfer.core.runs.RunNotFound` when there is no such run.
    """
    from transfer.core.runs import RunDir, find_run

    if isinstance(run, Run):
        return run
    if (isinstance(run, Path) or "/" in run or os.sep in run) and RunDir(run).exists():
        return Run(run)
    return Run(find_run(runs_dir, str(run)).path)


def audit(data: Path | str, *, backbone: str | None = None, val_fraction: float = 0.2,
          progress: Callable[[str, int, int], None] | None = None) -> "AuditResult":
    """Likely label mistakes, near-duplicates and outliers of a labelled data set (``transfer audit``).

    Works from a backbone's features (default efficientnet_lite0) and cross-validated heads. The
    :class:`~transfer.analysis.audit.AuditResult` lists ``suspects`` (given and suggested class),
    ``near_duplicates`` and ``outliers``, most likely first. ``progress(phase, done, total)`` is
    called as the work goes on.
    """
    from transfer.analysis.audit import audit_dataset
    from transfer.data.dataset import load_dataset

    dataset = load_dataset(Path(data).resolve(), val_fraction=val_fraction)
    return audit_dataset(dataset, backbone=backbone, progress=progress)


def suggest(pool: Path | str, *, run: Run | Path | str | None = None, count: int = 20,
            runs_dir: Path | str = DEFAULT_RUNS_DIR,
            progress: Callable[[str, int, int], None] | None = None) -> "SuggestResult":
    """Which of the unlabelled pictures in ``pool`` (a folder or .zip) to label first (``transfer suggest``).

    With a finished ``run`` (a :class:`Run`, its folder or its id in ``runs_dir``) each suggestion
    carries the run's guess, and the run's own pictures count as labelled already. The
    :class:`~transfer.analysis.suggest.SuggestResult` holds ``suggestions`` (file, guess,
    probability, reason), best first.
    """
    from transfer.analysis.suggest import suggest as suggest_pictures

    run_dir = open_run(run, runs_dir).path if run is not None else None
    return suggest_pictures(Path(pool), run_dir=run_dir, count=count, progress=progress)
