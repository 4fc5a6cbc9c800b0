"""AppTest: "Share a demo" on the Predict and Evaluate pages (create, list, revoke) and the demo
page a link opens (only the demo, predictions, caps, and one sentence for every dead link)."""

from __future__ import annotations

import json
import secrets
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from apptools import ROOT, open_app
from test_page_evaluate import all_text, trained  # noqa: F401 (the shared tiny finished run)
from test_page_predict import encoded, top_k_charts
from test_share import exported  # noqa: F401 (the tiny run with its exports made once)
from transfer.serving import share
from transfer.serving.predict import Predictor
from transfer.core.runs import RunDir
from transfer.serving.share import INVALID_LINK, DemoStore
from transfer.models.run_names import run_name
from transfer.runtime.access import issue_session_token


def new_session_token() -> str:
    """A session token this home's server accepts: issued and signed once the access rules
    (transfer.runtime.access) are merged, any well-formed token before that."""
    try:
        from transfer.runtime.access import issue_session_token
    except ImportError:
        return secrets.token_urlsafe(24)
    return issue_session_token()


@pytest.fixture
def owner(exported, transfer_home) -> tuple[str, RunDir]:
    """A session (its token) in this test's home holding a copy of the tiny finished run."""
    token = new_session_token()
    copy = transfer_home / "sessions" / token / "runs" / exported.run.id
    shutil.copytree(exported.run.path, copy)
    return token, RunDir(copy)


def create_demo(app: AppTest, title: str, expiry: str = "7d", description: str = "") -> AppTest:
    app.text_input(key="share_title").input(title)
    app.text_area(key="share_description").input(description)
    app.selectbox(key="share_expiry").set_value(expiry)
    next(b for b in app.button if b.label == "Create the demo link").click().run()
    assert not app.exception
    return app


def links(app: AppTest) -> list[str]:
    return [block.value for block in app.code if "?demo=" in block.value]


def open_demo(token: str) -> AppTest:
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    app.query_params["demo"] = token
    app.run()
    assert not app.exception
    return app


def test_owner_creates_lists_and_revokes_a_demo_on_the_predict_page(owner, monkeypatch, transfer_home):
    monkeypatch.setenv("TRANSFER_PUBLIC_URL", "https://studio.example.org")
    session_token, run = owner
    app = open_app("pages/predict.py", token=session_token)
    create_demo(app, "Colour guesser", expiry="1d", description="Drop a *colour*.")
    shown = links(app)
    assert shown and all(link.startswith("https://studio.example.org/?demo=") for link in shown)
    token = shown[0].rsplit("=", 1)[1]
    assert len(token) >= 22

    record = transfer_home / "sessions" / session_token / share.OWNER_FILE
    assert json.loads(record.read_text())["tokens"] == [token]
    demo = DemoStore().open(token)
    assert (demo.title, demo.description, demo.run_id) == ("Colour guesser", "Drop a *colour*.", run.id)
    assert demo.expires_at - demo.created_at == pytest.approx(86400)
    text = all_text(app)
    assert "**Colour guesser**" in text and f"run {run_name(run)}" in text and "0 pictures tried" in text

    app.button(key=f"revoke_{demo.id}").click().run()
    assert not app.exception
    assert "_revoked_" in all_text(app)
    assert not links(app) and not [b for b in app.button if b.key == f"revoke_{demo.id}"]
    assert open_demo(token).error[0].value == INVALID_LINK


def test_the_evaluate_page_shares_too_and_lists_the_sessions_demos(owner):
    session_token, run = owner
    app = open_app("pages/evaluate.py", token=session_token)
    create_demo(app, "From Evaluate")
    assert len(links(app)) == 2  # the new link, and the same link in the list
    # another project sees none of them (a visit without a link would continue this project: on a
    # studio without a password every project is the one person's)
    other = open_app("pages/evaluate.py", token=issue_session_token())
    assert "From Evaluate" not in all_text(other)


def test_the_base_url_is_the_owners_address_when_no_public_url_is_set(owner, monkeypatch):
    monkeypatch.delenv("TRANSFER_PUBLIC_URL", raising=False)
    app = create_demo(open_app("pages/predict.py", token=owner[0]), "local")
    assert links(app)[0].startswith("http://localhost:8501/?demo=")  # AppTest has no browser address


