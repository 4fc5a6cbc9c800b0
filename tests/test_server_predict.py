"""The web server's prediction without torch (transfer.serving.server_predict) and its Grad-CAM child
(transfer.serving.explainer), over a real tiny finished run: the same answers as the PyTorch-side
Predictor, heat maps from the child process, several threads at once, a child that died is
replaced; and Predictor.explain stays right when threads ask for their first heat map together."""

from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np

from pictures import make_picture as _make_picture
from test_page_evaluate import TrainedSession, in_trained_home, trained  # noqa: F401 (fixtures)
from transfer.serving.explainer import Explainer
from transfer.serving.export import export_run
from transfer.serving.predict import Predictor
from transfer.serving.server_predict import ServerPredictor, predict_zip_in_child


def encoded(class_index: int, seed: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    _make_picture(class_index, seed, (80, 64)).save(buffer, format=fmt)
    return buffer.getvalue()


PICTURES = [encoded(i % 3, 900 + i, "JPEG" if i % 2 else "PNG") for i in range(6)]


def test_the_server_predicts_what_the_studio_predicts(in_trained_home):
    run = in_trained_home.run.path
    export_run(run, "onnx")  # the page makes it through a child process; here directly
    server = ServerPredictor(run)
    studio = Predictor.from_run(run)
    assert server.fast and server.labels == studio.labels
    for ours, theirs in zip(server.predict(PICTURES, 3), studio.predict(PICTURES, 3)):
        assert ours.labels == theirs.labels
        assert np.allclose(ours.probabilities, theirs.probabilities, atol=1e-6)
        assert ours.to_dict().keys() == theirs.to_dict().keys()


def test_a_zip_is_predicted_by_a_child_process(in_trained_home):
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, data in enumerate(PICTURES[:3]):
            archive.writestr(f"p/{index}.png", data)
        archive.writestr("p/readme.txt", "not a picture")
    result = predict_zip_in_child(in_trained_home.run.path, buffer.getvalue(), 2)
    assert len(result.rows) == 3 and len(result.skipped) == 1
    table = result.table_rows()
    assert len(table) == 4 and isinstance(table[0]["probability"], float)
    assert result.csv_bytes().startswith(b"file,label,probability")


def test_heat_maps_come_from_the_explainer_child_and_match_the_studio(in_trained_home):
    run = in_trained_home.run.path
    explainer = Explainer()
    try:
        found, note = explainer.layer(run)
        assert found and note
        expected = Predictor.from_run(run).explain(PICTURES[0])
        heat_map = explainer.explain(run, PICTURES[0])
        assert heat_map.note == expected.layer and heat_map.label == expected.label
        assert heat_map.overlay.shape == np.asarray(expected.overlay()).shape
        assert np.abs(heat_map.overlay.astype(int) - np.asarray(expected.overlay()).astype(int)).max() <= 2

        answers, errors = {}, []

        def ask(index: int) -> None:
            try:
                answers[index] = explainer.explain(run, PICTURES[index % 2]).overlay
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors
        assert np.array_equal(answers[0], answers[2]) and np.array_equal(answers[1], answers[3])

        os.kill(explainer.pid, signal.SIGKILL)  # a child that died is replaced on the next request
        explainer._process.wait()
        assert np.array_equal(explainer.explain(run, PICTURES[0]).overlay, answers[0])
    finally:
        explainer.close()


def test_first_heat_maps_asked_from_several_threads_at_once_are_right(in_trained_home):
    """The layer probe runs under the Grad-CAM lock: threads that all start with a fresh model
    get the heat maps a single thread gets."""
    run = in_trained_home.run.path
    expected = [Predictor.from_run(run).explain(data).cam for data in PICTURES[:3]]
    predictor = Predictor.from_run(run)
    results, errors = {}, []

    def explain(index: int) -> None:
        try:
            results[index] = predictor.explain(PICTURES[index % 3]).cam
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=explain, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    for index, cam in results.items():
        assert np.allclose(cam, expected[index % 3], atol=1e-5)
