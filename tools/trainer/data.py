"""Training data: face sets, augmentation (paper 3.3), Generalized Data Balancing (paper 3.4) and the
preparation of model inputs with musica_ref's own geometry (so training and inference cannot drift apart).

Face sets are musica_ref.data.FaceSet (an HDF5 set with the ../shared/data layout, or a 300W-style folder),
the error normaliser musica_ref.metrics.error_normaliser, so that evaluation and training read the same data
the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import scipy.ndimage as ndi

from musica_ref import geometry
from musica_ref.data import FaceSet  # noqa: F401  (the trainer's face sets are the package's)
from musica_ref.io import as_rgb
from musica_ref.metrics import error_normaliser as normaliser  # noqa: F401
from musica_ref.pyramid import build_pyramid

# --- mirror permutations for horizontal flips -----------------------------------------------------------------

def _mirror(n: int, pairs) -> np.ndarray:
    perm = np.arange(n)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


MIRROR = {
    # 300W / iBUG 68: jaw, brows, nostrils, eyes, outer and inner lips
    68: _mirror(68, [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
                + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
                   (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]),
    # WFLW 98: jaw, upper and lower brows, nostrils, eyes, lips, pupils
    98: _mirror(98, [(i, 32 - i) for i in range(16)] + [(33 + i, 46 - i) for i in range(5)]
                + [(38 + i, 50 - i) for i in range(4)] + [(55, 59), (56, 58)]
                + [(60 + i, 72 - i) for i in range(5)] + [(65, 75), (66, 74), (67, 73)]
                + [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95), (96, 97)]),
}


# --- face sets: musica_ref.data.FaceSet (the HDF5 layout of ../shared/data and 300W-style folders) ----------

def mean_shape(faces: FaceSet) -> np.ndarray:
    """The mean shape in the box frame (box top-left 0, longer side BB_SIZE): per landmark, the mean over
    the faces where it has a location. (N, 2) float64."""
    acc = np.zeros((faces.n_landmarks, 2))
    cnt = np.zeros(faces.n_landmarks)
    for pts, vis, box in zip(faces.landmarks, faces.visible, faces.boxes):
        s = geometry.box_frame_shape(pts, box)
        acc[vis] += s[vis]
        cnt[vis] += 1
    if np.any(cnt == 0):
        raise ValueError(f"landmarks {np.flatnonzero(cnt == 0).tolist()} have no location in any face")
    return acc / cnt[:, None]


# --- error normaliser: musica_ref.metrics.error_normaliser (the loss's and the error estimate's) -------------

# --- augmentation ------------------------------------------------------------------------------------------

@dataclass
class Augment:
    """Each augmentation can be switched off (probability 0 or range 0) for ablations."""
    p_geometric: float = 0.5      # probability of the rotation + shear + non-uniform scaling package
    rotate_deg: float = 30.0      # rotation ~ U(-r, r) about the face centre
    shear: float = 0.2            # shear factors ~ U(-s, s)
    stretch: float = 0.3          # x scaled by U(1 - a, 1 + a)
    p_flip: float = 0.5           # horizontal flip with the mirror permutation
    box_shift: float = 0.1        # box centre moved by U(-a, a) of its size, per axis
    box_scale: float = 0.1        # box sides scaled by U(1 - a, 1 + a), per axis
    p_colour: float = 0.8         # per-channel gain U(0.7, 1.3) and offset U(-25, 25)
    p_gray: float = 0.2           # to grayscale (0.299, 0.587, 0.114), copied to 3 channels
    p_occlude: float = 0.3        # a rectangle of noise, sides U(0.1, 0.5) of the box, inside the box
    # detector-style boxes (docs/training.md "Face boxes"): with probability p_detector_box the box is drawn
    # from this family instead of the jittered tight box; half of them square (side s max(w, h)), half with
    # independent sides (w U(box_min, box_max_w), h U(box_min, box_max)); centre moved by U(-a, a) w in x and
    # U(-box_up, box_down) h in y (up is negative y). Off (0) by default.
    p_detector_box: float = 0.0
    box_min: float = 0.8          # smallest side, as a fraction of the tight box's (its max(w, h) for squares)
    box_max: float = 1.6          # largest height (square side), as a fraction of the tight box's
    box_max_w: float = 1.4        # largest width of a non-square box, as a fraction of the tight box's
    box_shift_x: float = 0.1      # a: centre moved by U(-a, a) w in x
    box_up: float = 0.25          # centre moved up by at most this fraction of h
    box_down: float = 0.1         # ... and down by at most this

    @classmethod
    def off(cls) -> "Augment":
        return cls(**{f.name: 0.0 for f in fields(cls)})


def warp_affine(image, A, out_shape) -> np.ndarray:
    """Warp image (H, W, C) by the 2x3 affine A (image (x, y) -> output (x, y)): output (h, w, C) float32,
    bilinear, zeros outside. Pixel centres at integer coordinates, as everywhere in musica_ref."""
    M = np.vstack([A, [0, 0, 1]])
    inv = np.linalg.inv(M)
    # scipy works in (row, col): input_rc = R @ output_rc + o
    R = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
    o = np.array([inv[1, 2], inv[0, 2]])
    img = np.asarray(image, dtype=np.float32)
    return np.stack([ndi.affine_transform(img[:, :, c], R, o, output_shape=out_shape, order=1, mode="constant",
                                          cval=0.0) for c in range(img.shape[2])], axis=2)


def apply_affine(A, points) -> np.ndarray:
    return np.asarray(points) @ np.asarray(A)[:, :2].T + np.asarray(A)[:, 2]


def flip(image, points, visible):
    """Mirror horizontally: x -> W - 1 - x, and the landmark order by the mirror permutation."""
    W = image.shape[1]
    perm = MIRROR[points.shape[0]]
    p = points.copy()
    p[:, 0] = W - 1 - p[:, 0]
    return image[:, ::-1], p[perm], visible[perm]


def augment(image, points, visible, box, aug: Augment, rng):
    """One random augmentation of a face -> (image (h, w, 3) float32 or uint8, points, visible, box).

    The box given to the model is the tight box of the (augmented) visible points, perturbed."""
    img, pts, vis = image, np.asarray(points, np.float64), np.asarray(visible, bool)
    if aug.p_flip > 0 and rng.random() < aug.p_flip and pts.shape[0] in MIRROR:
        img, pts, vis = flip(img, pts, vis)
    if aug.p_geometric > 0 and rng.random() < aug.p_geometric:
        th = math.radians(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        Rm = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        Sh = np.array([[1, rng.uniform(-aug.shear, aug.shear)], [rng.uniform(-aug.shear, aug.shear), 1]])
        Sc = np.diag([rng.uniform(1 - aug.stretch, 1 + aug.stretch), 1.0])
        Lm = Sc @ Sh @ Rm
        H, W = img.shape[:2]
        centre = np.array([(W - 1) / 2, (H - 1) / 2])
        corners = (np.array([[0, 0], [W - 1, 0], [0, H - 1], [W - 1, H - 1]]) - centre) @ Lm.T
        lo, hi = corners.min(0), corners.max(0)
        A = np.hstack([Lm, (-centre @ Lm.T - lo)[:, None]])       # the whole image stays in the canvas
        out_shape = (int(math.ceil(hi[1] - lo[1])) + 1, int(math.ceil(hi[0] - lo[0])) + 1)
        img = warp_affine(img, A, out_shape)
        pts = apply_affine(A, pts)
    img = np.asarray(img, dtype=np.float32)
    if aug.p_colour > 0 and rng.random() < aug.p_colour:
        img = img * rng.uniform(0.7, 1.3, 3) + rng.uniform(-25, 25, 3)
    if aug.p_gray > 0 and rng.random() < aug.p_gray:
        img = np.repeat((img @ np.array([0.299, 0.587, 0.114]))[:, :, None], 3, axis=2)
    box = geometry.tight_box(pts[vis])
    w, h = box[2] - box[0], box[3] - box[1]
    if aug.p_occlude > 0 and rng.random() < aug.p_occlude:
        ow, oh = w * rng.uniform(0.1, 0.5), h * rng.uniform(0.1, 0.5)
        ox, oy = box[0] + rng.uniform(0, w - ow), box[1] + rng.uniform(0, h - oh)
        r0, r1 = int(max(0, oy)), int(min(img.shape[0], oy + oh))
        c0, c1 = int(max(0, ox)), int(min(img.shape[1], ox + ow))
        if r1 > r0 and c1 > c0:
            img = img.copy()
            img[r0:r1, c0:c1] = rng.uniform(0, 255, (r1 - r0, c1 - c0, 3))
    img = np.clip(img, 0, 255).astype(np.float32)
    if aug.p_detector_box > 0 and rng.random() < aug.p_detector_box:
        return img, pts, vis, detector_style_box(box, aug, rng)
    cx, cy = (box[0] + box[2]) / 2 + w * rng.uniform(-aug.box_shift, aug.box_shift), \
        (box[1] + box[3]) / 2 + h * rng.uniform(-aug.box_shift, aug.box_shift)
    w *= rng.uniform(1 - aug.box_scale, 1 + aug.box_scale)
    h *= rng.uniform(1 - aug.box_scale, 1 + aug.box_scale)
    return img, pts, vis, np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def detector_style_box(box, aug: Augment, rng) -> np.ndarray:
    """A face box of the family real detectors give, drawn around the tight box (x0, y0, x1, y1): half
    squares of side U(box_min, box_max) max(w, h), half rectangles of width U(box_min, box_max_w) w and
    height U(box_min, box_max) h; the centre moved by U(-box_shift_x, box_shift_x) w and
    U(-box_up, box_down) h. -> (4,) float64."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) / 2 + w * rng.uniform(-aug.box_shift_x, aug.box_shift_x)
    cy = (box[1] + box[3]) / 2 + h * rng.uniform(-aug.box_up, aug.box_down)
    if rng.random() < 0.5:
        bw = bh = max(w, h) * rng.uniform(aug.box_min, aug.box_max)
    else:
        bw, bh = w * rng.uniform(aug.box_min, aug.box_max_w), h * rng.uniform(aug.box_min, aug.box_max)
    return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])


