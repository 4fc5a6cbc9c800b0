"""transfer.serving.share and `transfer share`: demo snapshots, tokens, expiry with a settable clock,
revocation, the caps on visitors' pictures, and demos that outlive their run and the process."""

from __future__ import annotations

import json
import re
import shutil
import stat
import threading
import zipfile

import pytest

from test_page_evaluate import trained  # noqa: F401 (the shared tiny finished run)
from transfer.cli import main as cli
from transfer.serving import share
from transfer.serving.predict import Predictor
from transfer.core.runs import RunDir
from transfer.serving.share import INVALID_LINK, DemoLimitReached, DemoStore, DemoUnavailable, ShareError


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def exported(trained):
    """The tiny run with its checked exports made once: copies keep them (same weights, same stamp)."""
    from transfer.serving.export import export_run

    export_run(trained.run.path, "bundle")
    return trained


@pytest.fixture
def run(exported, transfer_home) -> RunDir:
    """A private copy of the tiny finished run, in this test's home (tests may delete it)."""
    copy = transfer_home / "sessions" / "owner" / "runs" / exported.run.id
    shutil.copytree(exported.run.path, copy)
    return RunDir(copy)


def demo_folders(home) -> list:
    return list((home / "demos").glob("*")) if (home / "demos").exists() else []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock) -> DemoStore:
    return DemoStore(clock=clock)


def test_a_demo_is_a_snapshot_named_by_the_tokens_hash(store, run, transfer_home, png):
    token, demo = store.create(run.path, title="Colours", description="Try **it**", expires="7d")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token) and len(token) * 6 >= 128  # URL-safe, >= 128 random bits
    assert demo.folder == transfer_home / "demos" / share.token_digest(token)
    assert sorted(p.name for p in demo.folder.iterdir()) == ["demo.json", "labels.json", "live.onnx", "model.json",
                                                            "model.onnx", "model.safetensors", "novelty.safetensors",
                                                            "usage.json"]
    # Nothing on disk under demos/ names or contains the token: a listing or a backup reveals no link.
    for path in (transfer_home / "demos").rglob("*"):
        assert token not in path.name
        if path.is_file() and path.suffix == ".json":
            assert token not in path.read_text()
    assert stat.S_IMODE((transfer_home / "demos").stat().st_mode) == 0o700

    opened = store.open(token)
    assert (opened.title, opened.description, opened.run_id) == ("Colours", "Try **it**", run.id)
    assert opened.classes == run.labels()
    assert opened.val_accuracy == run.status()["best_val_accuracy"]
    answers = json.loads((run.path / "val_predictions.json").read_text())["predictions"]
    assert opened.val_total == len(answers)  # the count travels with the demo, and the measured unsure margin
    assert opened.val_correct == sum(1 for item in answers if item["predicted"] == item["label"])
    assert 0 < opened.unsure_margin <= 0.3 and "points" in opened.unsure_how
    picture = png(1, 7)
    expected = Predictor.from_run(run.path).predict(picture, 3)[0]
    assert Predictor.from_run(opened.folder).predict(picture, 3)[0] == expected


def test_two_demos_get_different_tokens_and_an_empty_title_gets_a_default(store, run):
    first, _ = store.create(run.path)
    second, demo = store.create(run.path, title="  ")
    assert first != second
    assert demo.title.startswith("Which is it?") and all(name in demo.title for name in run.labels())


def test_expiry_follows_the_clock(store, run, clock):
    token, demo = store.create(run.path, expires="1h")
    assert demo.expires_at == clock.now + 3600
    clock.now += 3599
    assert store.open(token).id == demo.id
    clock.now += 1
    with pytest.raises(DemoUnavailable) as expired:
        store.open(token)
    assert str(expired.value) == INVALID_LINK
    assert store.find(token).state(clock.now) == "expired"

    never, _ = store.create(run.path, expires="never")
    clock.now += 10 * 365 * 86400
    assert store.open(never).expires_at is None


def test_revoked_expired_and_unknown_tokens_look_the_same(store, run, clock):
    revoked, _ = store.create(run.path)
    expired, _ = store.create(run.path, expires="1h")
    store.revoke(revoked)
    clock.now += 7200
    unknown = share.new_token()
    messages = set()
    for token in (revoked, expired, unknown, "short", "../../etc/passwd", ""):
        with pytest.raises(DemoUnavailable) as error:
            store.open(token)
        messages.add(str(error.value))
    assert messages == {INVALID_LINK}


