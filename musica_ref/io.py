"""Reading and checking inputs: images (arrays or files) and 300W `.pts` landmark files.

Conventions (spec 3): images are (H, W, 3) RGB at the API; grayscale is replicated to 3 channels and an
alpha channel dropped. `.pts` files are 1-based (300W): 1 is subtracted on read and added on write.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import InputError


def as_rgb(image, channels: str = "rgb") -> np.ndarray:
    """Check an image array and return it as (H, W, 3), uint8 or float32, never modifying the input.

    channels: "rgb" (default), or "bgr" for arrays in OpenCV's order (cv2.imread): their channels are
    reversed (a 4-channel BGRA array loses its alpha first).

    Accepts (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) arrays of uint8 (used as is), other integer types
    (16-bit images included) or floats (converted to float32; the model's global normalisation makes the
    value range irrelevant). Raises InputError for empty arrays, other shapes or dtypes, and NaN or inf.
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
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
            raise InputError("image has NaN or infinite values")
        image = image.astype(np.float32)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)                      # grayscale -> RGB
    return np.ascontiguousarray(image)


def load_image(path) -> np.ndarray:
    """Read an image file with Pillow -> (H, W, 3) uint8 (or float32 for 16-bit and float files), turned
    by its EXIF orientation (if any), so that pixel coordinates are those of the image as viewers show it."""
    from PIL import Image, ImageOps, UnidentifiedImageError
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
                im = ImageOps.exif_transpose(raw)                 # orientations 2-8 turned upright
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    arr = np.asarray(im)                          # 16/32-bit grayscale: keep the values
                elif im.mode == "RGB":
                    arr = np.asarray(im)
                else:
                    arr = np.asarray(im.convert("RGB"))           # L, LA, P, RGBA, CMYK, ...
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