# --- self-occluded points ----------------------------------------------------------------------------------

def shape_basis_3d(landmarks, visible, rank: int = 3) -> np.ndarray:
    """A rank-`rank` basis (rank, N) of the faces whose points all have a location: the right singular vectors
    of their centred, scale-normalised coordinate rows. Under an affine camera the x and y rows of a rigid
    3-D shape are combinations of 3 such vectors (Tomasi-Kanade factorisation), so rank 3 is a 3-D mean face
    up to an affine map, recovered from the spread of poses among the fully visible faces."""
    full = np.asarray(visible, bool).all(1)
    if full.sum() < 10 * rank:
        raise ValueError(f"only {int(full.sum())} faces have every point located; the 3-D shape basis needs "
                         f"at least {10 * rank}")
    P = np.asarray(landmarks, np.float64)[full]
    P = P - P.mean(1, keepdims=True)
    s = np.sqrt((P ** 2).sum((1, 2)))
    W = np.concatenate([P[:, :, 0] / s[:, None], P[:, :, 1] / s[:, None]], 0)    # (2F, N)
    return np.linalg.svd(W, full_matrices=False)[2][:rank]


def fill_hidden(landmarks, visible, basis) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks with every point that has no location (self-occluded) replaced by where the face's 3-D
    shape projects it: x and y are each fitted as a combination of the basis rows plus an offset on the
    located points (least squares, an affine camera), then evaluated on the hidden ones. This is the
    convention of 3-D-style ground truths such as AFLW2000-3D's ("placed where they project"). Located points
    are returned unchanged. A face with fewer located points than rank + 2 cannot be fitted: it keeps its rows
    as they were and its flag is False (its hidden rows are no targets).
    landmarks (n, N, 2), visible (n, N) -> (filled (n, N, 2) float64, a new array; ok (n,) bool)."""
    out = np.array(landmarks, np.float64)
    vis = np.asarray(visible, bool)
    ok = np.ones(len(out), bool)
    G = np.vstack([basis, np.ones(basis.shape[1])]).T                 # (N, rank + 1)
    for i in np.flatnonzero(~vis.all(1)):
        v = vis[i]
        if v.sum() < basis.shape[0] + 2:
            ok[i] = False
            continue
        coef = np.linalg.lstsq(G[v], out[i, v], rcond=None)[0]         # (rank + 1, 2)
        out[i, ~v] = G[~v] @ coef
    return out, ok


# --- Generalized Data Balancing ----------------------------------------------------------------------------

def _similarity_align(src, dst):
    """The similarity transform (scale, rotation, translation) that best maps src (n, 2) onto dst (n, 2)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    den = (a ** 2).sum()
    s_cos = (a * b).sum() / den
    s_sin = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum() / den
    Rm = np.array([[s_cos, -s_sin], [s_sin, s_cos]])
    return lambda p: (p - ms) @ Rm.T + md


