"""Storage of the recurrent layers (float16, int8): the rounding, the model path, and what it leaves alone."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import musica_ref as m
from musica_ref import reference
from musica_ref.quantize import quantize_int8, with_precision

from conftest import EXAMPLE_BOX, random_model


@given(seed=st.integers(0, 2**32 - 1), K=st.integers(1, 50), M=st.integers(1, 20),
       scale=st.sampled_from([1e-4, 1.0, 1e3]))
def test_int8_rounding_is_within_half_a_step(seed, K, M, scale):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((K, M)) * scale).astype(np.float32)
    w[:, rng.random(M) < 0.2] = 0                      # some all-zero columns
    q, s = quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == w.shape and s.shape == (M,)
    assert np.abs(q.astype(int)).max(initial=0) <= 127
    err = np.abs(q * s.astype(np.float64) - w)
    assert np.all(err <= 0.5 * s * (1 + 1e-6) + 1e-30)
    peak = np.abs(w).max(axis=0)
    assert np.all(np.abs(q).max(axis=0)[peak > 0] == 127)  # every non-zero column uses the full range


def test_int8_model_is_close_and_leaves_the_weights_alone():
    model = random_model("musica19", 0)
    before = {k: v.copy() for k, v in model.weights.iterations[0].items()}
    q = m.MuSiCa(model.weights, recurrent="int8")
    assert q.recurrent == "int8" and q.weights.iterations[0]["recurrent/weight"].dtype == np.int8
    for k, v in before.items():                       # the float32 model is untouched
        np.testing.assert_array_equal(model.weights.iterations[0][k], v)
    img = np.random.default_rng(0).integers(0, 255, (220, 220, 3), dtype=np.uint8)
    a, b = model.predict(img, EXAMPLE_BOX), q.predict(img, EXAMPLE_BOX)
    assert a.multiply_adds == b.multiply_adds
    # a random model moves points by tens of pixels; int8 moves them by a small fraction of that
    moved = np.abs(b.landmarks - a.landmarks).max()
    assert moved < 0.05 * np.abs(a.landmarks - a.history[0]).max() + 0.5
    single = q.predict(img, EXAMPLE_BOX)
    batch = q.predict_batch(img, [EXAMPLE_BOX, (60, 70, 180, 190)])[0]
    np.testing.assert_array_equal(single.landmarks, batch.landmarks)


def test_bad_precision():
    with pytest.raises(m.InputError, match="precision"):
        with_precision(random_model("musica19", 0).weights, "float8")


def test_float16_file_stays_16_bit_and_gives_the_float32_results(tmp_path):
    model = random_model("musica19", 0)
    path = tmp_path / "w16.h5"
    m.save_weights(path, model.weights, dtype=np.float16)
    stored = m.MuSiCa.load(path)                       # default: as stored
    wide = m.MuSiCa.load(path, recurrent="float32")
    assert stored.recurrent == "float16" and wide.recurrent == "float32"
    for it in stored.weights.iterations:
        assert it["recurrent/weight"].dtype == np.uint16
        assert all(a.dtype == np.float32 for k, a in it.items() if k != "recurrent/weight")
    img = np.random.default_rng(1).integers(0, 255, (220, 220, 3), dtype=np.uint8)
    boxes = [EXAMPLE_BOX, (60, 70, 180, 190)]
    for a, b in zip(stored.predict_batch(img, boxes), wide.predict_batch(img, boxes)):
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.errors, b.errors)
    # the float64 NumPy reference reads the 16-bit weights as their values (not as integers)
    ref16, ref32 = (reference.cascade(mo.weights, img, EXAMPLE_BOX) for mo in (stored, wide))
    np.testing.assert_array_equal(ref16["landmarks"], ref32["landmarks"])
    np.testing.assert_allclose(ref16["landmarks"], stored.predict(img, EXAMPLE_BOX).landmarks, atol=1e-3)
    # int8 from the float16 file = int8 from its float32 widening
    q16, q32 = m.MuSiCa.load(path, recurrent="int8"), m.MuSiCa(wide.weights, recurrent="int8")
    np.testing.assert_array_equal(q16.predict(img, EXAMPLE_BOX).landmarks, q32.predict(img, EXAMPLE_BOX).landmarks)


def test_float32_weights_stay_float32_unless_rounding_is_asked_for():
    model = random_model("musica19", 0)
    assert m.MuSiCa(model.weights).recurrent == "float32"
    half = m.MuSiCa(model.weights, recurrent="float16")
    w = model.weights.iterations[0]["recurrent/weight"]
    np.testing.assert_array_equal(half.weights.iterations[0]["recurrent/weight"].view(np.float16),
                                  w.astype(np.float16))
    assert model.weights.iterations[0]["recurrent/weight"].dtype == np.float32     # the input is untouched
    img = np.random.default_rng(0).integers(0, 255, (220, 220, 3), dtype=np.uint8)
    a, b = model.predict(img, EXAMPLE_BOX), half.predict(img, EXAMPLE_BOX)
    moved = np.abs(b.landmarks - a.landmarks).max()
    assert moved < 0.05 * np.abs(a.landmarks - a.history[0]).max() + 0.5


def test_float16_refuses_weights_out_of_its_range():
    w = random_model("musica19", 0).weights
    its = [dict(it) for it in w.iterations]               # the shared test model stays as it is
    its[2]["recurrent/weight"] = its[2]["recurrent/weight"].copy()
    its[2]["recurrent/weight"][3, 4] = 7e4
    w = dataclasses.replace(w, iterations=its)
    with pytest.raises(m.InputError, match="float16"):
        with_precision(w, "float16")


def test_a_models_16_bit_weights_are_not_saved_as_integers(tmp_path):
    path = tmp_path / "w16.h5"
    m.save_weights(path, random_model("musica19", 0).weights, dtype=np.float16)
    with pytest.raises(m.WeightsError, match="uint16.*recurrent='float32'"):
        m.save_weights(tmp_path / "again.h5", m.MuSiCa.load(path).weights)
    m.save_weights(tmp_path / "again.h5", m.MuSiCa.load(path, recurrent="float32").weights)
