"""Live views follow a run's events incrementally: only appended bytes are read and parsed."""

from __future__ import annotations

from transfer.core.events import RunEvents
from transfer.core.runs import RunDir


def test_only_new_events_are_read_and_the_view_is_kept_up_to_date(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path, {"job": "demo"})
    for step in (1, 2):
        run.append_event({"type": "step", "epoch": 1, "step": step, "loss": 1.0 / step})
    run.append_event({"type": "epoch", "epoch": 1, "val_accuracy": 0.5})
    offsets = []
    original = RunDir.read_events

    def recording(self, offset=0):
        offsets.append(offset)
        return original(self, offset)

    monkeypatch.setattr(RunDir, "read_events", recording)
    follower = RunEvents(run.path).update()
    assert [e["epoch"] for e in follower.epoch_history()] == [1]
    assert follower.latest["type"] == "epoch"
    first_offset = follower.offset
    assert first_offset == run.events_path.stat().st_size

    run.append_event({"type": "step", "epoch": 2, "step": 1, "loss": 0.3})
    follower.update()
    assert offsets == [0, first_offset]  # the second look started where the first stopped
    assert follower.steps_of_epoch(2) == [run.events("step")[-1]]
    assert follower.steps_of_epoch(1) == []  # steps of finished epochs are not kept

    with open(run.events_path, "a") as handle:  # a line still being written
        handle.write('{"type": "epoch", "epoch": 2, "val_acc')
    follower.update()
    assert [e["epoch"] for e in follower.epoch_history()] == [1]
    with open(run.events_path, "a") as handle:
        handle.write('uracy": 0.75}\n')
    run.append_event({"type": "info", "message": "done"})
    follower.update()
    assert [e["val_accuracy"] for e in follower.epoch_history()] == [0.5, 0.75]
    assert follower.epoch_history() == run.epoch_history()
    assert [e["type"] for e in follower.log] == ["epoch", "epoch", "info"]


def test_a_replaced_events_file_is_read_again_from_the_start(tmp_path):
    run = RunDir.create(tmp_path, {"job": "demo"})
    for epoch in (1, 2, 3):
        run.append_event({"type": "epoch", "epoch": epoch})
    follower = RunEvents(run.path).update()
    run.events_path.write_text('{"type": "epoch", "epoch": 1}\n')
    follower.update()
    assert [e["epoch"] for e in follower.epoch_history()] == [1]