def gdb_weights(faces: FaceSet, variance: float = 0.95, iterations: int = 3):
    """Generalized Data Balancing: Procrustes-align the shapes (on their visible points; missing points are
    filled from the aligned mean), PCA, keep the first K components that explain `variance` of the
    variance, and weight each face by its Mahalanobis distance d_i = sqrt(sum_k c_ik^2 / lambda_k).

    Returns (sampling weights (n,) = d_i / mean(d): each epoch draws faces with probability in proportion
    to their distance, as the paper says; K; the distances d (n,))."""
    shapes = faces.landmarks
    vis = faces.visible
    ref = mean_shape(faces)
    aligned = np.empty_like(shapes)
    for _ in range(iterations):
        for i, (p, v) in enumerate(zip(shapes, vis)):
            t = _similarity_align(p[v], ref[v])
            aligned[i] = np.where(v[:, None], t(p), ref)
        ref = aligned.mean(0)
    X = aligned.reshape(len(aligned), -1)
    X = X - X.mean(0)
    _, sv, Vt = np.linalg.svd(X, full_matrices=False)
    lam = sv ** 2 / (len(X) - 1)
    K = int(np.searchsorted(np.cumsum(lam) / lam.sum(), variance) + 1)
    c = X @ Vt[:K].T
    d = np.sqrt((c ** 2 / lam[:K]).sum(1))
    return d / d.mean(), K, d


