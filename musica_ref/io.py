"""Reading and checking inputs: images (arrays or files) and 300W `.pts` landmark files.

Conventions (docs/model.md §3): images are (H, W, 3) RGB at the API; grayscale is replicated to 3 channels and an
alpha channel dropped. `.pts` files are 1-based (300W): 1 is subtracted on read and added on write.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .errors import InputError

# whole-image copies and conversions go this many rows at a time, so that a large image gets no second
# full-size temporary (load_image, stretch_to_uint8)
STRIP_ROWS = 256
# the largest value a float image may hold: the engine converts pixels to float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


def image_view(image, channels: str = "rgb") -> np.ndarray:
    """Check an image array and return it as an (H, W, C) view, C = 1 (grayscale) or 3, in RGB order, with
    its own dtype: no pixel is copied or converted (rgb_region does that for the part that is needed).

    channels: "rgb" (default), or "bgr" for arrays in OpenCV's order (cv2.imread): their channels are
    reversed (a 4-channel BGRA array loses its alpha first).

    Accepts (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) arrays of uint8, other integer types (16-bit images
    included) or floats; an alpha channel is dropped. Raises InputError for empty arrays, other shapes or
    dtypes, and NaN or inf.
    """
    if not isinstance(image, np.ndarray):
        try:
            image = np.asarray(image)
        except Exception as exc:
            raise InputError(f"image could not be read as an array: {exc}") from exc
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer)
                                   or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"image has dtype {image.dtype}; expected uint8, another integer type or float")
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        pass
    elif image.ndim != 2:
        raise InputError(f"image has shape {image.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image is empty (shape {image.shape})")
    if channels not in ("rgb", "bgr"):
        raise InputError(f'channels must be "rgb" or "bgr", got {channels!r}')
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]                                  # drop alpha
    if channels == "bgr" and image.shape[2] == 3:
        image = image[:, :, ::-1]
    if np.issubdtype(image.dtype, np.floating):
        lo, hi = float(image.min()), float(image.max())         # NaN propagates to both: no copy needed
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError("image has NaN or infinite values")
        if max(-lo, hi) > FLOAT32_MAX:                            # the engine's pixels are float32
            raise InputError(f"image has a value of magnitude {max(-lo, hi):.3g}, beyond float32 (the engine's "
                             f"pixel type, at most {FLOAT32_MAX:.3g}); scale it down (the model normalises each "
                             "face's pixels, so the scale does not matter)")
    return image


def is_rgb(image) -> bool:
    """True if `image` is what the kernels read as it is: (H, W, 3) uint8 or float32, C-contiguous."""
    return (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype in (np.uint8, np.float32) and image.flags.c_contiguous)


def rgb_region(view, rows=None, cols=None) -> np.ndarray:
    """The pixels rows[0] <= r < rows[1], cols[0] <= c < cols[1] (default: all) of an image_view as an
    (h, w, 3) C-contiguous array: uint8 stays uint8, anything else becomes float32 (the model's global
    normalisation makes the value range irrelevant), grayscale is replicated to 3 channels. A region that
    already is such an array (all of a uint8 RGB image, say) is returned as it is, not copied."""
    r0, r1 = rows if rows is not None else (0, view.shape[0])
    c0, c1 = cols if cols is not None else (0, view.shape[1])
    part = view[r0:r1, c0:c1]
    if is_rgb(part):
        return part
    out = np.empty(part.shape[:2] + (3,), np.uint8 if part.dtype == np.uint8 else np.float32)
    out[...] = part                                              # converts, and broadcasts grayscale
    return out


def as_rgb(image, channels: str = "rgb") -> np.ndarray:
    """Check an image array and return it as (H, W, 3), uint8 or float32, C-contiguous, never modifying the
    input (image_view, then rgb_region of all of it). An image that already is one is returned as it is;
    anything else is converted into one new array (grayscale replicated, other dtypes to float32)."""
    return rgb_region(image_view(image, channels))


def stretch_to_uint8(image) -> np.ndarray:
    """An array of any real dtype stretched from its minimum .. maximum to 0 .. 255 as uint8 (for a detector or
    a display), a strip of rows at a time, so a large image gets no full-size float64 temporary."""
    lo, hi = float(image.min()), float(image.max())
    scale = 255.0 / (hi - lo if hi > lo else 1.0)
    out = np.empty(image.shape, np.uint8)
    for y in range(0, image.shape[0], STRIP_ROWS):
        out[y:y + STRIP_ROWS] = (image[y:y + STRIP_ROWS] - lo) * scale
    return out


# the stored pixels of an image whose EXIF orientation (tag 274) is o, as a view of the image as viewers show
# it (TIFF/EXIF 2.3): load_image writes the file's pixels into this view, which puts them upright
_STORED_AS = {
    1: lambda up: up,
    2: lambda up: up[:, ::-1],                                   # mirrored left-right
    3: lambda up: up[::-1, ::-1],                                # turned 180 degrees
    4: lambda up: up[::-1],                                      # mirrored top-bottom
    5: lambda up: up.swapaxes(0, 1),                             # mirrored along the main diagonal
    6: lambda up: np.rot90(up, 1),                               # shown after turning 90 degrees clockwise
    7: lambda up: up[::-1, ::-1].swapaxes(0, 1),                 # mirrored along the other diagonal
    8: lambda up: np.rot90(up, -1),                              # shown after turning 90 degrees anticlockwise
}


def _decoded_to_array(im) -> np.ndarray:
    """A decoded Pillow image -> one new array, upright by its EXIF orientation: (H, W, 3) uint8, or (H, W)
    for 16- and 32-bit grayscale (values kept). The rows are copied a strip at a time, so no second full-size
    copy is made on the way (Pillow's transposition, conversion and tobytes would each make one)."""
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:                                            # an unreadable EXIF block: as stored
        orientation = 1
    orientation = orientation if orientation in _STORED_AS else 1
    W, H = im.size
    deep = im.mode in ("I;16", "I;16B", "I;16L", "I", "F")
    out = stored = None
    for y in range(0, H, STRIP_ROWS):
        strip = im.crop((0, y, W, min(H, y + STRIP_ROWS)))
        if not deep and strip.mode != "RGB":
            strip = strip.convert("RGB")                         # L, LA, P, RGBA, CMYK, ...
        a = np.asarray(strip)
        if out is None:
            out = np.empty(((W, H) if orientation >= 5 else (H, W)) + a.shape[2:], a.dtype)
            stored = _STORED_AS[orientation](out)               # out as the file stores it: (H, W, ...)
        stored[y:y + a.shape[0]] = a
    return out


def load_image(path) -> np.ndarray:
    """Read an image file with Pillow -> (H, W, 3) uint8 (or float32 for 16-bit and float files), turned
    by its EXIF orientation (if any), so that pixel coordinates are those of the image as viewers show it."""
    from PIL import Image, UnidentifiedImageError
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path!r} is a folder, not an image file")
    if not os.path.isfile(path):
        raise InputError(f"image file {path!r} does not exist")
    import warnings
    with warnings.catch_warnings():
        # Pillow's notes on damaged files (skipped tags, a truncated read) are not printed: a file it cannot
        # decode raises below. Its size guard is an error here, not a warning.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            raw = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise InputError(f"{path!r} is larger than the limit of {Image.MAX_IMAGE_PIXELS:,d} pixels "
                             f"(Pillow's guard against decompression bombs); raise it with --max-pixels N on "
                             f"the command line, or PIL.Image.MAX_IMAGE_PIXELS = N in Python") from None
        except UnidentifiedImageError:
            raise InputError(f"{path!r} is not an image file Pillow can read") from None
        except OSError as exc:
            raise InputError(f"{path!r} could not be opened as an image: {exc}") from None
        try:
            with raw:
                raw.load()
                arr = _decoded_to_array(raw)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{path!r} could not be decoded as an image: {exc}") from None
    return as_rgb(arr)


