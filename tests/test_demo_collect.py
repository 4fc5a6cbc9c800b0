"""Demo links that keep visitors' pictures: off by default, said on the demo page, capped,
deleted on revoke, and offered to the owner as a pool on the Data page (AppTest)."""

from __future__ import annotations

from apptools import open_app
from test_page_evaluate import all_text, trained  # noqa: F401 (the shared tiny finished run)
from test_page_predict import encoded
from test_page_share import create_demo, links, open_demo, owner  # noqa: F401 (fixtures)
from test_share import exported  # noqa: F401

from transfer.serving import demo_collect
from transfer.data.pool import pool_pictures
from transfer.serving.share import DemoStore

NOTICE = "The owner of this demo keeps the pictures you try here"


def test_a_demo_keeps_nothing_unless_the_owner_asked(owner):
    token, _ = DemoStore().create(owner[1].path, title="Plain")
    app = open_demo(token)
    assert NOTICE not in all_text(app)
    app.file_uploader(key="demo_pictures").set_value(("mine.png", encoded("red", 1), "image/png")).run()
    demo = DemoStore().open(token)
    assert demo_collect.settings_of(demo) is None and not demo_collect.collected_folder(demo).exists()


def test_a_collecting_demo_says_so_keeps_pictures_within_caps_and_forgets_them_on_revoke(owner, monkeypatch):
    monkeypatch.setenv("TRANSFER_DEMO_COLLECT_MAX_PICTURES", "2")
    session_token, run = owner
    app = open_app("pages/predict.py", token=session_token)
    app.checkbox(key="share_collect").check()
    create_demo(app, "Collecting")
    token = links(app)[0].rsplit("=", 1)[1]

    visitor = open_demo(token)
    assert NOTICE in all_text(visitor)  # before anything is dropped
    pictures = [("a.png", encoded("red", 1)), ("b.png", encoded("blue", 2)), ("c.png", encoded("green", 3))]
    for name, data in pictures:
        visitor.file_uploader(key="demo_pictures").set_value((name, data, "image/png")).run()
        assert not visitor.exception
    demo = DemoStore().open(token)
    kept = pool_pictures(demo_collect.collected_folder(demo))
    assert len(kept) == 2  # the cap: the third picture is predicted, not kept

    data_page = open_app("pages/data.py", token=session_token)
    assert not data_page.exception, data_page.exception
    assert any("Tried by visitors of the demo 'Collecting'" in str(o) for o in data_page.selectbox(key="chosen_pool").options)
    assert any(b.label == "Suggest what to label first" for b in data_page.button)

    DemoStore().revoke(token)
    assert not demo_collect.collected_folder(demo).exists()
