"""Label assist on the Data page (AppTest): a pool is kept, its suggestions are shown with the
guess preselected, and "It is …", another class, a new class and "Skip" put pictures into the
session's working copy (listed, undoable) without touching the user's files."""

from __future__ import annotations

import json
import time

from apptools import open_app, session_with_dataset

from transfer.analysis import audit
from transfer.runtime.access import issue_session_token, session_dir
from transfer.data.dataset import check_dataset
from transfer.data.pool import add_files_pool, pool_pictures
from transfer.core.files import atomic_write_json
from ui import label_view

PAGE = "pages/data.py"


def pool_with_suggestions(workspace, png, guesses: list[str | None], per_class: dict | None = None,
                          evened: bool | None = None):
    """A pool of generated pictures in the session, and a finished suggestion job for it."""
    folder = add_files_pool([(f"p{i}.png", png(i % 3, 50 + i)) for i in range(len(guesses))],
                            workspace / "uploads", name="my photos")
    pictures = pool_pictures(folder)
    job = workspace / "suggest" / folder.name
    job.mkdir(parents=True)
    atomic_write_json(job / "job.json", {"pid": 0, "started": time.time(), "run": None})
    atomic_write_json(job / audit.RESULT_FILE, {
        "pool": str(folder), "run": None, "backbone": "efficientnet_lite0", "pictures": len(pictures),
        "labelled": 30, "seconds": 1.0, "features_cached": 0, "features_computed": len(pictures),
        "labelled_per_class": per_class or {}, "evened": bool(per_class) if evened is None else evened,
        "suggestions": [{"file": p.name, "guess": g, "probability": 0.8 if g else None, "unknown": None,
                         "reason": "typical of 5 pictures nothing labelled resembles yet", "sha256": p.sha256,
                         "kind": "typical"} for p, g in zip(pictures, guesses)]})
    return folder, pictures


def test_label_assist_puts_pictures_into_the_working_copy(tiny_dataset, png):
    token, workspace = session_with_dataset(tiny_dataset)
    before = check_dataset(tiny_dataset).dataset
    _, pictures = pool_with_suggestions(workspace, png, ["red", "green", "blue", None],
                                        per_class={"red": 20, "green": 5, "blue": 5})
    app = open_app(PAGE, token=token)
    assert not app.exception, app.exception
    assert any("4 pictures without labels, 30 labelled. 4 suggestions waiting." in c.value for c in app.caption)
    balance = " ".join(i.value for i in app.info)
    assert "Labelled pictures per class: blue 5, green 5, red 20. Label more of blue, green" in balance
    assert "guesses to be of the classes with the fewest labels" in balance
    assert label_view.balance_sentence({"labelled_per_class": {"a": 4, "b": 3}, "evened": True},
                                       []) == "Labelled pictures per class: b 3, a 4: the classes are even."
    assert label_view.balance_sentence({"labelled_per_class": {"a": 4, "b": 2}, "evened": True},
                                       [{"guess": "b"}]) == "Labelled pictures per class: b 3, a 4: the classes are even."

    next(b for b in app.button if b.label == "It is red (80%)").click().run()  # a right guess: one click
    assert not app.exception, app.exception
    copy = workspace / "audit" / "working_copy" / "data"
    assert (copy / "red" / "p0.png").is_file()
    assert json.loads((workspace / "dataset.json").read_text())["source"] == str(copy)
    # The counts follow the labelling: one picture left the pool and joined the labelled ones.
    assert any("3 pictures without labels, 31 labelled. 3 suggestions waiting." in c.value for c in app.caption)

    key = f"suggestion:{pictures[1].sha256[:16]}"
    app.selectbox(key=f"{key}:other").set_value("blue").run()  # a wrong guess: two clicks
    assert (copy / "blue" / "p1.png").is_file()
    app.text_input(key=f"suggestion:{pictures[3].sha256[:16]}:new").input("purple").run()
    assert (copy / "purple" / "p3.png").is_file()
    skip = f"suggestion:{pictures[2].sha256[:16]}:skip"
    next(b for b in app.button if b.key == skip).click().run()
    assert any("Nothing waiting" in s.value for s in app.success)

    changes = [m.value for m in app.markdown]
    assert any(c.startswith("p0.png added to red (training)") for c in changes)
    undo = [b for b in app.button if b.label == "Undo"]
    undo[0].click().run()  # the newest change first
    assert not (copy / "purple" / "p3.png").exists()
    after = check_dataset(copy).dataset
    assert {s.sha256 for s in after.val} == {s.sha256 for s in before.val}  # validation stays as it was
    assert sorted(p.name for p in tiny_dataset.rglob("*.png")) == sorted(s.path.name for s in before.samples)


