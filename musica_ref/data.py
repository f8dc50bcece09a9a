"""Annotated face sets, for evaluation (musica_ref.evaluate, `musica-ref evaluate`) and for the trainer.

Two sources:
- an HDF5 file with the layout of the project's data sets: datasets `jpeg` (encoded images, one per face),
  `landmarks` (n, N, 2) (x, y) 0-based, `visible` (n, N) bool (False: the point has no location), `box`
  (n, 4) the face box; optionally `pose` (n, 3) (pitch, yaw, roll in degrees) and `landmarks_3dmm` (another
  ground truth of the same faces);
- a 300W-style folder: images (.jpg, .jpeg, .png, .ppm, .bmp) each with a `.pts` file of the same stem
  (1-based points, all with a location); the face box is the tight box of the points.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from . import geometry
from .errors import InputError
from .io import as_rgb, load_image, read_pts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


class FaceSet:
    """Faces with landmarks: `image(i)` (H, W, 3) uint8, `landmarks` (n, N, 2) (x, y) 0-based, `visible`
    (n, N) bool, `boxes` (n, 4) face boxes, `pose` (n, 3) or None, `extra` other ground truths by name.
    Decoded images are kept in memory once read. limit: the first `limit` faces only."""

    def __init__(self, source, limit: int | None = None):
        self.source = str(source)
        p = Path(source)
        if limit is not None and limit < 1:
            raise InputError(f"limit must be at least 1, got {limit}")
        if p.is_dir():
            self._init_folder(p, limit)
        elif p.is_file():
            self._init_h5(p, limit)
        else:
            raise InputError(f"face set {self.source!r} does not exist (give an HDF5 file or a folder of images "
                             f"with .pts files)")
        self._cache = {}

    def _init_h5(self, path: Path, limit):
        import h5py
        try:
            f = h5py.File(path, "r")
        except OSError:
            raise InputError(f"{str(path)!r} is neither a folder nor an HDF5 face set") from None
        with f:
            missing = [k for k in ("jpeg", "landmarks", "visible", "box") if k not in f]
            if missing:
                raise InputError(f"{str(path)!r} is not a face set: no dataset {', '.join(missing)}")
            if len({len(f[k]) for k in ("jpeg", "landmarks", "visible", "box")}) != 1:
                raise InputError(f"{str(path)!r}: landmarks, visible, box and jpeg do not describe the same faces")
            n = len(f["landmarks"]) if limit is None else min(limit, len(f["landmarks"]))
            self._jpeg = [bytes(f["jpeg"][i]) for i in range(n)]
            self.landmarks = f["landmarks"][:n].astype(np.float64)
            self.visible = f["visible"][:n].astype(bool)
            self.boxes = f["box"][:n].astype(np.float64)
            self.pose = f["pose"][:n].astype(np.float64) if "pose" in f else None
            # other ground truths of the same faces (AFLW2000-3D: landmarks_3dmm, the 3DDFA protocol's)
            self.extra = {k: f[k][:n].astype(np.float64) for k in ("landmarks_3dmm",) if k in f}
        if self.landmarks.ndim != 3 or self.landmarks.shape[2] != 2 or self.visible.shape != self.landmarks.shape[:2] \
                or self.boxes.shape != (len(self.landmarks), 4) or len(self._jpeg) != len(self.landmarks):
            raise InputError(f"{str(path)!r}: landmarks, visible, box and jpeg do not describe the same faces")
        self._files = None

    def _init_folder(self, path: Path, limit):
        files = sorted(q for q in path.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES
                       and q.with_suffix(".pts").is_file())
        if limit is not None:
            files = files[:limit]
        if not files:
            raise InputError(f"{str(path)!r} holds no images with a .pts file beside them")
        self._files = files
        self._jpeg = None
        points = [read_pts(q.with_suffix(".pts")) for q in files]
        if len({len(p) for p in points}) != 1:
            raise InputError(f"the .pts files of {str(path)!r} do not all hold the same number of points")
        self.landmarks = np.stack(points)
        self.visible = np.ones(self.landmarks.shape[:2], bool)
        self.boxes = np.stack([geometry.tight_box(p) for p in self.landmarks])
        self.pose = None
        self.extra = {}

    def __len__(self):
        return len(self.landmarks)

    @property
    def n_landmarks(self) -> int:
        return self.landmarks.shape[1]

    def name(self, i: int) -> str:
        """The face's image file name (a folder set) or its index in the HDF5 set."""
        return self._files[i].name if self._files is not None else str(i)

    def image(self, i: int) -> np.ndarray:
        """Face i's image, (H, W, 3) uint8 RGB."""
        if i not in self._cache:
            if self._files is not None:
                img = load_image(self._files[i])
            else:
                from PIL import Image
                try:
                    with Image.open(io.BytesIO(self._jpeg[i])) as im:
                        img = as_rgb(np.asarray(im.convert("RGB")))
                except OSError as exc:
                    raise InputError(f"{self.source}: face {i}'s image cannot be decoded: {exc}") from None
            self._cache[i] = img
        return self._cache[i]
