"""Face detection: image -> face boxes, so that a photo needs no hand-drawn box.

The built-in detector is dlib's HOG + linear SVM frontal face detector (the optional extra `detect`:
`pip install "musica-ref[detect]"`, which installs PyPI's `dlib-bin`; its model is inside the library, so
nothing is downloaded at run time). Any other detector plugs in as a callable:

    def my_detector(image):            # image: (H, W, 3) uint8 RGB
        return [(x0, y0, x1, y1, score), ...]      # or (x0, y0, x1, y1): score 1.0

    model.predict_image(image, detector=my_detector)

Boxes are (x0, y0, x1, y1) in pixels, 0-based, x right, y down. The shipped models are trained on a family of
detector-style boxes around the face (docs/training.md "Face boxes"): a detector's box can be passed as it
comes, as long as it holds the face from brows to chin and is no more than about 1.6 times its size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError, MusicaError
from .io import as_rgb, image_or_path, stretch_to_uint8


class DetectorUnavailable(MusicaError):
    """The built-in face detector needs the `detect` extra, which is not installed."""


INSTALL_HINT = ('face detection needs dlib: pip install "musica-ref[detect]" (or pip install dlib-bin); '
                'or pass face boxes yourself (--box x0,y0,x1,y1, or model.predict(image, box))')


@dataclass(frozen=True)
class Face:
    """A detected face: box (x0, y0, x1, y1) in image pixels and the detector's score (higher: surer)."""
    box: tuple
    score: float


class DlibDetector:
    """dlib's HOG frontal face detector. upsample: how many times dlib doubles the image before looking
    (each finds faces half as large, from about 80 px at 0, and costs about 4 times as much); "auto" doubles
    once for images whose longer side is under 1000 px. threshold: dlib's adjust_threshold (lower finds more
    faces, and more false ones)."""

    def __init__(self, upsample="auto", threshold: float = 0.0):
        try:
            import dlib
        except ImportError:
            raise DetectorUnavailable(INSTALL_HINT) from None
        self._detector = dlib.get_frontal_face_detector()
        self.upsample, self.threshold = upsample, float(threshold)

    def __call__(self, image):
        rgb = np.ascontiguousarray(image, dtype=np.uint8)
        up = (1 if max(rgb.shape[:2]) < 1000 else 0) if self.upsample == "auto" else int(self.upsample)
        rects, scores, _ = self._detector.run(rgb, up, self.threshold)
        # dlib's rectangles are inclusive pixel ranges: right/bottom + 1 is the far edge
        return [(r.left(), r.top(), r.right() + 1, r.bottom() + 1, s) for r, s in zip(rects, scores)]


_default = None


def default_detector():
    """The built-in detector (made once): DlibDetector(), or DetectorUnavailable saying how to get it."""
    global _default
    if _default is None:
        _default = DlibDetector()
    return _default


def detect_faces(image, detector=None) -> list[Face]:
    """The faces in `image` ((H, W, 3) RGB array, grayscale, or a file path), most confident first.

    detector: None for the built-in dlib detector, or a callable (H, W, 3) uint8 RGB -> iterable of
    (x0, y0, x1, y1) or (x0, y0, x1, y1, score). Boxes with no area or outside the image are dropped."""
    rgb = as_rgb(image_or_path(image))
    if rgb.dtype != np.uint8:                                  # 16-bit or float: stretch to 0..255 for the detector
        rgb = stretch_to_uint8(rgb)
    det = default_detector() if detector is None else detector
    if not callable(det):
        raise InputError(f"detector must be a callable image -> boxes, got {type(det).__name__}")
    H, W = rgb.shape[:2]
    found = det(rgb)
    if isinstance(found, (str, bytes)) or not hasattr(found, "__iter__"):
        raise InputError(f"the detector returned {type(found).__name__}; expected an iterable of boxes "
                         "(x0, y0, x1, y1[, score])")
    faces = []
    for k, item in enumerate(found):
        try:
            vals = [float(v) for v in item]
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"the detector's box {k} is not a sequence of numbers x0, y0, x1, y1[, score]: "
                             f"{item!r:.80}") from None
        if len(vals) not in (4, 5):
            raise InputError(f"the detector's box {k} has {len(vals)} numbers; expected x0, y0, x1, y1[, score]")
        x0, y0, x1, y1 = vals[:4]
        score = vals[4] if len(vals) == 5 else 1.0
        if not np.all(np.isfinite(vals)):
            raise InputError(f"the detector's box {k} is not finite: {vals}")
        if x1 <= x0 or y1 <= y0 or x1 <= 0 or y1 <= 0 or x0 >= W or y0 >= H:
            continue                                           # empty, or wholly outside the image
        faces.append(Face((x0, y0, x1, y1), score))
    return sorted(faces, key=lambda f: -f.score)
