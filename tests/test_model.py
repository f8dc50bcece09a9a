"""The whole cascade: Numba engine vs the float64 NumPy reference, batch == single, threads, early exit."""
import math
import threading

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import musica_ref as m
from musica_ref import geometry, pyramid, reference
from musica_ref.network import INTERMEDIATES

from conftest import random_model

# Tolerances of the engine (float32) against the float64 reference, per tensor. Every tensor is compared
# relative to its own largest magnitude; float32 rounding through a conv stack and a 17,920-term dot
# product stays far below 1e-4 of the magnitude (measured differences are ~1e-6).
REL_TOL = 1e-4
LEVEL0_TOL_PX = 2e-3     # landmarks, in level-0 pixels
E_TOL = 1e-4             # error estimates (fractions)


def face_image(seed, H, W):
    """A random but smooth-ish image: noise plus gradients, so patches are not all alike."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = 128 + 60 * np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0)
    img = base[:, :, None] + rng.normal(0, 25, (H, W, 3))
    return img.clip(0, 255).astype(np.uint8)


@st.composite
def faces(draw):
    H, W = draw(st.integers(30, 260)), draw(st.integers(30, 260))
    w = draw(st.floats(8, 1.5 * max(H, W)))
    h = draw(st.floats(0.5, 2.0)) * w
    x0 = draw(st.floats(-0.5 * w, W - 0.5 * w))
    y0 = draw(st.floats(-0.5 * h, H - 0.5 * h))
    return draw(st.integers(0, 10**6)), H, W, (x0, y0, x0 + w, y0 + h)


def near_integer(x, tol=1e-3):
    return np.abs(x - np.round(x)) < tol


@given(variant=st.sampled_from(["musica68", "musica19", "musica49"]), wseed=st.integers(0, 1), face=faces())
def test_cascade_matches_float64_reference(variant, wseed, face):
    seed, H, W, box = face
    model = random_model(variant, wseed)
    img = face_image(seed, H, W)
    res, trace = model.trace(img, box)
    ref = reference.cascade(model.weights, img, box)
    frame = geometry.face_frame(box)
    for i, (t, r) in enumerate(zip(trace, ref["trace"])):
        ce, cr = t["centres"][0], r["centres"]
        np.testing.assert_allclose(ce, cr, atol=LEVEL0_TOL_PX, rtol=0, err_msg=f"centres, iteration {i}")
        # a patch corner is floor(centre): where the float32 and float64 centres straddle an integer the
        # two runs legitimately read different pixels; such draws are not comparable further
        assume(np.array_equal(np.floor(ce), np.floor(cr)) or not near_integer(cr).any())
        assert np.array_equal(np.floor(ce), np.floor(cr)), f"patch corners differ at iteration {i}"
        for name in ("patches",) + INTERMEDIATES:
            got, want = np.asarray(t[name], np.float64).reshape(-1), np.asarray(r[name]).reshape(-1)
            scale = max(1.0, float(np.abs(want).max()))
            err = float(np.abs(got - want).max())
            assert err <= REL_TOL * scale, f"{name}, iteration {i}: max |diff| {err:.3g} > {REL_TOL * scale:.3g}"
    np.testing.assert_allclose(res.errors, ref["errors"], atol=E_TOL, rtol=0)
    np.testing.assert_allclose(res.history * frame.scale, ref["history"] * frame.scale,
                               atol=LEVEL0_TOL_PX, rtol=0)
    assert res.iterations == ref["iterations"] == 3
    assert np.all(np.isfinite(res.landmarks)) and res.landmarks.shape == (model.n_landmarks, 2)


def _same(a: m.Result, b: m.Result):
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    np.testing.assert_array_equal(a.errors, b.errors)
    np.testing.assert_array_equal(a.history, b.history)
    assert (a.iterations, a.failed, a.multiply_adds, a.macs_by_layer) == \
        (b.iterations, b.failed, b.multiply_adds, b.macs_by_layer)


@given(seed=st.integers(0, 10**6), n=st.integers(1, 6), ts_q=st.floats(0, 1))
def test_batch_equals_single_and_threads_do_not_matter(seed, n, ts_q):
    model = random_model("musica19", 0)
    rng = np.random.default_rng(seed)
    img = face_image(seed, 200, 240)
    boxes = [(x, y, x + w, y + w * rng.uniform(0.8, 1.3))
             for x, y, w in zip(rng.uniform(-20, 180, n), rng.uniform(-20, 140, n), rng.uniform(20, 150, n))]
    all_e = np.concatenate([model.predict(img, b).errors for b in boxes])
    ts = max(0.0, float(np.quantile(all_e, ts_q)))     # some faces exit early, some do not
    single = [model.predict(img, b, ts=ts) for b in boxes]
    batch = model.predict_batch(img, boxes, ts=ts)
    other = model.predict_batch([img.copy() for _ in boxes], boxes, ts=ts)   # many images
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = model.predict_batch(img, boxes, ts=ts)
    finally:
        numba.set_num_threads(threads)
    for s, b, o, t in zip(single, batch, other, one_thread):
        _same(s, b), _same(s, o), _same(s, t)


def test_the_kept_pyramid_buffer_changes_no_result():
    """predict_batch keeps its pyramid buffer for the next call: a face after a larger batch (the buffer still
    holding that batch's levels), and calls from two threads at once (each then needs its own buffer), give
    the bits of a model that never ran before."""
    img = face_image(5, 200, 240)
    boxes = [(10, 20, 110, 130), (60, 30, 200, 150), (-15, 90, 70, 190), (120, 5, 230, 100), (40, 40, 90, 95)]
    want = [random_model("musica19", 0).predict(img, b) for b in boxes]     # a new model for every face
    model = random_model("musica19", 0)
    for s, b in zip(want, model.predict_batch(img, boxes)):
        _same(s, b)
    kept = model._spare
    assert kept is not None and kept.size >= len(boxes) * 3 * 3 * 57 * 57   # all five pyramids at least
    for s, b in zip(want, boxes):
        _same(s, model.predict(img, b))
    assert model._spare is kept                                              # reused, not replaced
    results = {}

    def run(k):
        for _ in range(3):
            results[k] = model.predict_batch(img, boxes[k::2])
    workers = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for k in (0, 1):
        for s, b in zip(want[k::2], results[k]):
            _same(s, b)


def test_pyramids_use_a_given_buffer_only_if_it_fits():
    frames = [geometry.face_frame((10, 20, 110, 130)), geometry.face_frame((60, 30, 200, 150))]
    n = int(pyramid.Pyramids(frames).sizes.sum())
    big = np.full(n + 10, np.nan, np.float32)
    assert pyramid.Pyramids(frames, buffer=big).data.base is big
    for bad in (np.empty(n - 1, np.float32), np.empty(n, np.float64), np.empty((n, 1), np.float32),
                np.empty(2 * n, np.float32)[::2]):
        assert pyramid.Pyramids(frames, buffer=bad).data.base is not bad     # a new array instead
    img = face_image(6, 200, 240)
    p = pyramid.Pyramids(frames, buffer=big)
    p.fill(img, [0, 1])
    for f, fr in enumerate(frames):
        for a, b in zip(p.levels(f), pyramid.build_pyramid(img, fr)):
            np.testing.assert_array_equal(a, b)
    assert np.isnan(big[n:]).all()                                           # nothing beyond the levels


@given(seed=st.integers(0, 10**6), n=st.integers(2, 5), constant=st.booleans())
def test_pyramids_of_many_faces_equal_one_at_a_time(seed, n, constant):
    """build_pyramids (the faces of one image shared out between threads) == build_pyramid face by face,
    bit for bit, also for a constant image (standard deviation 0 -> 1)."""
    rng = np.random.default_rng(seed)
    img = np.full((90, 120, 3), 77, np.uint8) if constant else face_image(seed, 90, 120)
    frames = [geometry.face_frame((x, y, x + w, y + w * rng.uniform(0.7, 1.4)))
              for x, y, w in zip(rng.uniform(-30, 100, n), rng.uniform(-30, 70, n), rng.uniform(5, 150, n))]
    for got, fr in zip(pyramid.build_pyramids(img, frames), frames):
        for a, b in zip(got, pyramid.build_pyramid(img, fr)):
            np.testing.assert_array_equal(a, b)


@given(seed=st.integers(0, 10**6), variant=st.sampled_from(["musica68", "musica19"]))
def test_fused_path_equals_the_traced_layers(seed, variant):
    """predict runs the fused feature kernel, trace the layers one by one: same bits."""
    model = random_model(variant, 1)
    rng = np.random.default_rng(seed)
    img = face_image(seed, 190, 210)
    x, y, w = rng.uniform(-10, 120), rng.uniform(-10, 100), rng.uniform(40, 140)
    traced, _ = model.trace(img, (x, y, x + w, y + w))
    _same(model.predict(img, (x, y, x + w, y + w)), traced)


def test_early_exit_rules():
    model = random_model("musica68", 0)
    img = face_image(3, 180, 200)
    boxes = [(40, 30, 150, 160), (10, 20, 90, 100), (60, 50, 190, 170), (-20, -10, 80, 120)]
    for box in boxes:
        full = model.predict(img, box, ts=0)
        assert full.iterations == 3 and len(full.errors) == 3      # ts = 0 runs all, even for E < 0
        assert full.history.shape == (3, 68, 2)
        first = model.predict(img, box, ts=float(full.errors.max()) + 1.0)   # above every estimate
        assert first.iterations == 1
        np.testing.assert_array_equal(first.landmarks, full.history[0])
        np.testing.assert_array_equal(first.errors, full.errors[:1])
        # a threshold between the estimates stops at the first iteration below it
        for i in range(3):
            ts = float(full.errors[i]) + 1e-9
            r = model.predict(img, box, ts=ts)
            stop = next(k for k in range(3) if full.errors[k] < ts)
            assert r.iterations == stop + 1
            np.testing.assert_array_equal(r.landmarks, full.history[stop])
        e_last = float(full.errors[-1])
        assert model.predict(img, box, tf=e_last - 1e-6).failed
        assert not model.predict(img, box, tf=e_last + 1e-6).failed
        assert not full.failed                                     # tf defaults to +inf
        # failure is judged on the last iteration run
        r = model.predict(img, box, ts=float(full.errors.max()) + 1.0, tf=float(full.errors[0]) - 1e-6)
        assert r.iterations == 1 and r.failed


@pytest.mark.parametrize("ts, tf", [(-0.1, math.inf), (math.nan, 1.0), (0.0, math.nan), ("a", 1.0), (10 ** 400, 1.0),
                                    (0.0, -10 ** 400)])
def test_bad_thresholds(ts, tf):
    with pytest.raises(m.InputError):
        random_model("musica19", 0).predict(face_image(0, 50, 50), (10, 10, 40, 40), ts=ts, tf=tf)


def test_batch_input_mismatch():
    model = random_model("musica19", 0)
    img = face_image(0, 50, 50)
    with pytest.raises(m.InputError, match="2 images for 1 boxes"):
        model.predict_batch([img, img], [(10, 10, 40, 40)])
    assert model.predict_batch(img, []) == []


def test_every_kernel_the_model_runs_is_cached_on_disk(tmp_path):
    # A kernel Numba cannot cache (it reads a dynamic global, such as numba.get_num_threads()) would be
    # compiled again by every new process, about 40 s; Numba only warns. Run the model's paths in a fresh
    # process and fail on that warning.
    import subprocess
    import sys
    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('always')\n"
        "import musica_ref as m\n"
        "w = m.random_weights(m.get_variant('musica19'))\n"
        "m.save_weights(r'%s', w, dtype=np.float16)\n"
        "img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)\n"
        "with warnings.catch_warnings(record=True) as got:\n"
        "    warnings.simplefilter('always')\n"
        "    for rec in ('stored', 'float32', 'int8'):\n"
        "        mo = m.MuSiCa.load(r'%s', recurrent=rec)\n"
        "        mo.predict(img, (50, 50, 150, 160)); mo.predict_batch(img, [(50, 50, 150, 160), (40, 45, 160, 150)])\n"
        "    mo.trace(img, (50, 50, 150, 160))\n"
        "print('\\n'.join(str(x.message) for x in got if 'cache' in str(x.message).lower()))\n"
    ) % (tmp_path / "w.h5", tmp_path / "w.h5")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", p.stdout


@pytest.mark.skipif(not llvm.get_process_triple().startswith("x86"),
                    reason="only x86 CPUs may lack FMA (64-bit ARM always has it), so only there can a process be "
                           "told it has none")
def test_a_cpu_without_fma_gives_the_same_bits(tmp_path):
    # On a CPU without fused multiply-add instructions kernels.madd computes the fused result in float64
    # (test_kernels checks it value by value). Here the whole model runs in a fresh process that is told
    # the CPU has no FMA (Numba then compiles for the host with FMA turned off, into its own cache), and
    # its results must be bit for bit this process's.
    import os
    import subprocess
    import sys
    w = m.random_weights(m.get_variant("musica19"), seed=3)
    m.save_weights(tmp_path / "w.h5", w, dtype=np.float16)
    img = face_image(5, 200, 220)
    np.save(tmp_path / "img.npy", img)
    boxes = [(50, 50, 150, 160), (40, 45, 160, 150)]

    def run(model):
        res = model.predict_batch(img, boxes)
        _, trace = model.trace(img, boxes[0])
        return np.concatenate([np.concatenate([r.history.ravel(), r.errors.ravel()]) for r in res]
                              + [t["out"].ravel() for t in trace])

    here = run(m.MuSiCa.load(tmp_path / "w.h5"))
    code = (
        "import numpy as np, llvmlite.binding as llvm\n"
        "real = llvm.get_host_cpu_features().flatten()\n"
        "class Features:\n"
        "    def flatten(self):\n"
        "        return real.replace('+fma,', '-fma,').replace('+fma', '-fma')\n"
        "llvm.get_host_cpu_features = lambda: Features()\n"
        "import musica_ref as m\n"
        "from musica_ref import kernels\n"
        "assert not kernels.FMA_IN_HARDWARE\n"
        "img = np.load(r'%s')\n"
        "model = m.MuSiCa.load(r'%s')\n"
        "res = model.predict_batch(img, %r)\n"
        "_, trace = model.trace(img, %r)\n"
        "v = np.concatenate([np.concatenate([r.history.ravel(), r.errors.ravel()]) for r in res]\n"
        "                   + [t['out'].ravel() for t in trace])\n"
        "np.save(r'%s', v)\n"
    ) % (tmp_path / "img.npy", tmp_path / "w.h5", boxes, boxes[0], tmp_path / "there.npy")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    there = np.load(tmp_path / "there.npy")
    assert here.dtype == there.dtype and here.shape == there.shape
    np.testing.assert_array_equal(here.view(np.uint8), there.view(np.uint8))
