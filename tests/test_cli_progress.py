"""The command line's progress: tqdm bars on a terminal (one at a time, lines printed above them),
nothing but the lines where stderr is a pipe or a file."""

from __future__ import annotations

import io

from transfer.cli.progress import PhaseBar
from transfer.cli.train import TrainProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


EVENTS = [
    {"type": "progress", "phase": "features", "done": 3, "total": 12},
    {"type": "progress", "phase": "features", "done": 12, "total": 12},
    {"type": "step", "epoch": 1, "step": 2, "steps": 4, "loss": 0.6931, "eta": 5},
    {"type": "warning", "message": "Out of memory: batch size halved to 8, retrying."},
    {"type": "epoch", "epoch": 1, "epochs": 2, "loss": 0.5, "val_accuracy": 0.75},
]


def test_a_terminal_sees_bars_for_each_phase_and_the_epoch_lines_above_them():
    terminal = Terminal()
    printer = TrainProgress(terminal)
    for event in EVENTS:
        printer(event)
    printer.close()
    shown = terminal.getvalue()
    assert "computing features" in shown and "12/12" in shown
    assert "epoch 1" in shown and "2/4" in shown and "loss 0.6931" in shown and "eta 5 s" in shown
    assert "warning: Out of memory: batch size halved to 8, retrying.\n" in shown
    assert "epoch 1/2  loss 0.5000  val_acc 0.750\n" in shown


def test_a_pipe_gets_only_the_lines():
    pipe = io.StringIO()
    printer = TrainProgress(pipe)
    for event in EVENTS:
        printer(event)
    printer.close()
    assert pipe.getvalue() == ("warning: Out of memory: batch size halved to 8, retrying.\n"
                               "epoch 1/2  loss 0.5000  val_acc 0.750\n")


def test_the_audits_phases_draw_one_bar_at_a_time():
    terminal = Terminal()
    bar = PhaseBar(terminal)
    bar("features", 5, 10)
    bar("heads", 1, 5)
    bar.close()
    shown = terminal.getvalue()
    assert "computing features" in shown and "5/10" in shown and "cross-validating" in shown and "1/5" in shown