# --- model inputs --------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """Prepared inputs of B faces: levels[L] (B, H_L, W_L, 3) float32 canvases, init0 (B, N, 2) and gt0
    (B, N, 2) in level-0 pixels (float64), visible (B, N), norm (B,) the error normaliser in level-0 pixels."""
    levels: list
    init0: np.ndarray
    gt0: np.ndarray
    visible: np.ndarray
    norm: np.ndarray


def prepare(images, boxes, points, visible, mean) -> Batch:
    """Pyramids, initial shapes and targets of B faces, all by musica_ref's geometry and pyramid code."""
    B, N = len(images), len(mean)
    levels = [np.zeros((B, *geometry.max_level_shape(L), 3), np.float32) for L in range(geometry.N_LEVELS)]
    init0, gt0 = np.zeros((B, N, 2)), np.zeros((B, N, 2))
    norm = np.zeros(B)
    for b, (img, box, pts, vis) in enumerate(zip(images, boxes, points, visible)):
        frame = geometry.face_frame(box)
        for L, lv in enumerate(build_pyramid(as_rgb(img), frame)):
            levels[L][b, :lv.shape[0], :lv.shape[1]] = lv
        init0[b] = geometry.initial_shape(mean, frame)
        gt0[b] = geometry.image_to_level(pts, frame, 0)
        norm[b] = normaliser(gt0[b], vis)
    return Batch(levels, init0, gt0, np.asarray(visible, bool), norm)
