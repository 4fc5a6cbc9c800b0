"""Fixtures shared by the whole test suite.

Every test runs offline with its own ``TRANSFER_HOME``, so caches, runs and downloads of one
test never leak into another or into the user's real home. ``tiny_dataset`` writes a small
folder of class folders with generated pictures that differ per class (so a model can learn
them) and per picture (so no two files share a content hash); the ``make_picture`` and
``write_class_folders`` fixtures hand out the generators for other shapes of data.

Work in other processes (workers, servers, the browser) is awaited with one helper,
``from waiting import wait_for`` (tests/waiting.py): ``wait_for(condition, what, timeout=...)``
asks again until the answer comes and says what never came.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pictures import make_picture as _make_picture
from pictures import write_class_folders as _write_class_folders

TESTS = Path(__file__).resolve().parent
# The ants/bees photos live beside the checkout (../shared), never inside it.
HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"


@pytest.fixture(autouse=True)
def transfer_home(request, tmp_path_factory, monkeypatch) -> Iterator[Path]:
    """A private, empty ``TRANSFER_HOME``, no network and the tests' demo job for every test.

    The home is deleted after a test that passed (runs, exports and caches add up to gigabytes
    over the suite, more than a small CI disk holds) and kept after one that failed, to look at.
    """
    home = tmp_path_factory.mktemp("transfer_home")
    monkeypatch.setenv("TRANSFER_HOME", str(home))
    monkeypatch.setenv("TRANSFER_OFFLINE", "1")
    # Workers and ranks started by a test find the demo job (tests/demo_jobs.py) through these.
    monkeypatch.setenv("TRANSFER_EXTRA_JOBS", "demo_jobs")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    yield home
    if not getattr(request.node, "failed_call", True):
        shutil.rmtree(home, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember on the test whether its body failed, for the fixtures that clean up after it."""
    report = yield
    if report.when == "call":
        item.failed_call = report.failed
    return report


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A folder of 3 class folders (``red``, ``green``, ``blue``), 10 PNG pictures each, 48 x 40 px."""
    return _write_class_folders(tmp_path / "tiny_dataset", {"red": 10, "green": 10, "blue": 10})


@pytest.fixture
def png():
    """``png(class_index, picture_index) -> bytes``: a generated picture encoded as PNG."""

    def encode(class_index: int, picture_index: int) -> bytes:
        buffer = io.BytesIO()
        _make_picture(class_index, picture_index).save(buffer, "PNG")
        return buffer.getvalue()

    return encode


@pytest.fixture
def make_picture():
    """``make_picture(class_index, picture_index, size=(48, 40)) -> PIL.Image``: unique, class-coloured."""
    return _make_picture


@pytest.fixture
def write_class_folders():
    """``write_class_folders(root, {name: count}, size=(48, 40), suffix=".png") -> root``."""
    return _write_class_folders


@pytest.fixture
def hymenoptera() -> Path:
    """The ants/bees data set, when this machine has it."""
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} is not on this machine")
    return HYMENOPTERA
