"""Every Numba kernel against its NumPy twin, and every twin against an independent scipy computation.

Tolerances, per operation (eps = float32 machine epsilon, 1.19e-7):
- copies and selections (max-pool, crop + concat, patch extraction, ReLU): exact equality;
- gate (one float32 multiply, correctly rounded in both): exact equality;
- sums of n float32 products (convolution n = 9*Cin, fully connected n = K): |kernel - float64 twin| <=
  n * eps * sum|terms| elementwise, the classic worst-case bound of recursive float32 summation;
- sigmoid, tanh: 8 eps relative (libm float32 exp/tanh are within a few ulp) + 1e-37 absolute for results
  that underflow;
- resampling (float64 accumulator, one float32 rounding at the end): 2 eps * max|image|;
- twins against scipy (both float64): 1e-9 relative to the data's scale.
The bounds were set from the arithmetic, not from observed differences.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.special
import scipy.signal as sig
from hypothesis import given
from scipy.integrate import quad
from hypothesis import strategies as st
import numba
from numba import njit

import musica_ref as m
from musica_ref import kernels as K
from musica_ref import kernels_ref as R

from conftest import EPS32, EXAMPLE, EXAMPLE_BOX, ROOT

seeds = st.integers(0, 2**32 - 1)
scales = st.sampled_from([1e-3, 1.0, 30.0, 1e3])


def rnd(rng, shape, scale=1.0, zeros=0.2):
    """float32 normal values with some exact zeros (ReLU outputs are full of them)."""
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    x[rng.random(shape) < zeros] = 0
    return x


def assert_within(got, ref, bound, what):
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > bound
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements outside the bound; first at "
                             f"{tuple(i)}: got {got[tuple(i)]!r}, reference {ref[tuple(i)]!r}, "
                             f"bound {np.broadcast_to(bound, err.shape)[tuple(i)]!r}")


# --- convolution ------------------------------------------------------------------------------------------

@given(seed=seeds, B=st.integers(1, 5), H=st.integers(3, 15), W=st.integers(3, 15), Cin=st.integers(1, 8),
       Cout=st.integers(1, 40), relu=st.booleans(), scale=scales)
def test_conv3x3_kernel_matches_twin(seed, B, H, W, Cin, Cout, relu, scale):
    rng = np.random.default_rng(seed)
    x, w, b = rnd(rng, (B, H, W, Cin), scale), rnd(rng, (3, 3, Cin, Cout)), rnd(rng, (Cout,))
    got = K.conv3x3(x, w, b, relu)
    ref = R.conv3x3(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), relu)
    assert got.dtype == np.float32 and got.shape == (B, H - 2, W - 2, Cout)
    mag = R.conv3x3(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), np.abs(b), relu=False)
    assert_within(got, ref, 9 * Cin * EPS32 * mag + 1e-30, "conv3x3")


@given(seed=seeds, B=st.integers(1, 3), H=st.integers(3, 9), W=st.integers(3, 9), Cin=st.integers(1, 4),
       Cout=st.integers(1, 5), relu=st.booleans())
def test_conv3x3_twin_matches_scipy(seed, B, H, W, Cin, Cout, relu):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((B, H, W, Cin)), rng.standard_normal((3, 3, Cin, Cout)), rng.standard_normal(Cout)
    ref = np.zeros((B, H - 2, W - 2, Cout))
    for bb in range(B):
        for o in range(Cout):
            ref[bb, :, :, o] = b[o] + sum(sig.correlate(x[bb, :, :, c], w[:, :, c, o], mode="valid")
                                          for c in range(Cin))
    if relu:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(R.conv3x3(x, w, b, relu), ref, rtol=1e-9, atol=1e-9)


# --- pooling, crop + concat ------------------------------------------------------------------------------

@given(seed=seeds, B=st.integers(1, 4), H=st.integers(2, 13), W=st.integers(2, 13), C=st.integers(1, 9))
def test_maxpool_kernel_twin_scipy(seed, B, H, W, C):
    x = rnd(np.random.default_rng(seed), (B, H, W, C))
    got = K.maxpool2x2(x)
    np.testing.assert_array_equal(got, R.maxpool2x2(x))
    ref = ndi.maximum_filter(x, size=(1, 2, 2, 1), origin=(0, -1, -1, 0))[:, :H // 2 * 2:2, :W // 2 * 2:2]
    np.testing.assert_array_equal(R.maxpool2x2(x), ref)


@given(seed=seeds, B=st.integers(1, 4), C=st.integers(1, 40))
def test_crop_concat_kernel_twin_and_layout(seed, B, C):
    rng = np.random.default_rng(seed)
    conv2, pool2 = rnd(rng, (B, 4, 4, C)), rnd(rng, (B, 2, 2, C))
    got = K.crop_concat(conv2, pool2)
    np.testing.assert_array_equal(got, R.crop_concat(conv2, pool2))
    # the layout of docs/model.md §6, element by element: f = (row * 2 + col) * 2C + channel, crop first
    for r in range(2):
        for c in range(2):
            for ch in range(C):
                assert got[0, (r * 2 + c) * 2 * C + ch] == conv2[0, r + 1, c + 1, ch]
                assert got[0, (r * 2 + c) * 2 * C + C + ch] == pool2[0, r, c, ch]


# --- fully connected and elementwise -----------------------------------------------------------------------

@given(seed=seeds, B=st.integers(1, 20), Kn=st.integers(1, 300), M=st.integers(1, 300), scale=scales)
def test_fully_connected_kernel_matches_twin(seed, B, Kn, M, scale):
    rng = np.random.default_rng(seed)
    x, w, b = rnd(rng, (B, Kn), scale), rnd(rng, (Kn, M)), rnd(rng, (M,))
    got = K.fully_connected(x, w, b)
    ref = R.fully_connected(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    mag = np.abs(x).astype(np.float64) @ np.abs(w) + np.abs(b)
    assert got.dtype == np.float32
    assert_within(got, ref, Kn * EPS32 * mag + 1e-30, "fully_connected")


def test_fully_connected_row_result_does_not_depend_on_batch():
    rng = np.random.default_rng(3)
    x, w, b = rnd(rng, (37, 700)), rnd(rng, (700, 300)), rnd(rng, (300,))
    full = K.fully_connected(x, w, b)
    for i in (0, 8, 36):
        np.testing.assert_array_equal(K.fully_connected(x[i:i + 1], w, b)[0], full[i])



@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_fully_connected_work_splits_agree(storage):
    # one row (chunks in parallel), 2-4 blocks of 8 rows (chunk-major tasks in parallel) and more (groups of
    # blocks in parallel) give every row the same bits; half the inputs 0 (skipped)
    rng = np.random.default_rng(5)
    x, b = rnd(rng, (45, 700)), rnd(rng, (300,))
    x[rng.random(x.shape) < 0.5] = 0
    w = rnd(rng, (700, 300))
    if storage == "int8":
        q, sc = rng.integers(-127, 128, w.shape).astype(np.int8), (rng.random(300) * 0.01).astype(np.float32)
        fc = lambda xx: K.fully_connected_scaled(xx, q, sc, b)
    else:
        ww = w.astype(np.float16).view(np.uint16) if storage == "float16" else w
        fc = lambda xx: K.fully_connected(xx, ww, b)
    full = fc(x)                                             # 6 blocks: groups
    for lo, hi in ((0, 20), (3, 35), (40, 45)):              # 3, 4 blocks: chunk-major tasks; 1 block
        np.testing.assert_array_equal(fc(x[lo:hi]), full[lo:hi])
    for i in (0, 17, 44):
        np.testing.assert_array_equal(fc(x[i:i + 1])[0], full[i])


special = np.array([0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 10.0, -10.0, 87.0, -87.0, 89.0, -89.0, 100.0,
                    -100.0, 1e30, -1e30], dtype=np.float32)


@given(seed=seeds, n=st.integers(1, 500), scale=st.sampled_from([0.1, 3.0, 50.0]))
def test_elementwise_kernels_match_twins(seed, n, scale):
    x = np.concatenate([special, rnd(np.random.default_rng(seed), (n,), scale)])
    np.testing.assert_array_equal(K.relu(x), R.relu(x))
    for k, r in ((K.sigmoid, R.sigmoid), (K.tanh, R.tanh)):
        got, ref = k(x), r(x.astype(np.float64))
        assert got.dtype == np.float32 and np.all(np.isfinite(got))
        assert_within(got, ref, 8 * EPS32 * np.abs(ref) + 1e-37, k.__name__)
    a = np.random.default_rng(seed + 1).random(x.shape).astype(np.float32)
    np.testing.assert_array_equal(K.gate(x[None], a[None]), R.gate(x[None], a[None]))


def test_elementwise_twins_against_closed_forms():
    x = np.linspace(-30, 30, 601)
    np.testing.assert_allclose(R.sigmoid(x), scipy.special.expit(x), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(R.tanh(x), (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1), rtol=1e-10, atol=1e-15)


# --- patch extraction ----------------------------------------------------------------------------------

@given(seed=seeds, H=st.integers(1, 40), W=st.integers(1, 40), P=st.integers(1, 12), size=st.integers(1, 16))
def test_extract_patches_kernel_matches_twin(seed, H, W, P, size):
    rng = np.random.default_rng(seed)
    level = rnd(rng, (H, W, 3), zeros=0)
    corners = np.stack([rng.integers(-size - 3, W + 3, P), rng.integers(-size - 3, H + 3, P)], 1)
    np.testing.assert_array_equal(K.extract_patches(level, corners, size),
                                  R.extract_patches(level, corners, size))


# --- resampling ------------------------------------------------------------------------------------------

@given(seed=seeds, H=st.integers(1, 60), W=st.integers(1, 60), C=st.integers(1, 3),
       ox=st.floats(-30, 30), oy=st.floats(-30, 30), step=st.floats(0.1, 9.0),
       h=st.integers(1, 25), w=st.integers(1, 25), as_uint8=st.booleans())
def test_resample_kernel_matches_twin(seed, H, W, C, ox, oy, step, h, w, as_uint8):
    rng = np.random.default_rng(seed)
    img = (rng.integers(0, 256, (H, W, C), dtype=np.uint8) if as_uint8
           else rnd(rng, (H, W, C), 40.0, zeros=0))
    got = K.resample(img, ox, oy, step, h, w)
    ref = R.resample(img, (ox, oy), step, (h, w))
    assert got.dtype == np.float32 and got.shape == (h, w, C)
    assert_within(got, ref, 2 * EPS32 * max(1.0, float(np.abs(img).max())) + 1e-30, "resample")


@given(seed=seeds, H=st.integers(2, 30), W=st.integers(2, 30), ox=st.floats(-5, 5), oy=st.floats(-5, 5),
       step=st.floats(0.05, 1.0), h=st.integers(1, 40), w=st.integers(1, 40))
def test_resample_twin_is_bilinear_when_not_shrinking(seed, H, W, ox, oy, step, h, w):
    """step <= 1: plain bilinear interpolation with zeros outside = scipy's order-1 'grid-constant'."""
    img = np.random.default_rng(seed).standard_normal((H, W, 1))
    rows, cols = np.meshgrid(oy + step * np.arange(h), ox + step * np.arange(w), indexing="ij")
    ref = ndi.map_coordinates(img[:, :, 0], [rows, cols], order=1, mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(R.resample(img, (ox, oy), step, (h, w))[:, :, 0], ref, rtol=1e-9, atol=1e-9)


@given(seed=seeds, H=st.integers(2, 40), W=st.integers(2, 40), k=st.integers(2, 6), ox=st.integers(-8, 8),
       oy=st.integers(-8, 8))
def test_resample_twin_antialiases_as_specified(seed, H, W, k, ox, oy):
    """An integer shrink k from an integer origin = correlation with the kernel (the tent averaged over a
    box of width k - 1, integrated here by scipy.integrate.quad), zeros outside, every k-th pixel taken
    (scipy.ndimage.correlate1d on a zero-padded image)."""
    img = np.random.default_rng(seed).standard_normal((H, W, 1))
    b = k - 1.0
    reach = int(np.ceil(1 + b / 2))
    taps = np.array([quad(lambda s: max(0.0, 1 - abs(s)), j - b / 2, j + b / 2, points=[-1, 0, 1])[0] / b
                     for j in range(-reach, reach + 1)])
    pad = 12 * k
    p = np.pad(img[:, :, 0], pad)
    f = ndi.correlate1d(ndi.correlate1d(p, taps, axis=0, mode="constant"), taps, axis=1, mode="constant")
    h, w = 1 + (H + 6) // k, 1 + (W + 6) // k
    ref = f[pad + oy:pad + oy + k * h:k, pad + ox:pad + ox + k * w:k]
    np.testing.assert_allclose(R.resample(img, (ox, oy), float(k), (h, w))[:, :, 0], ref, rtol=1e-9, atol=1e-9)


@given(seed=seeds, step=st.floats(0.1, 12.0), ox=st.floats(-3, 3), slope=st.floats(-5, 5))
def test_resample_reproduces_linear_ramps(seed, step, ox, slope):
    """Away from the border, a linear ramp is sampled exactly where the geometry says, at any step: the
    levels of the pyramid are exactly the affine maps of geometry.py."""
    W = 400
    img = np.repeat((slope * np.arange(W, dtype=np.float64))[None, :, None], 40, axis=0)
    x0 = 20.0 + ox
    n = int((W - 40 - 2 * step) / step)
    out = R.resample(img, (x0, 20.0), step, (1, n))[0, :, 0]   # rows 20 +- 7 are all inside
    np.testing.assert_allclose(out, slope * (x0 + step * np.arange(n)), rtol=1e-9, atol=1e-9 * W * abs(slope) + 1e-12)


@given(value=st.floats(1, 255), step=st.floats(0.2, 5.0))
def test_resample_keeps_a_constant_image_constant_inside(value, step):
    img = np.full((80, 80, 3), value, np.float32)
    out = K.resample(img, 20.0, 20.0, step, 8, 8)    # every tap within [20 - 5, 20 + 7*5 + 5], inside
    np.testing.assert_allclose(out, value, rtol=1e-6)


def test_kernels_refuse_mismatched_shapes_instead_of_reading_out_of_bounds():
    """Numba does not bounds-check: a shape mismatch must be caught before the loops run."""
    f32 = np.float32
    cases = [
        (K.fully_connected, (np.zeros((1, 10), f32), np.zeros((9, 4), f32), np.zeros(4, f32))),
        (K.fully_connected, (np.zeros((1, 10), f32), np.zeros((10, 4), f32), np.zeros(5, f32))),
        (K.conv3x3, (np.zeros((1, 5, 5, 3), f32), np.zeros((3, 3, 2, 4), f32), np.zeros(4, f32), True)),
        (K.conv3x3, (np.zeros((1, 2, 5, 3), f32), np.zeros((3, 3, 3, 4), f32), np.zeros(4, f32), True)),
        (K.crop_concat, (np.zeros((1, 4, 4, 3), f32), np.zeros((1, 2, 2, 4), f32))),
        (K.gate, (np.zeros((2, 3), f32), np.zeros((2, 4), f32))),
        (K.extract_patches, (np.zeros((5, 5, 3), f32), np.zeros((2, 3), np.int64), 4)),
        (K.resample, (np.zeros((5, 5, 3), f32), 0.0, 0.0, 0.0, 3, 3)),
    ]
    for kernel, args in cases:
        with pytest.raises(ValueError):
            kernel(*args)


@given(seed=seeds, n=st.integers(1, 5), dtype=st.sampled_from([np.uint8, np.float32]))
def test_resample_many_equals_resample(seed, n, dtype):
    """Many resamplings of one image in one call, one per thread: each the same bits as resample alone
    (grids partly or wholly outside the image, shrinking and enlarging). Every value of a slot is written
    (the buffer starts as NaN), nothing outside them."""
    rng = np.random.default_rng(seed)
    img = (rng.uniform(0, 255, (23, 31, 3))).astype(dtype)
    ox, oy = rng.uniform(-40, 50, n), rng.uniform(-40, 40, n)
    step = rng.uniform(0.3, 6.0, n)
    shapes = [(int(rng.integers(1, 40)), int(rng.integers(1, 40))) for _ in range(n)]
    sizes = [h * w * 3 for h, w in shapes]
    offsets = np.cumsum([5] + sizes[:-1]).astype(np.int64)          # slots after a gap of 5 values
    data = np.full(5 + sum(sizes) + 7, np.nan, np.float32)
    K.resample_many(img, np.array([0, 0, 23, 31]), ox, oy, step, data, offsets, np.array(shapes, np.int64))
    for i, (h, w) in enumerate(shapes):
        got = data[offsets[i]:offsets[i] + sizes[i]].reshape(h, w, 3)
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got, K.resample(img, ox[i], oy[i], step[i], h, w))
        into = np.full((h, w, 3), np.nan, np.float32)
        K.resample_into(img, ox[i], oy[i], step[i], into)
        np.testing.assert_array_equal(into, got)
    assert np.isnan(data[:5]).all() and np.isnan(data[-7:]).all()    # nothing written outside the slots
    # given only the window of the image the outputs take pixels from (resample_span): the same bits
    rows = [K.resample_span(oy[i], step[i], h, 23) for i, (h, w) in enumerate(shapes)]
    cols = [K.resample_span(ox[i], step[i], w, 31) for i, (h, w) in enumerate(shapes)]
    rows, cols = [r for r in rows if r[0] <= r[1]], [c for c in cols if c[0] <= c[1]]
    if rows and cols:
        t, b = min(r[0] for r in rows), max(r[1] for r in rows) + 1
        le, ri = min(c[0] for c in cols), max(c[1] for c in cols) + 1
        again = np.full_like(data, np.nan)
        K.resample_many(np.ascontiguousarray(img[t:b, le:ri]), np.array([t, le, 23, 31]), ox, oy, step, again,
                        offsets, np.array(shapes, np.int64))
        np.testing.assert_array_equal(again, data)


