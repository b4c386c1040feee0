"""A drawing from a request, turned into the pixels the model takes by the same preparation as
``handgrad predict`` (:func:`handgrad.train.inference.prepare_image`).

A request gives the drawing either as ``"image"``: a PNG (or JPEG) as base64, optionally as a
``data:image/png;base64,...`` URL (what a browser canvas's ``toDataURL`` gives), or as
``"pixels"``: rows of gray values in [0, 1], light ink on a dark background (any size up to
:data:`MAX_SIDE` a side). Either way the picture is written to a private temporary file and read
back by ``prepare_image``, so a drawing and a file given to ``handgrad predict`` become the same
28x28 input.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from typing import Any

import numpy as np

from handgrad.errors import HandgradError
from handgrad.train.inference import Trained, prepare_image

#: The largest side of a ``pixels`` drawing (a canvas is a few hundred pixels).
MAX_SIDE = 1024
#: Where the temporary PNGs go: memory, when the system has it.
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class DrawingError(ValueError):
    """The request's drawing is missing, malformed or empty (a 4xx answer, never a 500)."""


def drawing_bytes(body: dict[str, Any]) -> bytes:
    """The image file (PNG/JPEG bytes) that ``body`` describes, or :class:`DrawingError`."""
    if "image" in body:
        text = body["image"]
        if not isinstance(text, str) or not text:
            raise DrawingError("image: give a PNG as base64 or as a data:image/png;base64 URL")
        if text.startswith("data:"):
            head, _, text = text.partition(",")
            if ";base64" not in head:
                raise DrawingError("image: a data URL must be base64 (data:image/png;base64,...)")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise DrawingError("image: not valid base64") from None
    if "pixels" in body:
        return _pixels_png(body["pixels"])
    raise DrawingError('no drawing: give "image" (base64 PNG) or "pixels" (rows of 0..1 values)')


def _pixels_png(rows: Any) -> bytes:
    from PIL import Image

    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise DrawingError("pixels: give a non-empty list of rows of numbers in [0, 1]")
    if len(rows) > MAX_SIDE or any(len(r) != len(rows[0]) for r in rows):
        raise DrawingError(f"pixels: rows must have equal lengths, at most {MAX_SIDE} a side")
    if not rows[0] or len(rows[0]) > MAX_SIDE:
        raise DrawingError(f"pixels: give 1 to {MAX_SIDE} values per row")
    try:
        a = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise DrawingError("pixels: every value must be a number in [0, 1]") from None
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise DrawingError("pixels: every value must be a number in [0, 1]")
    buffer = io.BytesIO()
    Image.fromarray((a * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_drawing(data: bytes, trained: Trained) -> np.ndarray:
    """The (H, W) pixels in [0, 1] the model sees for the image file ``data``."""
    fd, name = tempfile.mkstemp(prefix="handgrad-drawing-", suffix=".png", dir=_TMP)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return prepare_image(name, trained)
    except HandgradError as exc:  # the message names the temporary file: name the drawing
        raise DrawingError(str(exc).replace(name, "drawing")) from None
    finally:
        os.unlink(name)
