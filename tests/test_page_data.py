"""The Data page in AppTest: zip and folder upload, class-by-class building, the demo set,
hostile input, and the privacy of one browser session's uploads."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from apptools import open_app

from transfer.runtime.access import issue_session_token
from transfer.data.dataset import demo_dataset_path

TOKEN_A = TOKEN_B = ""  # two sessions' tokens, issued per test by the test's own home
PAGE = "pages/data.py"


@pytest.fixture(autouse=True)
def _issued_tokens(transfer_home):
    global TOKEN_A, TOKEN_B
    TOKEN_A, TOKEN_B = issue_session_token(), issue_session_token()


@pytest.fixture
def pets_zip(png) -> bytes:
    """cats: 5, dogs: 7 pictures inside one enclosing folder, plus macOS litter."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for class_index, (name, count) in enumerate({"cats": 5, "dogs": 7}.items()):
            for index in range(count):
                archive.writestr(f"pets/{name}/{index}.png", png(class_index, index))
        archive.writestr("__MACOSX/pets/._cats", b"junk")
    return buffer.getvalue()


def counts(app) -> dict[str, tuple[int, int]]:
    """The report's table as {class: (training, validation)}."""
    table = app.table[0].value
    return {row["Class"]: (row["Training"], row["Validation"]) for _, row in table.iterrows()}


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def button(app, label: str):
    return next(b for b in app.button if b.label == label)


def upload_zip(app, name: str, data: bytes):
    app.file_uploader(key="zip#0").set_value((name, data, "application/zip"))
    return app.run()


def add_class(app, name: str):
    app.text_input(key="new_class_name").input(name)
    button(app, "Add class").click()
    return app.run()


def test_zip_upload_shows_counts_chart_and_becomes_the_sessions_data_set(pets_zip, transfer_home):
    app = upload_zip(open_app(PAGE, token=TOKEN_A), "pets.zip", pets_zip)
    assert not app.exception
    assert counts(app) == {"cats": (4, 1), "dogs": (6, 1)}
    assert "Using the pictures in pets.zip." in texts(app.success)
    assert any("12 pictures in 2 classes are ready" in text for text in texts(app.success))
    assert app.get("plotly_chart"), "the per-class bar chart is drawn"
    thumbnails = app.get("image")
    assert len(thumbnails) == 2 and [len(row.value) for row in thumbnails] == [5, 7], "a thumbnail row per class"
    assert app.file_uploader(key="zip#1").value is None, "the uploader is emptied once the zip is saved"
    choice = json.loads((transfer_home / "sessions" / TOKEN_A / "dataset.json").read_text())
    assert choice["name"] == "pets.zip" and choice["source"].startswith(str(transfer_home / "sessions" / TOKEN_A))
    # The choice follows the session to another page (AppTest keeps the sidebar of a first run
    # only, so a fresh open of the home page reads it) and back.
    assert any("pets.zip" in text for text in texts(open_app(token=TOKEN_A).sidebar.caption))
    app.switch_page("pages/home.py").run()
    app.switch_page(PAGE).run()
    assert app.subheader[0].value == "Data set: pets.zip" and counts(app) == {"cats": (4, 1), "dogs": (6, 1)}


def test_the_split_sentence_matches_the_split_and_small_uneven_classes_get_advice(write_class_folders, tmp_path):
    from apptools import session_with_dataset

    source = write_class_folders(tmp_path / "few", {"cat": 2, "dog": 2, "owl": 6})
    token, _ = session_with_dataset(source)
    app = open_app(PAGE, token=token)
    assert not app.exception, app.exception
    split = next(m.value for m in app.markdown if m.value.startswith("**The split**"))
    assert "3 of the 10 pictures (30 %) are set aside, per class as the table shows, for validation" in split
    assert "You asked for 20 % of each class" in split
    advice = " ".join(w.value for w in app.warning)
    assert "Too few pictures to learn from: cat (2 pictures), dog (2 pictures), owl (6 pictures) have fewer than 10" in advice
    assert "Label more of these classes before training" in advice
    assert "The classes are uneven: from 2 pictures (cat, dog) to 6 pictures. The studio compensates" in advice

    even = write_class_folders(tmp_path / "even", {"cat": 2, "dog": 2})
    token, _ = session_with_dataset(even)
    app = open_app(PAGE, token=token)
    split = next(m.value for m in app.markdown if m.value.startswith("**The split**"))
    assert "1 of the 2 pictures of each class is set aside for validation" in split
    assert not any("uneven" in w.value for w in app.warning)