def image_or_path(image):
    """A file path (str or os.PathLike) is read with load_image; anything else (an array) is returned as is."""
    return load_image(image) if isinstance(image, (str, os.PathLike)) else image


def read_pts(path) -> np.ndarray:
    """Read a 300W `.pts` file -> (N, 2) float64 (x, y), 0-based."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path!r} is a folder, not a .pts file")
    if not os.path.isfile(path):
        raise InputError(f"points file {path!r} does not exist")
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw.startswith(b"\xef\xbb\xbf"):                      # a UTF-8 byte-order mark, as some editors write
        raw = raw[3:]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{path!r} is not a text .pts file") from None
    if "{" not in text or "}" not in text:
        raise InputError(f"{path!r} is not a .pts file: no '{{ ... }}' block of points")
    head, rest = text.split("{", 1)
    body = rest.split("}", 1)[0]
    n_declared = None
    for line in head.splitlines():
        if line.strip().lower().startswith("n_points"):
            try:
                n_declared = int(line.split(":", 1)[1])
            except (IndexError, ValueError):
                raise InputError(f"{path!r}: cannot read the n_points line {line.strip()!r}") from None
    pts = []
    for k, line in enumerate(body.split("\n")):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            pts.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise InputError(f"{path!r}: point line {line.strip()!r} is not two numbers 'x y'") from None
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    if n_declared is not None and n_declared != len(arr):
        raise InputError(f"{path!r} declares n_points: {n_declared} but holds {len(arr)} points")
    if len(arr) == 0:
        raise InputError(f"{path!r} holds no points")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path!r} has a non-finite coordinate")
    return arr - 1.0


def write_pts(path, points) -> None:
    """Write (N, 2) 0-based (x, y) points as a 300W `.pts` file (1-based)."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(f"points must have shape (N, 2), got {p.shape}")
    lines = ["version: 1", f"n_points: {len(p)}", "{"]
    lines += [f"{x + 1.0:.4f} {y + 1.0:.4f}" for x, y in p]
    lines.append("}")
    with open(path, "w", encoding="ascii") as fh:
        fh.write("\n".join(lines) + "\n")