def test_resample_many_rejects_slots_outside_the_buffer_and_short_windows():
    img = np.zeros((8, 8, 3), np.uint8)
    one, all8 = np.zeros(1), np.array([0, 0, 8, 8])
    with pytest.raises(ValueError, match="outside its buffer"):      # 4x4x3 = 48 values from 10 in 50
        K.resample_many(img, all8, one, one, one + 1, np.zeros(50, np.float32), np.array([10]), np.array([[4, 4]]))
    with pytest.raises(ValueError, match="outside its buffer"):      # a negative offset
        K.resample_many(img, all8, one, one, one + 1, np.zeros(50, np.float32), np.array([-1]), np.array([[2, 2]]))
    with pytest.raises(ValueError, match="resample_many"):           # two offsets, one origin
        K.resample_many(img, all8, one, one, one + 1, np.zeros(50, np.float32), np.array([0, 12]),
                        np.array([[2, 2], [2, 2]]))
    with pytest.raises(ValueError, match="window"):                  # the window larger than its image
        K.resample_many(img, np.array([1, 0, 8, 8]), one, one, one, np.zeros(50, np.float32), np.array([0]),
                        np.array([[2, 2]]))
    # a 2x2 output at (0, 0), step 1, takes rows and columns 0 .. 3: a window from row 1 lacks row 0
    with pytest.raises(ValueError, match="window"):
        K.resample_many(img[1:], np.array([1, 0, 9, 8]), one, one, one + 1, np.zeros(50, np.float32),
                        np.array([0]), np.array([[2, 2]]))
    assert K.resample_span(0.0, 1.0, 2, 8) == (0, 3) and K.resample_span(0.0, 1.0, 2, 2) == (0, 1)
    with pytest.raises(ValueError, match="channels"):
        K.resample_into(img, 0.0, 0.0, 1.0, np.zeros((2, 2, 1), np.float32))
    # outputs that overlap the image (the tile kernel is compiled on the promise that they do not)
    buf = np.zeros(400, np.float32)
    image = buf[:192].reshape(8, 8, 3)
    with pytest.raises(ValueError, match="overlap"):
        K.resample_many(image, all8, one, one, one + 1, buf, np.array([200]), np.array([[2, 2]]))
    with pytest.raises(ValueError, match="overlap"):
        K.resample_into(image, 0.0, 0.0, 1.0, buf[180:192].reshape(2, 2, 3))
    K.resample_into(image, 0.0, 0.0, 1.0, buf[192:204].reshape(2, 2, 3))     # right after it: fine


