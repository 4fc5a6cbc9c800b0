"""Fixtures shared by the whole test suite.

Every test runs offline with its own ``TRANSFER_HOME``, so caches, runs and downloads of one
test never leak into another or into the user's real home. ``tiny_dataset`` writes a small
folder of class folders with generated pictures that differ per class (so a model can learn
them) and per picture (so no two files share a content hash); the ``make_picture`` and
``write_class_folders`` fixtures hand out the generators for other shapes of data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The ants/bees photos live beside the checkout (../shared), never inside it.
HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"

# One base colour per class: different enough that even a linear head separates them.
_CLASS_COLOURS = [(220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 190, 30), (150, 50, 200), (30, 190, 200)]


@pytest.fixture(autouse=True)
def transfer_home(tmp_path_factory, monkeypatch) -> Path:
    """A private, empty ``TRANSFER_HOME`` and no network for every test."""
    home = tmp_path_factory.mktemp("transfer_home")
    monkeypatch.setenv("TRANSFER_HOME", str(home))
    monkeypatch.setenv("TRANSFER_OFFLINE", "1")
    return home


def _make_picture(class_index: int, picture_index: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy picture in the class's colour with a class-specific stripe; unique per index."""
    rng = np.random.default_rng(1000 * class_index + picture_index)
    width, height = size
    base = np.array(_CLASS_COLOURS[class_index % len(_CLASS_COLOURS)], dtype=np.int16)
    pixels = base + rng.integers(-30, 31, size=(height, width, 3), dtype=np.int16)
    stripe = (class_index * 7) % max(1, height - 4)
    pixels[stripe : stripe + 4, :, :] = 255 - base
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_class_folders(
    root: Path,
    classes: dict[str, int],
    *,
    size: tuple[int, int] = (48, 40),
    suffix: str = ".png",
) -> Path:
    """Write ``{class name: picture count}`` as a folder of class folders under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for class_index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(exist_ok=True)
        for picture_index in range(count):
            _make_picture(class_index, picture_index, size).save(folder / f"{name}_{picture_index:03d}{suffix}")
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A folder of 3 class folders (``red``, ``green``, ``blue``), 10 PNG pictures each, 48 x 40 px."""
    return _write_class_folders(tmp_path / "tiny_dataset", {"red": 10, "green": 10, "blue": 10})


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