def test_revoking_by_token_or_id_deletes_the_model_and_keeps_the_record(store, run, clock):
    token, demo = store.create(run.path, title="gone soon")
    other, kept = store.create(run.path)
    revoked = store.revoke(demo.id)  # the short id `transfer share --list` prints
    assert revoked.revoked_at == clock.now
    assert not (demo.folder / "model.safetensors").exists()
    listed = {d.id: d.state(clock.now) for d in store.list()}
    assert listed == {demo.id: "revoked", kept.id: "live"}
    store.revoke(other)  # by token
    assert store.find(other).state(clock.now) == "revoked"
    with pytest.raises(ShareError, match="no demo"):
        store.revoke("0123456789ab")


def test_a_demo_works_after_its_run_is_deleted_and_in_a_new_store(run, png):
    token, _ = DemoStore().create(run.path, expires="30d")
    picture = png(2, 3)
    expected = Predictor.from_run(run.path).predict(picture, 1)[0].label
    shutil.rmtree(run.path)
    fresh = DemoStore()  # what a restarted server creates
    demo = fresh.open(token)
    assert Predictor.from_run(demo.folder).predict(picture, 1)[0].label == expected
    assert fresh.admit_picture(token, len(picture)) == 1


def test_retraining_the_run_does_not_change_the_demo(store, run):
    token, demo = store.create(run.path)
    before = (demo.folder / "model.safetensors").read_bytes()
    (run.path / "model.safetensors").write_bytes(b"retrained")
    assert (store.open(token).folder / "model.safetensors").read_bytes() == before