# --- the fused feature extractor ------------------------------------------------------------------------------

def _features_layer_by_layer(p, w1, b1, w2, b2, wa, ba):
    c2 = K.conv3x3(K.maxpool2x2(K.conv3x3(p, w1, b1, True)), w2, b2, True)
    f = K.crop_concat(c2, K.maxpool2x2(c2))
    a = K.sigmoid(K.fully_connected(f, wa, ba).reshape(-1)).reshape(f.shape)
    return K.gate(f, a)


@given(seed=seeds, BP=st.integers(1, 11) | st.integers(500, 700), C=st.sampled_from([1, 4, 32]), scale=scales,
       bias_shift=st.sampled_from([-2.0, 0.0, 1.0]))
def test_patch_features_is_bit_identical_to_the_layers(seed, BP, C, scale, bias_shift):
    """The fused kernel reorders nothing that changes a result: equal to the layer-by-layer kernels bit for bit,
    also when most ReLU outputs are 0 (negative biases) and the zero-skipping matters, and with 500-700
    patches, where each thread takes many work items in turn (kernels._take)."""
    rng = np.random.default_rng(seed)
    p = rnd(rng, (BP, 14, 14, 3), scale)
    w1, w2 = rnd(rng, (3, 3, 3, C)), rnd(rng, (3, 3, C, C))
    b1, b2 = rnd(rng, (C,)) + np.float32(bias_shift), rnd(rng, (C,)) + np.float32(bias_shift)
    wa, ba = rnd(rng, (8 * C, 8 * C), 0.1), rnd(rng, (8 * C,))
    got = K.patch_features(p, *K.feature_weights(w1, b1, w2, b2, wa, ba))
    np.testing.assert_array_equal(got, _features_layer_by_layer(p, w1, b1, w2, b2, wa, ba))