def test_split_slider_changes_the_split_and_is_kept_with_the_data_set(pets_zip, transfer_home):
    app = upload_zip(open_app(PAGE, token=TOKEN_A), "pets.zip", pets_zip)
    app.slider(key="val_fraction_widget").set_value(0.4).run()
    assert counts(app) == {"cats": (3, 2), "dogs": (4, 3)}
    choice = json.loads((transfer_home / "sessions" / TOKEN_A / "dataset.json").read_text())
    assert choice["val_fraction"] == pytest.approx(0.4)
    fresh = open_app(PAGE, token=TOKEN_A)  # a refreshed tab reads the split back
    assert fresh.slider(key="val_fraction_widget").value == pytest.approx(0.4)
    assert counts(fresh) == {"cats": (3, 2), "dogs": (4, 3)}


def test_folder_upload_rebuilds_class_folders_without_escaping(png, transfer_home):
    app = open_app(PAGE, token=TOKEN_A)
    files = [(f"pets/{name}/{i}.png", png(c, i), "image/png") for c, name in enumerate(["cats", "dogs"]) for i in range(3)]
    files += [("pets/../../escaped.png", png(0, 9), "image/png"), ("pets/notes.txt", b"hello", "text/plain")]
    app.file_uploader(key="folder#0").set_value(files)
    app.run()
    assert not app.exception
    assert counts(app) == {"cats": (2, 1), "dogs": (2, 1)}
    assert app.subheader[0].value == "Data set: pets"
    assert not list(transfer_home.rglob("escaped.png")), "a '..' name never lands anywhere"
    skipped = app.dataframe[0].value
    assert "unsafe path" in set(skipped["Reason"]) and "not an image" in set(skipped["Reason"])


def test_build_two_classes_by_upload_and_webcam_then_remove_pictures(png, make_picture):
    app = open_app(PAGE, token=TOKEN_A)
    add_class(app, "cat")
    add_class(app, "dog")
    assert not app.exception
    app.file_uploader(key="add:cat#0").set_value([(f"c{i}.png", png(0, i), "image/png") for i in range(4)])
    app.run()
    app.file_uploader(key="add:dog#0").set_value(
        [(f"d{i}.png", png(1, i), "image/png") for i in range(3)] + [("broken.png", b"not a picture", "image/png")]
    )
    app.run()
    assert any("broken.png" in text and "not usable" in text for text in texts(app.warning))
    assert app.subheader[0].value == "Data set: Your classes"
    assert counts(app) == {"cat": (3, 1), "dog": (2, 1)}

    app.toggle(key="webcam_on:dog").set_value(True).run()
    photo = io.BytesIO()
    make_picture(1, 50).save(photo, "JPEG")
    app.camera_input(key="webcam:dog#0").set_value(("shot.jpg", photo.getvalue(), "image/jpeg"))
    app.run()
    assert "Added 1 picture to dog." in texts(app.success)
    assert counts(app)["dog"] == (3, 1)

    app.button(key="picture:cat:c0.png").click().run()
    assert counts(app)["cat"] == (2, 1)
    app.button(key="remove_class:dog").click().run()
    assert not app.exception
    assert any("only one class (cat)" in text for text in texts(app.error))


