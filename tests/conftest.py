"""Shared fixtures and the hypothesis profile of the test suite."""
import functools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from hypothesis import HealthCheck, settings

from tools.numba_cache import use_keyed_cache

use_keyed_cache()                       # before musica_ref: compiled kernels never outlive a source change

import musica_ref as m  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=25, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLE = ROOT / "examples" / "face.png"
EXAMPLE_BOX = (92, 112, 228, 236)   # tools/make_example.FACE_BOX
EPS32 = float(np.finfo(np.float32).eps)


@functools.lru_cache(maxsize=None)
def random_model(variant_name: str = "musica68", seed: int = 0) -> m.MuSiCa:
    """A model with random weights, cached across tests (weights of musica68 are 112 MB)."""
    return m.MuSiCa(m.random_weights(m.get_variant(variant_name), seed=seed))


@pytest.fixture(scope="session")
def model68():
    return random_model("musica68", 0)


@pytest.fixture
def shared_data():
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip("../shared/data is not present (real faces are not part of the repository)")
    return d


def dot_image(points, shape=(96, 110), radius=2.5):
    """Black image with a distinct bright dot at every point; dot k has colour (k+1)*20 in the red channel."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.float32)
    for k, (x, y) in enumerate(points):
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * radius ** 2))
        img[:, :, 0] += (k + 1) * 20 * blob
        img[:, :, 1] += 200 * blob
    return np.clip(img, 0, 255)


def synthetic_folder(tmp_path, n=48, N=5, seed=0):
    """A 300W-style folder: PNG images with N dots and their .pts files."""
    rng = np.random.default_rng(seed)
    base = np.array([[30, 35], [70, 35], [50, 55], [35, 75], [65, 75]], float)[:N]
    for i in range(n):
        pts = base * rng.uniform(0.8, 1.1) + rng.uniform(-8, 12, 2) + rng.normal(0, 2, base.shape)
        Image.fromarray(dot_image(pts).astype(np.uint8)).save(tmp_path / f"f{i:03d}.png")
        m.write_pts(tmp_path / f"f{i:03d}.pts", pts)
    return tmp_path
