"""Progress bars of the ``transfer`` command, drawn by tqdm on stderr.

One bar at a time: the phase of work under way (decoding pictures, computing features, an
epoch's steps, cross-validating ...), replaced when the phase changes. Lines printed while a bar
is shown (an epoch's summary, a warning) go above it, so bars and lines never mix. Where stderr
is not a terminal (a pipe, a log file, ``--json`` callers) no bar is drawn, only the lines.
A run's events (``transfer train``, ``transfer resume``) and the phases of an audit or of
suggestions are drawn through these bars.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

_EPOCH_FIELDS = (("loss", "loss {:.4f}"), ("accuracy", "acc {:.3f}"), ("val_loss", "val_loss {:.4f}"),
                 ("val_accuracy", "val_acc {:.3f}"), ("images_per_s", "{:.0f} img/s"),
                 ("elapsed", "{:.1f} s"))


class ProgressBars:
    """One bar at a time on ``stream`` (drawn only on a terminal, unless ``live`` says otherwise)."""

    def __init__(self, stream, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._bar: tqdm | None = None
        self._title: str | None = None

    def show(self, title: str, done: int, total: int, **details) -> None:
        """Show ``done`` of ``total`` for the phase ``title``, with ``details`` after the count."""
        if not self.live:
            return
        total = max(0, int(total or 0))
        if self._bar is None or self._title != title or self._bar.total != total:
            from tqdm import tqdm  # imported when a first bar is drawn: `transfer` starts without it

            self.close()
            self._bar = tqdm(total=total or None, desc=title, file=self.stream, leave=False, dynamic_ncols=True,
                             bar_format="{desc} {bar} {n_fmt}/{total_fmt} {postfix}" if total else None,
                             mininterval=0.1)
            self._title = title
        self._bar.n = min(int(done or 0), total) if total else int(done or 0)
        self._bar.set_postfix_str("  ".join(f"{key} {value}" for key, value in details.items()), refresh=False)
        self._bar.refresh()

    def line(self, text: str) -> None:
        """Print ``text`` on a line of its own, above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._title = None


def follow_run(manager, run, quiet: bool = False) -> dict:
    """Wait for ``run`` to end, showing its progress on stderr unless ``quiet``; returns the
    final status (``transfer resume``). On Ctrl-C the run
    keeps training in the background and KeyboardInterrupt propagates."""
    show = None if quiet else RunProgress(sys.stderr)
    try:
        return manager.wait(run, on_event=show)
    finally:
        if show is not None:
            show.close()


class RunProgress:
    """Turns run events into a progress bar (on a terminal) and one line per epoch."""

    def __init__(self, stream):
        self.bars = ProgressBars(stream)
        self.live = self.bars.live

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "step" and self.live:
            self._bar(event)
        elif kind == "epoch":
            self.bars.line(epoch_line(event))
        elif kind in ("info", "warning") and event.get("message"):
            prefix = "warning: " if kind == "warning" else ""
            self.bars.line(prefix + str(event["message"]))

    def _bar(self, event: dict) -> None:
        details = {}
        if isinstance(event.get("loss"), (int, float)):
            details["loss"] = f"{event['loss']:.4f}"
        if isinstance(event.get("eta"), (int, float)):
            details["eta"] = f"{event['eta']:.0f} s"
        self.bars.show(f"epoch {event.get('epoch', '?')}", event.get("step") or 0, event.get("steps") or 0, **details)

    def close(self) -> None:
        self.bars.close()


def epoch_line(event: dict) -> str:
    """One epoch's summary line: its number, losses, accuracies, speed and time."""
    parts = [f"epoch {event.get('epoch', '?')}/{event.get('epochs', '?')}"]
    for key, fmt in _EPOCH_FIELDS:
        if isinstance(event.get(key), (int, float)):
            parts.append(fmt.format(event[key]))
    return "  ".join(parts)


class PhaseBar:
    """A progress bar on stderr for work reported as ``(phase, done, total)``."""

    _TITLES = {"features": "computing features", "heads": "cross-validating", "map": "drawing the map"}

    def __init__(self, stream):
        self.bars = ProgressBars(stream)

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.bars.show(self._TITLES.get(phase, phase), done, total)

    def close(self) -> None:
        self.bars.close()
