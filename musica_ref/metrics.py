"""Accuracy metrics of face alignment (docs/model.md §10), for one face or many.

Per face: the mean Euclidean error over the points that have a location, divided by a normaliser:
- NME_box: sqrt(w * h) of the ground truth's tight box (the AFLW2000-3D convention);
- NME_io: the outer-eye-corner distance (300W/WFLW "inter-ocular"; points 36, 45 of 68, 60, 72 of 98);
- NME_ip: the distance between the centroids of the two eyes' six contour points (300W "inter-pupil", 68
  points only: 36-41 and 42-47).
A normaliser that needs a point without a location gives NaN for that face (left out of the means).
"""
from __future__ import annotations

import math

import numpy as np

from .geometry import eye_corners, tight_box

YAW_BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, math.inf))   # |yaw| in degrees: [0,30), [30,60), [60,90]
# (the few faces whose fitted |yaw| exceeds 90 degrees count in the last bin)


def point_errors(pred, gt, visible=None) -> np.ndarray:
    """Euclidean error of every point (N,), NaN where the ground truth has no location."""
    e = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    if visible is not None:
        e = np.where(np.asarray(visible, bool), e, np.nan)
    return e


def normalisers(gt, visible=None) -> dict:
    """The three normalisers of one face's ground truth (N, 2): {"box", "io", "ip"} (NaN when undefined)."""
    gt = np.asarray(gt, np.float64)
    vis = np.ones(len(gt), bool) if visible is None else np.asarray(visible, bool)
    tb = tight_box(gt[vis])
    out = {"box": float(np.sqrt((tb[2] - tb[0]) * (tb[3] - tb[1]))), "io": np.nan, "ip": np.nan}
    eyes = eye_corners(len(gt))
    if eyes and vis[eyes[0]] and vis[eyes[1]]:
        out["io"] = float(np.linalg.norm(gt[eyes[0]] - gt[eyes[1]]))
    if len(gt) == 68 and vis[36:48].all():
        out["ip"] = float(np.linalg.norm(gt[36:42].mean(0) - gt[42:48].mean(0)))
    return out


def face_nme(pred, gt, visible=None) -> dict:
    """{"box", "io", "ip"}: the mean point error of one face over each normaliser."""
    mean_err = float(np.nanmean(point_errors(pred, gt, visible)))
    return {k: mean_err / v if v > 0 else np.nan for k, v in normalisers(gt, visible).items()}


def ced_auc(nme, limit: float = 0.10) -> float:
    """Area under the cumulative error distribution up to `limit`, divided by `limit` (1 = every face
    exactly right, 0 = every face above the limit). NaN entries are left out."""
    x = np.sort(np.asarray(nme, np.float64)[~np.isnan(nme)])
    if len(x) == 0:
        return float("nan")
    x = np.minimum(x, limit)
    # CED(t) = fraction of faces with error <= t; its integral over [0, limit] = mean(limit - min(x, limit))
    return float(np.mean(limit - x) / limit)


def ced_curve(nme, limit: float = 0.10, n: int = 201):
    """(thresholds (n,), fraction of faces with error <= threshold (n,))."""
    x = np.asarray(nme, np.float64)
    x = x[~np.isnan(x)]
    t = np.linspace(0, limit, n)
    return t, (x[None, :] <= t[:, None]).mean(1) if len(x) else np.full(n, np.nan)


def yaw_bin(yaw_deg) -> np.ndarray:
    """Index 0, 1, 2 of the |yaw| bin of each face (-1 for NaN)."""
    a = np.abs(np.asarray(yaw_deg, np.float64))
    out = np.full(a.shape, -1)
    for k, (lo, hi) in enumerate(YAW_BINS):
        out[(a >= lo) & (a < hi)] = k
    return out


# --- the normaliser of the error estimate and of the training loss ----------------------------------------------

# where an outer eye corner has no location, its distance is taken as this fraction of sqrt(w*h) of the
# ground truth's tight box (the median ratio on the training faces with both corners: 0.62); every
# normaliser is at least ERROR_NORM_FLOOR of it, so near-profile faces (corners projected close together) do not
# dominate the loss
EYE_TO_BOX = 0.62
ERROR_NORM_FLOOR = 0.25


def error_normaliser(points, visible) -> float:
    """The normaliser of one face's error for the error estimate E and the training loss (docs/model.md §7), in
    the points' units: NME_io's outer-eye-corner distance where both corners have a location, else
    EYE_TO_BOX * sqrt(w h) of the points' tight box; never under ERROR_NORM_FLOOR * sqrt(w h). Unlike
    normalisers()["io"] it is defined for every face. points (N, 2), visible (N,)."""
    vis = np.asarray(visible, bool)
    points = np.asarray(points, np.float64)
    tb = tight_box(points[vis])
    size = math.sqrt(max(tb[2] - tb[0], 1e-6) * max(tb[3] - tb[1], 1e-6))
    eyes = eye_corners(len(points))
    if eyes is not None and vis[eyes[0]] and vis[eyes[1]]:
        d = float(np.linalg.norm(points[eyes[0]] - points[eyes[1]]))
    else:
        d = EYE_TO_BOX * size
    return max(d, ERROR_NORM_FLOOR * size)