def test_the_demo_page_shows_only_the_demo_and_predicts(owner, monkeypatch):
    session_token, run = owner
    token, demo = DemoStore().create(run.path, title="Colours", description="Red, green or blue?")
    app = open_demo(token)
    assert app.title[0].value == "Colours"
    assert "Red, green or blue?" in all_text(app)
    assert all(f"`{name}`" in all_text(app) for name in run.labels())
    assert app.metric[0].label == "Validation accuracy"
    assert app.metric[0].value == f"{demo.val_correct} of {demo.val_total}"  # a count, with its range below
    assert any(c.value.startswith(f"{demo.val_correct} of {demo.val_total} (") for c in app.caption)
    assert not app.sidebar.children  # no sidebar content
    assert "s" not in app.query_params  # no session created for a visitor
    page_text = all_text(app)
    for private in (session_token, run.id, str(run.path), "colours"):
        assert private not in page_text
    assert not app.get("download_button")  # download not allowed (and no bundle)

    picture = encoded("blue", 5)
    app.file_uploader(key="demo_pictures").set_value(("mine.png", picture, "image/png")).run()
    assert not app.exception
    prediction = Predictor.from_run(run.path).predict(picture, 1)[0]
    assert f"Prediction: **{'None of these' if prediction.unknown else prediction.label}**" in all_text(app)
    assert len(top_k_charts(app)) == 1
    app.toggle(key="demo_cam").set_value(True).run()  # Grad-CAM: the same picture is not counted again
    assert not app.exception and len(app.image) == 2
    assert DemoStore().open(token).pictures_tried == 1


def test_the_demo_page_caps_pictures_per_minute_and_size(owner, monkeypatch):
    monkeypatch.setenv("TRANSFER_DEMO_PICTURES_PER_MINUTE", "2")
    token, _ = DemoStore().create(owner[1].path)
    app = open_demo(token)
    pictures = [(f"p{i}.png", encoded("red", 20 + i), "image/png") for i in range(3)]
    app.file_uploader(key="demo_pictures").set_value(pictures).run()
    assert not app.exception
    assert len(top_k_charts(app)) == 2
    warnings = [w.value for w in app.warning]
    assert len(warnings) == 1 and warnings[0].startswith("p2.png: This demo has had its 2 pictures for this minute")

    monkeypatch.setenv("TRANSFER_DEMO_MAX_PICTURE_MB", "0.001")
    app.camera_input(key="demo_webcam").set_value(("shot.jpg", encoded("red", 40, "JPEG"), "image/jpeg")).run()
    assert any(w.value.startswith("webcam picture: That picture is") and "takes pictures up to 1 KB" in w.value
               for w in app.warning)


@pytest.mark.parametrize("how", ["unknown", "revoked", "expired", "malformed"])
def test_every_dead_link_gets_the_same_sentence_and_no_drop_zone(owner, how):
    store = DemoStore()
    token, demo = store.create(owner[1].path, title="secret title")
    if how == "unknown":
        token = share.new_token()
    elif how == "revoked":
        store.revoke(token)
    elif how == "expired":
        record = json.loads((demo.folder / share.DEMO_FILE).read_text())
        (demo.folder / share.DEMO_FILE).write_text(json.dumps({**record, "expires_at": record["created_at"] - 1}))
    else:
        token = "../" + token
    app = open_demo(token)
    assert [e.value for e in app.error] == [INVALID_LINK]
    assert not app.file_uploader and not app.camera_input
    assert "secret title" not in all_text(app) and "s" not in app.query_params


def test_the_bundle_download_is_offered_only_when_the_owner_allowed_it(owner):
    store = DemoStore()
    allowed, _ = store.create(owner[1].path, title="Take it away", allow_download=True)
    app = open_demo(allowed)
    buttons = app.get("download_button")
    assert len(buttons) == 1 and "Download the model" in buttons[0].proto.label
    assert not open_demo(store.create(owner[1].path)[0]).get("download_button")


def test_the_owner_can_allow_the_download_from_the_form(owner):
    app = open_app("pages/predict.py", token=owner[0])
    app.checkbox(key="share_download").check()
    create_demo(app, "With the bundle")
    token = links(app)[0].rsplit("=", 1)[1]
    assert DemoStore().open(token).bundle_path is not None


def test_a_damaged_snapshot_gets_the_sentence_not_a_traceback(owner):
    token, demo = DemoStore().create(owner[1].path, title="broken")
    (demo.folder / "model.json").unlink()
    app = open_demo(token)
    assert [e.value for e in app.error] == [INVALID_LINK]
    assert not app.file_uploader and "broken" not in all_text(app)
