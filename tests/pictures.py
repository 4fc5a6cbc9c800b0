"""Generated test pictures: unique per index, coloured and striped per class, so a model can learn them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# One base colour per class: different enough that even a linear head separates them.
_CLASS_COLOURS = [(220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 190, 30), (150, 50, 200), (30, 190, 200)]


def make_picture(class_index: int, picture_index: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy picture in the class's colour with a class-specific stripe; unique per index."""
    rng = np.random.default_rng(1000 * class_index + picture_index)
    width, height = size
    base = np.array(_CLASS_COLOURS[class_index % len(_CLASS_COLOURS)], dtype=np.int16)
    pixels = base + rng.integers(-30, 31, size=(height, width, 3), dtype=np.int16)
    stripe = (class_index * 7) % max(1, height - 4)
    pixels[stripe : stripe + 4, :, :] = 255 - base
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_class_folders(
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
            make_picture(class_index, picture_index, size).save(folder / f"{name}_{picture_index:03d}{suffix}")
    return root