def test_patch_features_rejects_wrong_shapes():
    rng = np.random.default_rng(0)
    w1, w2, wa = rnd(rng, (3, 3, 3, 4)), rnd(rng, (3, 3, 4, 4)), rnd(rng, (32, 32))
    b, ba = rnd(rng, (4,)), rnd(rng, (32,))
    with pytest.raises(ValueError, match="patch_features"):
        K.patch_features(rnd(rng, (2, 12, 12, 3)), *K.feature_weights(w1, b, w2, b, wa, ba))    # 12x12 patches
    with pytest.raises(ValueError, match="patch_features"):
        K.patch_features(rnd(rng, (2, 14, 14, 3)), *K.feature_weights(w1, b, w2, b, wa[:16], ba))  # attention
    with pytest.raises(ValueError, match="patch_features"):
        K.patch_features(rnd(rng, (2, 14, 14, 3)), *K.feature_weights(w1, b, w2, b[:3], wa, ba))  # conv2 bias
    with pytest.raises(ValueError, match="feature_weights"):
        K.feature_weights(w1[:2], b, w2, b, wa, ba)                                        # 2x3 conv1


@given(seed=seeds, B=st.integers(1, 4), H=st.integers(1, 40), W=st.integers(1, 40), P=st.integers(1, 30),
       spread=st.integers(0, 40), C=st.sampled_from([2, 32]), bias_shift=st.sampled_from([-1.0, 0.0]))
def test_level_patch_features_is_bit_identical_to_the_layers(seed, B, H, W, P, spread, C, bias_shift):
    """Reading the patches from the level (conv1 shared between overlapping patches, or one by one when they
    overlap little) gives the layer-by-layer result on the extracted patches, bit for bit, one face at a
    time and many faces at once (levels of different sizes); patches may lie partly or wholly outside."""
    rng = np.random.default_rng(seed)
    levels = [rnd(rng, (H + 3 * b, W + b, 3)) for b in range(B)]
    corners = np.stack([(rng.integers(-16, max(H, W) + 4, 2) + rng.integers(-spread, spread + 1, (P, 2)))
                        for _ in range(B)]).astype(np.int64)
    w1, w2 = rnd(rng, (3, 3, 3, C)), rnd(rng, (3, 3, C, C))
    b1, b2 = rnd(rng, (C,)) + np.float32(bias_shift), rnd(rng, (C,)) + np.float32(bias_shift)
    wa, ba = rnd(rng, (8 * C, 8 * C), 0.1), rnd(rng, (8 * C,))
    want = np.concatenate([_features_layer_by_layer(K.extract_patches(lv, c, 14), w1, b1, w2, b2, wa, ba)
                           for lv, c in zip(levels, corners)])
    fw = K.feature_weights(w1, b1, w2, b2, wa, ba)
    one = np.full((B * P, 8 * C), np.nan, np.float32)
    for b in range(B):
        K.level_patch_features(levels[b], corners[b], *fw, one[b * P:(b + 1) * P])
    np.testing.assert_array_equal(one, want)
    many = np.full((B * P, 8 * C), np.nan, np.float32)
    K.levels_patch_features(*_one_buffer(levels), corners, *fw, many)
    np.testing.assert_array_equal(many, want)


def _one_buffer(levels):
    """levels in one flat buffer, in reverse order with gaps between them: (data, offsets, shapes)."""
    sizes = [lv.size for lv in levels]
    data = np.full(sum(sizes) + 3 * len(levels) + 3, np.nan, np.float32)
    offsets, o = [0] * len(levels), 3
    for b in reversed(range(len(levels))):
        offsets[b] = o
        data[o:o + sizes[b]] = levels[b].reshape(-1)
        o += sizes[b] + 3
    return data, np.array(offsets, np.int64), np.array([lv.shape for lv in levels], np.int64)


@pytest.mark.parametrize("spread, shared", [(3, True), (60, False)])
def test_level_patch_features_takes_both_paths(spread, shared):
    """Clustered patches share conv1, scattered ones go one by one; both equal the layers."""
    rng = np.random.default_rng(spread)
    level = rnd(rng, (50, 60, 3))
    corners = (np.array([20, 18]) + rng.integers(-spread, spread + 1, (24, 2))).astype(np.int64)
    w1, w2, wa = rnd(rng, (3, 3, 3, 32)), rnd(rng, (3, 3, 32, 32)), rnd(rng, (256, 256), 0.1)
    b, ba = rnd(rng, (32,)), rnd(rng, (256,))
    want = _features_layer_by_layer(K.extract_patches(level, corners, 14), w1, b, w2, b, wa, ba)
    fw = K.feature_weights(w1, b, w2, b, wa, ba)
    out = np.empty((24, 256), np.float32)
    assert K.level_patch_features(level, corners, *fw, out) == shared
    np.testing.assert_array_equal(out, want)
    out2 = np.empty((48, 256), np.float32)
    assert K.levels_patch_features(*_one_buffer([level, level]), np.stack([corners, corners]), *fw,
                                   out2) == 2 * shared
    np.testing.assert_array_equal(out2, np.concatenate([want, want]))


