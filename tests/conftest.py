"""Shared fixtures and the hypothesis profile of the test suite."""
import functools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import musica_ref as m

settings.register_profile("ci", deadline=None, max_examples=25, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLE = ROOT / "examples" / "face.png"
EXAMPLE_BOX = (96, 72, 224, 232)
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
