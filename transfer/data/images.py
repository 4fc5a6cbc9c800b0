"""Open any picture a user gives us as a plain RGB image, or say in a few words why not.

Everything in the studio that reads pixels goes through :func:`open_image`, so the same rules hold
everywhere: a pixel cap against decompression bombs, EXIF orientation applied, the first frame of an
animation, transparency composited on white and every colour mode turned into 8-bit RGB. The rules
themselves (formats, cap, orientation, colour modes) are :mod:`transfer.data.picture`'s, which
exported bundles carry as their predict.py; this module adds the studio's sources (paths, bytes,
streams) and its short reasons for a picture it cannot use.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from transfer.data import picture
from transfer.core.errors import TransferError

#: File name endings read as images; anything else in a data set is skipped as "not an image".
IMAGE_EXTENSIONS = frozenset(picture.PICTURE_EXTENSIONS)

# Damaged TIFF and EXIF metadata make Pillow warn once per file; the data report already
# says which files are damaged, so these warnings would only bury it.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
# Our own pixel cap is checked before any decoding, so Pillow's milder bomb warning is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Short reasons, shared with the data report so the web page and the CLI can group skips.
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not an image"
TOO_MANY_PIXELS = "too many pixels"
EMPTY = "empty"
TRUNCATED = "truncated"

_ADVICE = {
    UNREADABLE: "The file could not be decoded; re-save it as JPEG or PNG, or remove it.",
    NOT_AN_IMAGE: "The file is not a picture Transfer Studio can read (JPEG, PNG, GIF, BMP, WebP, TIFF).",
    TOO_MANY_PIXELS: "The picture has more pixels than allowed; downscale it before adding it.",
    EMPTY: "The file holds no data; remove it or copy it again.",
    TRUNCATED: "The file ends too early (an interrupted copy or download); copy it again.",
}

# EXIF orientations 5 to 8 turn the picture by 90 degrees, so width and height swap.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


class ImageError(TransferError):
    """A picture that cannot be used; ``reason`` is one of the short reasons above."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        message = _ADVICE.get(reason, "The picture cannot be used.")
        super().__init__(f"{reason}: {detail}. {message}" if detail else f"{reason}. {message}")


@dataclass(frozen=True)
class ImageInfo:
    """What a picture is, as stored: size after EXIF orientation, original mode and format."""

    width: int
    height: int
    mode: str
    format: str
    frames: int = 1


def open_image(
    source: Path | str | bytes | BinaryIO,
    max_pixels: int = picture.MAX_PIXELS,
    *,
    min_short_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` into an RGB image, EXIF orientation applied, first frame only.

    ``min_short_side`` lets JPEG decoding skip work: the picture is decoded at the smallest
    DCT scale whose short side is still at least that many pixels (the caller resizes after).
    Raises :class:`ImageError` for anything that is not a usable picture.
    """
    image, _ = _decode(source, max_pixels, min_short_side)
    return image


def inspect_image(source: Path | str | bytes | BinaryIO, max_pixels: int = picture.MAX_PIXELS) -> ImageInfo:
    """Check that ``source`` decodes completely and describe it, decoding as little as possible."""
    _, info = _decode(source, max_pixels, min_short_side=1)
    return info


def check_pixel_count(source: bytes, max_pixels: int) -> None:
    """Raise ImageError when the picture's header declares more than ``max_pixels`` (nothing is
    decoded: a cheap first check before the work a picture costs)."""
    try:
        with Image.open(io.BytesIO(source), formats=_safe_formats()) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - not a picture: the full decode later says why
        return
    if width * height > max_pixels:
        raise ImageError(TOO_MANY_PIXELS, f"{width} x {height} pixels, the limit is {max_pixels:,}")


def thumbnail(source: Path | str | bytes | BinaryIO, size: int = 128, max_pixels: int = picture.MAX_PIXELS) -> Image.Image:
    """A small RGB copy whose longer side is at most ``size`` pixels (for grids of pictures)."""
    image = open_image(source, max_pixels, min_short_side=size)
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return image


def to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a contiguous uint8 array of shape (height, width, 3)."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


# --------------------------------------------------------------------------- decoding


def _decode(source, max_pixels: int, min_short_side: int | None) -> tuple[Image.Image, ImageInfo]:
    stream = _as_stream(source)
    try:
        with stream:
            return _decode_stream(stream, max_pixels, min_short_side)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(TOO_MANY_PIXELS, str(error)) from None
    except UnidentifiedImageError:
        raise ImageError(NOT_AN_IMAGE, "no known picture format") from None
    except (OSError, SyntaxError, EOFError) as error:
        text = str(error)
        if "truncated" in text.lower() or isinstance(error, EOFError) or "broken data stream" in text:
            raise ImageError(TRUNCATED, text or "unexpected end of file") from None
        raise ImageError(UNREADABLE, text or type(error).__name__) from None
    except Exception as error:  # noqa: BLE001 - a hostile file may trip any decoder bug; never crash
        raise ImageError(UNREADABLE, f"{type(error).__name__}: {error}") from None


def _as_stream(source) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError(EMPTY, "0 bytes")
        return io.BytesIO(data)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if path.stat().st_size == 0:
                raise ImageError(EMPTY, "0 bytes")
            return open(path, "rb")
        except OSError as error:
            raise ImageError(UNREADABLE, error.strerror or str(error)) from None
    return _NonClosing(source)


class _NonClosing(io.BufferedIOBase):
    """Wraps a caller's stream so that leaving our ``with`` block does not close it."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw

    def read(self, size=-1):
        return self._raw.read(size)

    def read1(self, size=-1):
        return self._raw.read(size)

    def readinto(self, buffer):
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._raw.seek(offset, whence)

    def tell(self):
        return self._raw.tell()

    def readable(self):
        return True

    def seekable(self):
        return True

    def close(self):
        pass


def _decode_stream(stream: BinaryIO, max_pixels: int, min_short_side: int | None) -> tuple[Image.Image, ImageInfo]:
    start = stream.tell()
    if not stream.read(1):
        raise ImageError(EMPTY, "0 bytes")
    stream.seek(start)
    with Image.open(stream, formats=_safe_formats()) as image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageError(EMPTY, f"{width} x {height} pixels")
        if width * height > max_pixels:
            raise ImageError(TOO_MANY_PIXELS, f"{width} x {height} pixels, the limit is {max_pixels:,}")
        orientation = picture.exif_orientation(image)
        info = _describe(image, orientation)
        image.seek(0)
        if min_short_side and image.format in ("JPEG", "MPO"):
            image.draft(image.mode, (min_short_side, min_short_side))
        image.load()
        # copy() detaches the first frame's pixels from the file, so the file can close.
        image = picture.apply_orientation(image.copy(), orientation)
        return _to_rgb(image), info


def _safe_formats() -> list[str]:
    Image.init()  # registers every decoder; Pillow otherwise loads only a few common ones
    return [name for name in picture.SAFE_FORMATS if name in Image.OPEN]


def _describe(image: Image.Image, orientation: int) -> ImageInfo:
    width, height = image.size
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(width, height, image.mode, image.format or "?", getattr(image, "n_frames", 1))


def _to_rgb(image: Image.Image) -> Image.Image:
    try:
        return picture.to_rgb(image)
    except ValueError as error:
        raise ImageError(UNREADABLE, str(error)) from None