def test_level_patch_features_rejects_wrong_shapes():
    rng = np.random.default_rng(0)
    w1, w2, wa = rnd(rng, (3, 3, 3, 4)), rnd(rng, (3, 3, 4, 4)), rnd(rng, (32, 32))
    b, ba = rnd(rng, (4,)), rnd(rng, (32,))
    level, corners = rnd(rng, (20, 20, 3)), np.zeros((3, 2), np.int64)
    fw = K.feature_weights(w1, b, w2, b, wa, ba)
    with pytest.raises(ValueError, match="level_patch_features"):
        K.level_patch_features(level, corners, *fw, np.empty((2, 32), np.float32))   # out rows
    with pytest.raises(ValueError, match="level_patch_features"):
        K.level_patch_features(level, corners[:0], *fw, np.empty((0, 32), np.float32))  # P = 0
    with pytest.raises(ValueError, match="level_patch_features"):
        K.level_patch_features(rnd(rng, (20, 20, 1)), corners, *fw, np.empty((3, 32), np.float32))
    with pytest.raises(ValueError, match="levels_patch_features"):      # one level for two faces
        K.levels_patch_features(*_one_buffer([level]), np.stack([corners, corners]), *fw,
                                np.empty((6, 32), np.float32))
    with pytest.raises(ValueError, match="levels_patch_features"):      # a level with one channel
        K.levels_patch_features(*_one_buffer([level, rnd(rng, (20, 20, 1))]), np.stack([corners, corners]),
                                *fw, np.empty((6, 32), np.float32))
    data, offsets, shapes = _one_buffer([level, level])
    with pytest.raises(ValueError, match="outside its buffer"):          # the first level now overruns the buffer
        K.levels_patch_features(data, offsets + np.array([10, 0]), shapes, np.stack([corners, corners]),
                                *fw, np.empty((6, 32), np.float32))


def test_normalise_pyramids_rejects_levels_outside_the_buffer():
    data = np.ones(30, np.float32)
    with pytest.raises(ValueError, match="outside the buffer"):
        K.normalise_pyramids(data, np.array([[0, 20]]), np.array([[20, 12]]))
    with pytest.raises(ValueError, match="normalise_pyramids"):
        K.normalise_pyramids(data, np.array([[0, 20]]), np.array([[20]]))
    assert (data == 1).all()                                              # nothing touched


# --- float16 storage ---------------------------------------------------------------------------------------

@njit
def _widen_all(bits, out, integer):
    for i in range(bits.shape[0]):
        out[i] = K._half_bits_integer(bits[i]) if integer else K.widen(bits[i])


@pytest.mark.parametrize("integer", [False, True])
def test_widen_reads_every_finite_float16_exactly(integer):
    # all 63,488 finite binary16 patterns (zeros, subnormals, normals, both signs): the kernel's widening
    # (the hardware path where the CPU has one, and the integer path) against NumPy's float16 -> float32
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    bits = bits[np.isfinite(bits.view(np.float16))]
    got = np.empty(bits.size, np.float32)
    _widen_all(bits, got, integer)
    np.testing.assert_array_equal(got.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("choice, triple, features, expected", [
    ("half", "x86_64-unknown-linux-gnu", "+avx2,+f16c,+fma", True),
    ("half", "x86_64-unknown-linux-gnu", "+avx2,-f16c,+fma", False),       # absent features are listed with "-"
    ("fma", "x86_64-unknown-linux-gnu", "+avx2,+f16c,+fma", True),
    ("fma", "x86_64-unknown-linux-gnu", "+avx,+f16c,-fma", False),
    ("half", "aarch64-unknown-linux-gnu", "", True),
    ("fma", "aarch64-unknown-linux-gnu", "", True),
    ("half", "powerpc64le-unknown-linux-gnu", "", False),
    ("fma", "powerpc64le-unknown-linux-gnu", "", False),
    ("fma", "x86_64-unknown-linux-gnu", None, False),                     # features unknown
])
def test_hardware_path_choices(monkeypatch, choice, triple, features, expected):
    # the float16 widening and the fused multiply-add each take the instruction where the CPU has it
    class Features:
        def flatten(self):
            if features is None:
                raise RuntimeError("unknown")
            return features
    monkeypatch.setattr(K.llvm, "get_process_triple", lambda: triple)
    monkeypatch.setattr(K.llvm, "get_host_cpu_features", lambda: Features())
    assert {"half": K._half_in_hardware, "fma": K._fma_in_hardware}[choice]() is expected


@given(seed=seeds, B=st.integers(1, 40), Kn=st.integers(1, 600), M=st.integers(1, 70), scale=scales)
def test_fully_connected_float16_bits_equal_float32(seed, B, Kn, M, scale):
    # weights held as float16 bit patterns give bit for bit what their float32 values give
    rng = np.random.default_rng(seed)
    x, b = rnd(rng, (B, Kn), scale), rnd(rng, (M,))
    x[rng.random((B, Kn)) < 0.5] = 0                         # the skipped-zero path too
    w16 = (rng.standard_normal((Kn, M)) * 10.0 ** rng.integers(-6, 3)).astype(np.float16)
    got = K.fully_connected(x, w16.view(np.uint16), b)
    np.testing.assert_array_equal(got, K.fully_connected(x, w16.astype(np.float32), b))


# --- fused multiply-add --------------------------------------------------------------------------------------

@njit
def _madd_all(acc, x, w, out, emulated):
    for i in range(acc.shape[0]):
        out[i] = K._fma_emulated(acc[i], x[i], w[i]) if emulated else K.madd(acc[i], x[i], w[i])


def _madd(acc, x, w, emulated):
    acc, x, w = (np.atleast_1d(np.asarray(v, np.float32)) for v in (acc, x, w))
    out = np.empty(acc.size, np.float32)
    _madd_all(acc, x, w, out, emulated)
    return out


def _correctly_rounded(acc, x, w):
    """acc + x * w, exactly (fractions), rounded to the nearest float32, ties to even: the independent twin."""
    from fractions import Fraction
    q = Fraction(float(acc)) + Fraction(float(x)) * Fraction(float(w))
    f = np.float32(float(q))                    # within one float32 step of the answer
    cands = [f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - q), int(np.array(c).view(np.uint32)) & 1))


@pytest.mark.parametrize("emulated", [False, True])
def test_madd_rounds_once(emulated):
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: with one rounding the 2^-24 survives the cancellation, with a rounded
    # product in between it is lost
    x = np.float32(1 + 2.0 ** -12)
    acc = np.float32(-(1 + 2.0 ** -11))
    assert np.float32(x * x) + acc == 0                                     # multiply, then add
    assert _madd(acc, x, x, emulated)[0] == np.float32(2.0 ** -24)
    assert K.madd(acc, x, x) == np.float32(2.0 ** -24)                     # the Python-level function
    # 1 + x * w = 1 + 2^-24 + 124463 * 2^-71, just above a float32 tie: rounding the exact sum to float64
    # first lands on the tie, which then goes to the even neighbour 1.0; the correctly rounded result is the
    # next float32 up (the emulation rounds to odd for this)
    x, w = np.float32(8390641 * 2.0 ** -23), np.float32(16773151 * 2.0 ** -48)
    assert np.float32(np.float64(x) * np.float64(w) + 1.0) == 1.0                # double rounding
    assert _madd(1.0, x, w, emulated)[0] == np.float32(1 + 2.0 ** -23)