def test_pictures_per_minute_and_picture_size_are_capped(run, clock):
    store = DemoStore(clock=clock, pictures_per_minute=3, max_picture_bytes=1000)
    token, _ = store.create(run.path)
    assert [store.admit_picture(token, 10) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(DemoLimitReached, match=r"its 3 pictures for this minute; try again in \d+ seconds"):
        store.admit_picture(token, 10)
    clock.now += 61
    assert store.admit_picture(token, 10) == 4
    with pytest.raises(DemoLimitReached, match="That picture is 5 KB; this demo takes pictures up to 1 KB"):
        store.admit_picture(token, 5000)
    assert store.open(token).pictures_tried == 4  # refused pictures are not counted


def test_caps_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TRANSFER_DEMO_PICTURES_PER_MINUTE", "7")
    monkeypatch.setenv("TRANSFER_DEMO_MAX_PICTURE_MB", "2")
    store = DemoStore()
    assert (store.pictures_per_minute, store.max_picture_bytes) == (7, 2 * 2**20)


def test_concurrent_visitors_are_counted_exactly(run):
    store = DemoStore(pictures_per_minute=10_000)
    token, _ = store.create(run.path)

    def visitor():
        for _ in range(10):
            store.admit_picture(token, 100)

    threads = [threading.Thread(target=visitor) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.open(token).pictures_tried == 60


def test_one_loaded_demo_model_serves_concurrent_visitors(store, run, png):
    """The web app keeps one predictor per demo per process; visitors' threads share it."""
    token, _ = store.create(run.path)
    predictor = Predictor.from_run(store.open(token).folder)
    pictures = [png(i % 3, 40 + i) for i in range(12)]
    expected = [predictor.predict(p, 3)[0] for p in pictures]
    answers: dict[int, object] = {}

    def visitor(index: int):
        answers[index] = predictor.predict(pictures[index], 3)[0]
        if index % 4 == 0:
            predictor.explain(pictures[index])  # Grad-CAM at the same time must not disturb the others

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(len(pictures))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, prediction in answers.items():
        assert prediction.labels == expected[index].labels
        assert prediction.probabilities == pytest.approx(expected[index].probabilities, abs=1e-6)
    assert len(answers) == len(pictures)


def test_only_finished_runs_with_a_model_can_be_shared(store, run, transfer_home):
    run.update_status(state="running")
    with pytest.raises(ShareError, match="only a finished run can be shared"):
        store.create(run.path)
    with pytest.raises(ShareError, match="no run at"):
        store.create(transfer_home / "nowhere")
    assert not demo_folders(transfer_home)


@pytest.mark.parametrize("text, seconds", [("1h", 3600), ("1d", 86400), ("7d", 7 * 86400), ("30d", 30 * 86400),
                                           ("90m", 5400), ("2w", 14 * 86400), ("never", None), (None, None)])
def test_expiry_texts(text, seconds):
    assert share.parse_expiry(text) == seconds


@pytest.mark.parametrize("text", ["0h", "5y", "soon", "-1d", "400d"])
def test_bad_expiry_gets_a_sentence(text):
    with pytest.raises(ShareError):
        share.parse_expiry(text)


def test_the_owner_record_lists_its_demos_with_their_tokens(store, run, transfer_home):
    record = transfer_home / "sessions" / "owner" / share.OWNER_FILE
    mine, _ = store.create(run.path, title="mine", owner_record=record)
    store.create(run.path, title="someone else's")
    owned = store.owned(record)
    assert [(token, demo.title) for token, demo in owned] == [(mine, "mine")]
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_the_snapshot_holds_the_checked_onnx_model_and_the_bundle_when_downloads_are_allowed(store, run, png):
    _, without = store.create(run.path)
    assert (without.folder / share.ONNX_FILE).is_file() and without.bundle_path is None
    token, demo = store.create(run.path, allow_download=True)
    with zipfile.ZipFile(demo.bundle_path) as bundle:
        assert {"model/model.onnx", "model/predict.py", "model/README.md"} <= set(bundle.namelist())
        card = bundle.read("model/README.md").decode()
        assert "Validation accuracy" in card and f"**{demo.val_correct} of {demo.val_total} (" in card  # a count
        assert not [name for name in bundle.namelist() if run.id in name or run.id.encode() in bundle.read(name)]
    predictor = Predictor.from_run(demo.folder)
    assert predictor.fast  # the demo's own model.onnx, through onnxruntime
    picture = png(0, 11)
    reference = Predictor.from_run(run.path, fast=False)  # the studio's PyTorch model
    assert predictor.predict(picture, 1)[0].label == reference.predict(picture, 1)[0].label
    store.revoke(token)
    assert not any((demo.folder / name).exists() for name in ("model.onnx", "bundle.zip", "model.safetensors"))


def test_a_failed_export_refuses_the_download_with_a_sentence(store, run, monkeypatch, transfer_home, png):
    from transfer.serving import export

    def refuse(*args, **kwargs):
        raise export.ExportError("The onnx export of this run was refused: too different.")

    monkeypatch.setattr(export, "export_run", refuse)
    with pytest.raises(ShareError, match="refused: too different. The demo can still be shared without"):
        store.create(run.path, allow_download=True)
    assert not demo_folders(transfer_home)  # no half-made demo left behind
    _, demo = store.create(run.path)  # without the download: predicted with PyTorch instead
    assert not (demo.folder / share.ONNX_FILE).exists()
    predictor = Predictor.from_run(demo.folder)
    assert not predictor.fast and predictor.predict(png(1, 2), 1)[0].label in run.labels()


# --------------------------------------------------------------------------- the command line


def run_cli(capsys, *argv) -> tuple[int, dict]:
    code = cli.main(list(argv))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return code, json.loads(last)


def test_cli_shares_lists_and_revokes(run, capsys, monkeypatch):
    monkeypatch.setenv("TRANSFER_PUBLIC_URL", "https://studio.example.org/")
    code, made = run_cli(capsys, "share", str(run.path), "--title", "From the shell", "--expires", "1d", "--json")
    assert code == 0
    assert made["link"] == f"https://studio.example.org/?demo={made['token']}"
    assert made["title"] == "From the shell" and made["state"] == "live"
    assert made["expires_at"] - made["created_at"] == pytest.approx(86400)

    code, listed = run_cli(capsys, "share", "--list", "--json")
    assert [(d["id"], d["token"]) for d in listed["demos"]] == [(made["id"], made["token"])]

    assert cli.main(["share", "--revoke", made["token"]]) == 0
    assert "revoked" in capsys.readouterr().out
    code, listed = run_cli(capsys, "share", "--list", "--json")
    assert listed["demos"][0]["state"] == "revoked"


def test_cli_errors_are_sentences(run, capsys):
    assert cli.main(["share"]) == 2
    assert "Give a run to share" in capsys.readouterr().err
    code, error = run_cli(capsys, "share", str(run.path), "--expires", "forever", "--json")
    assert code == 2 and "is not an expiry" in error["error"]
    assert cli.main(["share", "--revoke", "nope"]) == 2
    assert "no demo 'nope'" in capsys.readouterr().err