def test_uneven_classes_offer_to_suggest_the_fewest_labelled_first(tiny_dataset, png, monkeypatch):
    from transfer.runtime.side_jobs import SideJob

    token, workspace = session_with_dataset(tiny_dataset)
    folder, _ = pool_with_suggestions(workspace, png, ["red", "green", "blue", None],
                                      per_class={"red": 20, "green": 5, "blue": 5}, evened=False)
    started = []
    monkeypatch.setattr(SideJob, "start", lambda job, config, **details: started.append(config["arguments"]))
    app = open_app(PAGE, token=token)
    assert not app.exception, app.exception
    balance = " ".join(i.value for i in app.info)
    assert "Label more of blue, green" in balance and "guesses to be of" not in balance  # the default order
    toggle = app.toggle(key=label_view.EVEN_OUT_TOGGLE)
    assert toggle.label == "Suggest the classes with the fewest labels first" and not toggle.value
    toggle.set_value(True).run()  # switching it on asks for suggestions in the evened order
    assert not app.exception, app.exception
    assert started and "--even-out" in started[-1]

    # While the suggestions are made the toggle is not drawn; it is still on when they are back.
    result = workspace / "suggest" / folder.name / audit.RESULT_FILE
    kept = result.read_text()
    result.unlink()
    app.run()
    assert not [t for t in app.toggle if t.key == label_view.EVEN_OUT_TOGGLE]
    result.write_text(kept)
    app.run()
    assert app.toggle(key=label_view.EVEN_OUT_TOGGLE).value
    next(b for b in app.button if b.key == "suggest_again").click().run()
    assert "--even-out" in started[-1]  # and suggesting again keeps the order asked for


def test_labelled_pictures_start_a_data_set_when_none_is_chosen(png):
    token = issue_session_token()
    workspace = session_dir(token)
    _, pictures = pool_with_suggestions(workspace, png, [None, None, None, None])
    app = open_app(PAGE, token=token)
    for index, label in enumerate(["cat", "cat", "dog", "dog"]):
        app.text_input(key=f"suggestion:{pictures[index].sha256[:16]}:new").input(label).run()
        assert not app.exception, app.exception
    choice = json.loads((workspace / "dataset.json").read_text())
    assert choice["name"] == "Labelled pictures"
    dataset = check_dataset(choice["source"]).dataset
    # The second picture of each class validates it; the first trains.
    assert dataset.counts() == {"cat": {"train": 1, "val": 1}, "dog": {"train": 1, "val": 1}}


def test_a_pool_is_kept_from_dropped_pictures_and_can_be_deleted(png):
    token = issue_session_token()
    app = open_app(PAGE, token=token)
    app.file_uploader(key="pool_files#0").set_value([("a.png", png(0, 1), "image/png"),
                                                    ("b.png", png(1, 2), "image/png")]).run()
    assert not app.exception, app.exception
    assert any("Kept 2 pictures without labels" in s.value for s in app.success)
    assert app.selectbox(key="chosen_pool").value is not None
    assert any(b.label == "Suggest what to label first" for b in app.button)
    next(b for b in app.button if b.key == "delete_pool").click().run()
    assert not list((session_dir(token) / "uploads" / "pools").glob("*/.complete"))