finite32 = st.floats(-2.0 ** 60, 2.0 ** 60, width=32)         # subnormals included; products stay finite


@given(acc=finite32, x=finite32, w=finite32, cancel=st.booleans())
def test_madd_is_correctly_rounded(acc, x, w, cancel):
    # both paths (the FMA instruction where this CPU has one, and the float64 emulation) against exact
    # rational arithmetic; `cancel` puts acc next to -x*w, where a second rounding would show
    if cancel:
        acc = np.float32(-np.float32(x * w) + np.float32(acc) * np.float32(2.0 ** -30))
    want = _correctly_rounded(acc, x, w)
    for emulated in (False, True):
        got = _madd(acc, x, w, emulated)[0]
        assert got == want, (acc, x, w, emulated, got, want)


@given(seed=seeds)
def test_madd_paths_agree_bit_for_bit(seed):
    # many values of every magnitude through both paths at once (the kernel loops vectorise this one): the
    # same bits, signed zeros included (on a CPU without FMA both are the emulation, and this checks nothing
    # more; test_madd_is_correctly_rounded still checks it against exact arithmetic)
    rng = np.random.default_rng(seed)
    n = 4096
    acc, x, w = ((rng.standard_normal(n) * 10.0 ** rng.integers(-20, 15, n)).astype(np.float32) for _ in range(3))
    acc[: n // 4] = -(x[: n // 4] * w[: n // 4])        # acc = -round(x w): the result is the rounding error
    acc[n // 4: n // 2] = 0
    np.testing.assert_array_equal(_madd(acc, x, w, False).view(np.uint32), _madd(acc, x, w, True).view(np.uint32))


# --- work taken in turn by the threads ------------------------------------------------------------------------

@njit(parallel=True)
def _claims(n, work):
    """How many times each of n items is taken when every thread takes items in turn (kernels._take), each
    item doing `work` steps of busy arithmetic (so that the threads overlap)."""
    taken = np.zeros(n, np.int64)
    nxt = np.zeros(1, np.int64)
    for _ in numba.prange(n):
        t = K._take(nxt)
        while t < n:
            s = 0.0
            for i in range(work):
                s += np.sqrt(i + t)
            taken[t] += 1 if s >= 0.0 else 2
            t = K._take(nxt)
    return taken


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_take_hands_out_every_item_exactly_once(threads):
    """Every work item is taken once and only once, however many threads race for the counter (an increment
    that is not atomic hands some items out twice and skips others; the items here are short, so the
    threads take from the counter thousands of times at once)."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for n, work in ((1, 10), (7, 1000), (20000, 0), (20000, 20)):
            np.testing.assert_array_equal(_claims(n, work), np.ones(n, np.int64))
    finally:
        numba.set_num_threads(before)


@njit(nogil=True)
def _two_phases(counter, n, n_first, work, first, seen, taken):
    """A run_parallel worker: items t < n_first write first[t] (after `work` steps of busy arithmetic) and are
    counted when finished (contract._finish on taken[n]); the later items wait for all of them
    (contract._wait_for) and record in seen[t] how many of first[] they find written."""
    t = K.contract._take(counter)
    while t < n:
        taken[t] += 1
        if t < n_first:
            s = 0.0
            for i in range(work):
                s += np.sqrt(i + t)
            first[t] = 1 if s >= 0.0 else 2
            K.contract._finish(taken[n:])
        else:
            K.contract._wait_for(taken[n:], n_first)
            seen[t] = first.sum()
        t = K.contract._take(counter)


@njit(nogil=True)
def _raises(counter, n):
    t = K.contract._take(counter)
    while t < n:
        if t == n - 1:
            raise ValueError("the last item")
        t = K.contract._take(counter)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_run_parallel_runs_every_item_once_and_later_items_see_the_first(threads):
    """kernels.parallel.run_parallel: each of n items runs exactly once, however many threads share them, and
    an item that waits for the first phase (_wait_for) sees everything the first phase wrote."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for n, n_first, work in ((1, 1, 0), (5, 0, 0), (9, 8, 2000), (3000, 100, 50), (3000, 2999, 0)):
            first, seen = np.zeros(n, np.int64), np.zeros(n, np.int64)
            taken = np.zeros(n + 1, np.int64)                 # taken[n]: the finished count
            K.parallel.run_parallel(_two_phases, n, n, n_first, work, first, seen, taken)
            np.testing.assert_array_equal(taken[:n], np.ones(n, np.int64))
            assert taken[n] == n_first and (first[:n_first] == 1).all()
            np.testing.assert_array_equal(seen[n_first:], np.full(n - n_first, n_first))
    finally:
        numba.set_num_threads(before)


@njit(nogil=True)
def _fill(counter, n, out, value):
    t = K.contract._take(counter)
    while t < n:
        out[t] = value + t
        t = K.contract._take(counter)


def test_run_parallel_follows_a_change_of_argument_types():
    """A worker run with other argument types than its last run gets the entry point compiled for them
    (run_parallel keeps only the last one; the launcher refuses a token that is not its types'), alternating
    back and forth."""
    for _ in range(2):
        for dtype, value in ((np.float64, 0.5), (np.float32, np.float32(1.5)), (np.int64, 7)):
            out = np.zeros(50, dtype)
            K.parallel.run_parallel(_fill, 50, 50, out, value)
            np.testing.assert_array_equal(out, value + np.arange(50, dtype=dtype))
    out = np.zeros(3)
    assert K.parallel._launch(0, 12345, 3, 3, out, 0.5) == -1 and not out.any()     # a wrong token: nothing runs


def test_run_parallel_reports_a_worker_that_raises():
    """A worker's exception cannot cross the threads: run_parallel raises a RuntimeError naming the worker."""
    with pytest.raises(RuntimeError, match="_raises"):
        K.parallel.run_parallel(_raises, 4, 4)


def test_run_parallel_from_two_threads_on_the_workqueue_layer():
    """Numba's workqueue threading layer aborts the process when two threads run parallel regions at once;
    with it, run_parallel's runs take turns (a fresh process: the layer is chosen once)."""
    child = (
        "import threading\n"
        "import numpy as np, numba\n"
        "from numba import njit\n"
        "from musica_ref import kernels as K\n"
        "@njit(nogil=True)\n"
        "def spin(counter, n, out):\n"
        "    t = K.contract._take(counter)\n"
        "    while t < n:\n"
        "        s = 0.0\n"
        "        for i in range(20000):\n"
        "            s += np.sqrt(i + t)\n"
        "        out[t] = s\n"
        "        t = K.contract._take(counter)\n"
        "outs = [np.zeros(64) for _ in range(2)]\n"
        "def run(k):\n"
        "    for _ in range(100):\n"
        "        K.parallel.run_parallel(spin, 64, 64, outs[k])\n"
        "threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(numba.threading_layer(), bool(np.array_equal(outs[0], outs[1]) and outs[0].all()))\n")
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["workqueue", "True"]


# --- a first run's feature worker compiled in a helper process (kernels.precompile) ---------------------------

def test_precompile_knows_the_argument_types_its_workers_are_run_with(monkeypatch):
    """The helper compiles each feature worker for the types in precompile.WORKERS: they must be the types
    a model's runs give it (one face: level_patch_features; a batch: levels_patch_features), or the helper's
    work is wasted and the run compiles the worker again itself."""
    seen = {}
    real = K.features.run_parallel

    def spy(worker, n_items, *args):
        seen[worker] = tuple(numba.typeof(a) for a in (np.zeros(1, np.int64),) + args)
        return real(worker, n_items, *args)
    monkeypatch.setattr(K.features, "run_parallel", spy)
    model = m.MuSiCa(m.random_weights(m.get_variant("musica19"), seed=1))
    image = m.load_image(EXAMPLE)
    model.predict(image, EXAMPLE_BOX)
    model.predict_batch(image, [EXAMPLE_BOX, (60, 70, 240, 250)])
    for name, (worker, types) in K.precompile.WORKERS.items():
        assert seen[worker] == types, name


def test_a_first_run_compiles_the_feature_worker_in_a_helper_process(tmp_path):
    """A fresh process with an empty cache: its first predict starts the helper, loads the feature worker
    from the cache the helper filled (it does not compile it itself), compiles the fully connected chunk
    only for the types it gave the helper, and gives the bits of a process that compiled everything
    itself."""
    if K.precompile._cores() < 2:
        pytest.skip("one core: no helper process is started")
    child = (
        "import json, sys\n"
        "import musica_ref as m\n"
        "from musica_ref.kernels import features, precompile\n"
        "model = m.MuSiCa(m.random_weights(m.get_variant('musica19'), seed=3))\n"
        "r = model.predict(m.load_image(sys.argv[1]), (92, 112, 228, 236))\n"
        "compiled_here = [bool((c.metadata or {}).get('timers')) for c in features._face_items.overloads.values()]\n"
        "chunk = [str(t) for t in precompile.dense._fc_chunk.signatures]\n"
        "print(json.dumps({'started': precompile.started, 'compiled_here': compiled_here, 'chunk': chunk,\n"
        "                  'landmarks': r.landmarks.tolist()}))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), MUSICA_REF_COMPILE_HELPER="1")
    p = subprocess.run([sys.executable, "-c", child, str(EXAMPLE)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["started"] == ["_face_items"] and got["compiled_here"] == [False]
    # float32 weights everywhere: the chunk is compiled for one tuple of types, SHARED's (else the helper
    # compiled it too, and the two processes could write its cache index at once)
    assert got["chunk"] == [str(K.precompile.SHARED[0][1])]
    want = m.MuSiCa(m.random_weights(m.get_variant("musica19"), seed=3)).predict(m.load_image(EXAMPLE), EXAMPLE_BOX)
    np.testing.assert_array_equal(np.array(got["landmarks"]), want.landmarks)


def test_no_helper_process_where_it_cannot_help(monkeypatch):
    """precompile.start starts nothing, and the run compiles the worker itself, when the helper is turned
    off, the machine has one core, or no process can be started; a run waits for a helper that is too slow
    only so long, then stops it."""
    popen_calls = []

    def popen(*a, **k):
        popen_calls.append(a)
        raise OSError("no processes here")

    monkeypatch.setattr(K.precompile, "_load_cached", lambda worker, sig: False)
    monkeypatch.setattr(K.precompile.subprocess, "Popen", popen)
    for env, cores in (("0", 8), ("1", 1), ("1", 8)):
        monkeypatch.setattr(K.precompile, "_asked", set())
        monkeypatch.setenv("MUSICA_REF_COMPILE_HELPER", env)
        monkeypatch.setattr(K.precompile, "_cores", lambda: cores)
        assert K.precompile.start(one_face=True) is False
    assert len(popen_calls) == 1 and not K.parallel._elsewhere          # only the last could try

    class Slow:
        killed = waited = 0

        def wait(self, timeout=None):
            self.waited += 1
            if timeout is not None:
                raise subprocess.TimeoutExpired("helper", timeout)

        def kill(self):
            self.killed += 1
    slow = Slow()
    monkeypatch.setattr(K.parallel, "_addresses", {})                     # as if _fill had never run
    monkeypatch.setattr(K.parallel, "_last", {})
    K.parallel.compiled_elsewhere(_fill, slow)
    out = np.zeros(10)
    K.parallel.run_parallel(_fill, 10, 10, out, 1.0)                      # waits, stops it, runs anyway
    assert slow.killed == 1 and slow.waited == 2 and not K.parallel._elsewhere
    np.testing.assert_array_equal(out, 1.0 + np.arange(10))


# --- int8 recurrent weights ------------------------------------------------------------------------------------

@given(seed=seeds, B=st.integers(1, 40), Kn=st.integers(1, 600), M=st.integers(1, 70), scale=scales)
def test_fully_connected_scaled_matches_twin(seed, B, Kn, M, scale):
    rng = np.random.default_rng(seed)
    x, b = rnd(rng, (B, Kn), scale), rnd(rng, (M,))
    q = rng.integers(-127, 128, (Kn, M)).astype(np.int8)
    s = (rng.random(M) * 0.01).astype(np.float32)
    got = K.fully_connected_scaled(x, q, s, b)
    ref = R.fully_connected_scaled(x.astype(np.float64), q.astype(np.float64), s.astype(np.float64),
                                   b.astype(np.float64))
    # the integer sum carries the n * eps bound; scaling and adding the bias round twice more
    dot = np.abs(x).astype(np.float64) @ np.abs(q.astype(np.float64))
    bound = (Kn + 2) * EPS32 * (s * dot + np.abs(b)) + 1e-30
    assert got.dtype == np.float32
    assert_within(got, ref, bound, "fully_connected_scaled")
    for i in (0, B - 1):                                     # a row alone = the same row in the batch
        np.testing.assert_array_equal(K.fully_connected_scaled(x[i:i + 1], q, s, b)[0], got[i])


def test_fully_connected_scaled_rejects_wrong_scale():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="scale"):
        K.fully_connected_scaled(rnd(rng, (2, 5)), np.zeros((5, 3), np.int8), np.ones(2, np.float32),
                                 np.zeros(3, np.float32))


@given(seed=seeds, n=st.integers(1, 3000), offset=st.sampled_from([0.0, 100.0, -3e4]))
def test_mean_std_matches_numpy(seed, n, offset):
    x = (np.random.default_rng(seed).standard_normal(n) * 7 + offset).astype(np.float32)
    mean, std = K.mean_std(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, x64.std(), rtol=1e-9, atol=1e-12 * max(1.0, abs(offset)))


# --- every public kernel against its twin (kernels_ref.TWINS) ---------------------------------------------------
#
# One case per kernel: (got, want, bound) from a seeded generator, given the twin. A kernel added to
# kernels.__all__ without a twin in kernels_ref.TWINS and a case here fails test_every_kernel_has_its_twin.

def _conv_bound(x, w, b, t):
    return 9 * x.shape[3] * EPS32 * t.conv3x3(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                                             np.abs(b), relu=False) + 1e-30


def _fc_bound(x, w, b):
    return (x.shape[1] + 1) * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64) + np.abs(b)) + 1e-30


def _features_case(rng, t, C=4):
    w1, w2 = rnd(rng, (3, 3, 3, C)), rnd(rng, (3, 3, C, C))
    b1, b2 = rnd(rng, (C,)), rnd(rng, (C,))
    wa, ba = rnd(rng, (8 * C, 8 * C), 0.1), rnd(rng, (8 * C,))
    return (w1, b1, w2, b2, wa, ba), 1e-4          # float32 through five layers against float64: relative


def _resample_case(rng, t, kernel):
    img = rng.uniform(0, 255, (17, 23, 3)).astype(np.float32)
    ox, oy, step, h, w = float(rng.uniform(-5, 10)), float(rng.uniform(-5, 8)), float(rng.uniform(0.4, 3)), 9, 11
    want = t(img.astype(np.float64), (ox, oy), step, (h, w))
    if kernel == "resample":
        got = K.resample(img, ox, oy, step, h, w)
    elif kernel == "resample_into":
        got = np.empty((h, w, 3), np.float32)
        K.resample_into(img, ox, oy, step, got)
    else:
        data = np.empty(h * w * 3, np.float32)
        K.resample_many(img, np.array([0, 0, 17, 23]), np.array([ox]), np.array([oy]), np.array([step]), data,
                        np.array([0]), np.array([[h, w]]))
        got = data.reshape(h, w, 3)
    return got, want, 1e-4 * 255


def _case(name, rng, t):
    if name == "madd":
        acc, x, w = (rnd(rng, 50, 10.0, 0.0) for _ in range(3))
        return (np.array([K.madd(a, b, c) for a, b, c in zip(acc, x, w)]),
                np.array([t(a, b, c) for a, b, c in zip(acc, x, w)]), 0.0)
    if name == "widen":
        bits = rng.integers(0, 2**16, 500).astype(np.uint16)
        bits = bits[np.isfinite(bits.view(np.float16))]
        got = np.empty(bits.size, np.float32)
        _widen_all(bits, got, False)
        return got, t(bits), 0.0
    if name.startswith("resample") and name != "resample_span":
        return _resample_case(rng, t, name)
    if name == "resample_span":
        args = [(float(rng.uniform(-30, 30)), float(rng.uniform(0.2, 9)), int(rng.integers(1, 30)), 40)
                for _ in range(20)]
        return (np.array([K.resample_span(*a) for a in args]), np.array([t(*a) for a in args]), 0.0)
    if name == "mean_std":
        x = rnd(rng, 1000, 5.0) + np.float32(3)
        return np.array(K.mean_std(x)), np.array(t(x)), 1e-9
    if name.startswith("normalise_pyramid"):
        levels = [rnd(rng, n, 5.0) + np.float32(7) for n in (300, 75, 19)]
        want = np.concatenate(t(*levels))
        if name == "normalise_pyramid":
            K.normalise_pyramid(*levels)
            return np.concatenate(levels), want, 1e-5
        data = np.concatenate(levels)
        K.normalise_pyramids(data, np.array([[0, 300, 375]]), np.array([[300, 75, 19]]))
        return data, want, 1e-5
    if name == "extract_patches":
        level, corners = rnd(rng, (20, 25, 3)), rng.integers(-8, 24, (6, 2))
        return K.extract_patches(level, corners, 14), t(level, corners, 14), 0.0
    if name == "conv3x3":
        x, w, b = rnd(rng, (2, 9, 8, 3)), rnd(rng, (3, 3, 3, 5)), rnd(rng, (5,))
        return K.conv3x3(x, w, b, True), t(x.astype(np.float64), w, b, True), _conv_bound(x, w, b, R)
    if name == "maxpool2x2":
        x = rnd(rng, (2, 8, 6, 4))
        return K.maxpool2x2(x), t(x), 0.0
    if name == "crop_concat":
        c2, p2 = rnd(rng, (3, 4, 4, 5)), rnd(rng, (3, 2, 2, 5))
        return K.crop_concat(c2, p2), t(c2, p2), 0.0
    if name in ("relu", "sigmoid", "tanh"):
        x = rnd(rng, 300, 4.0)
        return getattr(K, name)(x), t(x.astype(np.float64)), 0.0 if name == "relu" else 4 * EPS32
    if name == "gate":
        f, a = rnd(rng, (4, 16)), rnd(rng, (4, 16))
        return K.gate(f, a), t(f.astype(np.float64), a), EPS32 * np.abs(f * a)
    if name == "fully_connected":
        x, w, b = rnd(rng, (5, 300)), rnd(rng, (300, 20)), rnd(rng, (20,))
        return K.fully_connected(x, w, b), t(x.astype(np.float64), w, b), _fc_bound(x, w, b)
    if name == "fully_connected_scaled":
        x, q = rnd(rng, (5, 300)), rng.integers(-127, 128, (300, 20)).astype(np.int8)
        s, b = np.abs(rnd(rng, (20,), 0.01, 0.0)) + np.float32(1e-3), rnd(rng, (20,))
        got = K.fully_connected_scaled(x, q, s, b)
        return got, t(x.astype(np.float64), q, s, b), _fc_bound(x, q.astype(np.float32) * s, b)
    if name in ("patch_features", "level_patch_features", "levels_patch_features"):
        w, rel = _features_case(rng, t)
        if name == "patch_features":
            p = rnd(rng, (5, 14, 14, 3))
            got, want = K.patch_features(p, *K.feature_weights(*w)), t(p.astype(np.float64), *w)
        else:
            level, corners = rnd(rng, (24, 30, 3)), rng.integers(-6, 24, (7, 2))
            want = t(level.astype(np.float64), corners, *w)
            got = np.empty((7, 32), np.float32)
            if name == "level_patch_features":
                K.level_patch_features(level, corners, *K.feature_weights(*w), got)
            else:
                K.levels_patch_features(level.reshape(-1), np.array([0]), np.array([[24, 30, 3]]), corners[None],
                                        *K.feature_weights(*w), got)
        return got, want, rel * max(1.0, float(np.abs(want).max()))
    raise KeyError(name)


def test_every_twin_is_a_kernel():
    assert set(R.TWINS) == set(K.__all__)


@pytest.mark.parametrize("name", K.__all__)
def test_every_kernel_has_its_twin(name):
    assert name in R.TWINS, f"kernels.{name} has no twin in kernels_ref.TWINS"
    for seed in range(3):
        got, want, bound = _case(name, np.random.default_rng(seed), R.TWINS[name])
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert_within(got, want, bound, f"{name} (seed {seed})")
