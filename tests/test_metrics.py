"""Accuracy metrics on hand-made cases."""
import math

import numpy as np

from musica_ref import metrics


def square_face(n=68):
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (n, 2))
    gt[0], gt[1] = (0, 0), (100, 100)          # the tight box is 100 x 100
    return gt


def test_nme_normalisers():
    gt = square_face()
    pred = gt + [3.0, 4.0]                     # every point 5 px off
    gt[36], gt[45] = (20, 40), (80, 40)        # outer eye corners 60 px apart
    pred = gt + [3.0, 4.0]
    r = metrics.face_nme(pred, gt)
    assert math.isclose(r["box"], 5 / 100) and math.isclose(r["io"], 5 / 60)
    ip = np.linalg.norm(gt[36:42].mean(0) - gt[42:48].mean(0))
    assert math.isclose(r["ip"], 5 / ip)


def test_invisible_points_are_left_out_and_undefined_normalisers_are_nan():
    gt = square_face()
    pred = gt.copy()
    pred[5] += 1000                            # a wild point without a location does not count
    vis = np.ones(68, bool)
    vis[5] = False
    vis[36] = False
    r = metrics.face_nme(pred, gt, vis)
    assert r["box"] == 0 and math.isnan(r["io"]) and math.isnan(r["ip"])


def test_ced_area():
    assert math.isclose(metrics.ced_auc([0, 0, 0]), 1.0)
    assert metrics.ced_auc([0.2, 0.5]) == 0.0
    assert math.isclose(metrics.ced_auc([0.05]), 0.5)
    assert math.isclose(metrics.ced_auc([0.0, 0.1, np.nan]), 0.5)
    t, c = metrics.ced_curve([0.02, 0.06], n=11)
    assert c[0] == 0 and c[2] == 0.5 and c[-1] == 1


def test_yaw_bins():
    np.testing.assert_array_equal(metrics.yaw_bin([0, -29.9, 30, 59, -60, 89, 95, np.nan]), [0, 0, 1, 1, 2, 2, 2, -1])