def test_a_class_with_one_picture_is_a_blocking_error_that_names_it(png):
    app = open_app(PAGE, token=TOKEN_A)
    add_class(app, "apple")
    add_class(app, "pear")
    app.file_uploader(key="add:apple#0").set_value([(f"a{i}.png", png(0, i), "image/png") for i in range(3)])
    app.run()
    app.file_uploader(key="add:pear#0").set_value(("p.png", png(1, 0), "image/png"))
    app.run()
    assert not app.exception
    assert any("The class pear has only 1 readable picture" in text for text in texts(app.error))
    assert not any("ready for training" in text for text in texts(app.success))


def test_class_names_that_clash_or_name_a_split_are_refused_with_a_sentence():
    app = open_app(PAGE, token=TOKEN_A)
    add_class(app, "cat")
    add_class(app, "Cat")
    assert any("already a class called Cat" in text for text in texts(app.error))
    add_class(app, "val")
    assert any("reserved" in text for text in texts(app.error))
    app.text_input(key="class_name:cat").input("Val").run()
    assert any("reserved" in text for text in texts(app.error))
    assert app.text_input(key="class_name:cat").value == "cat", "a refused rename shows the old name again"
    app.text_input(key="class_name:cat").input("kitten").run()
    assert app.text_input(key="class_name:kitten").value == "kitten"
    assert not app.exception


def test_demo_button_selects_the_demo_set():
    assert demo_dataset_path().is_dir(), "the demo data set ships with the package"
    app = open_app(PAGE, token=TOKEN_A)
    button(app, "Use the demo data set").click().run()
    assert not app.exception
    assert app.subheader[0].value == "Data set: Demo data set"
    table = counts(app)
    assert len(table) >= 3 and all(sum(row) >= 30 for row in table.values())
    assert not texts(app.error)


def test_a_damaged_zip_gives_a_sentence_not_a_traceback():
    app = upload_zip(open_app(PAGE, token=TOKEN_A), "holiday.zip", b"PK\x03\x04 this is not really a zip")
    assert not app.exception
    [error] = texts(app.error)
    assert error.startswith("holiday.zip: The archive cannot be read") and "try again" in error
    assert "No data set chosen yet" in app.info[0].value


def test_a_hostile_zip_writes_nothing_outside_and_says_what_to_do(transfer_home, png):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../outside.png", png(0, 1))
        archive.writestr("/etc/absolute.png", png(0, 2))
        link = zipfile.ZipInfo("cats/link.png")
        link.external_attr = (0o120777 << 16)  # a symbolic link entry
        archive.writestr(link, "/etc/passwd")
        archive.writestr("cats/readme.txt", "hello")
    app = upload_zip(open_app(PAGE, token=TOKEN_A), "evil.zip", buffer.getvalue())
    assert not app.exception
    assert any("No readable picture was found" in text for text in texts(app.error))
    reasons = set(app.dataframe[0].value["Reason"])
    assert {"unsafe path", "link", "not an image"} <= reasons
    assert not list(transfer_home.parent.rglob("outside.png")) and not list(transfer_home.rglob("absolute.png"))


def test_two_sessions_never_see_each_others_uploads(pets_zip, png, transfer_home):
    first = upload_zip(open_app(PAGE, token=TOKEN_A), "pets.zip", pets_zip)
    add_class(first, "secret")
    first.file_uploader(key="add:secret#0").set_value(("s.png", png(2, 0), "image/png"))
    first.run()

    second = open_app(PAGE, token=TOKEN_B)
    assert not second.exception
    assert "No data set chosen yet" in second.info[0].value
    assert not [t for t in second.text_input if t.key and t.key.startswith("class_name:")]
    assert "Data set: none chosen yet" in texts(open_app(token=TOKEN_B).sidebar.caption)
    uploads_b = transfer_home / "sessions" / TOKEN_B / "uploads"
    assert not list(uploads_b.rglob("*.png"))
    assert list((transfer_home / "sessions" / TOKEN_A / "uploads").rglob("s.png"))
