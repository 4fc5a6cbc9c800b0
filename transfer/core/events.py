"""Following a run's events as they arrive, reading only what was appended since last time.

A live page asks for news every second or two; re-reading and re-parsing a whole
``events.jsonl`` each time costs more the longer a run gets. :class:`RunEvents` keeps a byte
offset and what a live view shows (the epochs, the steps of the current epoch, the latest
progress and the recent log lines), and :meth:`RunEvents.update` parses the new lines only.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from transfer.core.runs import RunDir

LOG_LINES = 30
_PROGRESS_TYPES = ("step", "progress", "epoch")


class RunEvents:
    """What a live view needs from one run's events, kept up to date incrementally."""

    def __init__(self, run_path: Path | str):
        self.run = RunDir(run_path)
        self.offset = 0
        self.epochs: dict[int, dict] = {}
        self.steps: list[dict] = []  # the step events of the latest epoch seen
        self.latest: dict = {}  # the latest step, progress or epoch event
        self.log: deque[dict] = deque(maxlen=LOG_LINES)  # events other than steps and progress

    def update(self) -> "RunEvents":
        """Take in the events appended since the last call."""
        if self._file_size() < self.offset:  # the file was replaced: start over
            self.__init__(self.run.path)
        events, self.offset = self.run.read_events(self.offset)
        for event in events:
            self._take(event)
        return self

    def _file_size(self) -> int:
        try:
            return self.run.events_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _take(self, event: dict) -> None:
        kind = event.get("type")
        if kind in _PROGRESS_TYPES:
            self.latest = event
        if kind == "epoch" and isinstance(event.get("epoch"), int):
            self.epochs[event["epoch"]] = event  # an epoch trained again after a crash: the later copy wins
        elif kind == "step":
            if self.steps and self.steps[-1].get("epoch") != event.get("epoch"):
                self.steps = []
            self.steps.append(event)
        if kind not in ("step", "progress"):
            self.log.append(event)

    def epoch_history(self) -> list[dict]:
        """As :meth:`transfer.core.runs.RunDir.epoch_history`, without reading the file again."""
        return [self.epochs[number] for number in sorted(self.epochs)]

    def steps_of_epoch(self, epoch: int) -> list[dict]:
        return [event for event in self.steps if event.get("epoch") == epoch]
