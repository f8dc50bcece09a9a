"""Live parity (needs PyTorch; CI installs the train extra): the trainer's PyTorch model and the Numba engine
agree on every intermediate for random variants and weights; export then load round-trips exactly."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import musica_ref as m
from musica_ref import geometry
from musica_ref.network import INTERMEDIATES, TENSORS

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[train]')")
from tools.trainer.model import canvases, from_weights, to_weights  # noqa: E402

from conftest import random_model  # noqa: E402
from test_model import LEVEL0_TOL_PX, REL_TOL, E_TOL, face_image, near_integer  # noqa: E402


def torch_cascade(weights, levels, init0):
    """The PyTorch model in float64 on the engine's own pyramid levels and initial shape."""
    net = from_weights(weights, torch.float64)
    with torch.no_grad():
        return net(canvases(levels), torch.from_numpy(init0[None]), keep=True)


@st.composite
def variants(draw):
    name = draw(st.sampled_from(["musica68", "musica19", "musica49", "custom"]))
    if name != "custom":
        return random_model(name, draw(st.integers(0, 1)))
    N = draw(st.integers(1, 30))
    idx = draw(st.permutations(range(N)))[:draw(st.integers(1, N))]
    return m.MuSiCa(m.random_weights(m.custom_variant(N, idx), seed=draw(st.integers(0, 100))))


@settings(max_examples=12)
@given(model=variants(), seed=st.integers(0, 10**6), w=st.floats(20, 200), x0=st.floats(-15, 150),
       y0=st.floats(-15, 120), aspect=st.floats(0.6, 1.6))
def test_torch_model_matches_engine_on_every_intermediate(model, seed, w, x0, y0, aspect):
    img = face_image(seed, 180, 220)
    box = (x0, y0, x0 + w, y0 + w * aspect)
    res, trace = model.trace(img, box)
    frame = geometry.face_frame(box)
    levels = [t["level_image"] for t in sorted(trace, key=lambda t: t["level"])]
    init0 = geometry.initial_shape(model.mean_shape, frame)
    out = torch_cascade(model.weights, levels, init0)
    for i, (t, r) in enumerate(zip(trace, out["trace"])):
        ce, cr = t["centres"][0], r["centres"][0].numpy()
        np.testing.assert_allclose(ce, cr, atol=LEVEL0_TOL_PX, rtol=0, err_msg=f"centres, iteration {i}")
        assume(np.array_equal(np.floor(ce), np.floor(cr)) or not near_integer(cr).any())
        assert np.array_equal(np.floor(ce), np.floor(cr)), f"patch corners differ at iteration {i}"
        for name in ("patches",) + INTERMEDIATES:
            got = np.asarray(t[name], np.float64).reshape(-1)
            want = r[name].numpy().reshape(-1)
            scale = max(1.0, float(np.abs(want).max()))
            err = float(np.abs(got - want).max())
            assert err <= REL_TOL * scale, f"{name}, iteration {i}: max |diff| {err:.3g}"
    np.testing.assert_allclose(res.errors, out["errors"][:, 0].numpy(), atol=E_TOL, rtol=0)
    hist0 = geometry.image_to_level(res.history, frame, 0)
    np.testing.assert_allclose(hist0, out["shapes"][:, 0].numpy(), atol=LEVEL0_TOL_PX, rtol=0)


@settings(max_examples=8)
@given(model=variants())
def test_export_then_load_round_trips_exactly(model, tmp_path_factory):
    w = model.weights
    back = to_weights(from_weights(w, torch.float32))
    for a, b in zip(w.iterations, back.iterations):
        for name in TENSORS:
            np.testing.assert_array_equal(a[name], b[name])
    path = tmp_path_factory.mktemp("rt") / "w.h5"
    m.save_weights(path, back)
    again = m.load_weights(path)
    np.testing.assert_array_equal(again.mean_shape, w.mean_shape)
    for a, b in zip(w.iterations, again.iterations):
        for name in TENSORS:
            np.testing.assert_array_equal(a[name], b[name])
