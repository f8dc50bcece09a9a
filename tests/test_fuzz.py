"""Property-based fuzzing of everything a user hands the library as a file: weights files (flipped bytes,
truncations, changed attributes, shapes and dtypes), image files (random and damaged bytes) and `.pts` text.
Every case must end in the library's own error type or a valid result: never another exception, a crash or a
NaN. The number of cases per test is the hypothesis profile's (conftest.py: 25 in CI; HYPOTHESIS_PROFILE=
thorough runs 300)."""
import io

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import musica_ref as m

from conftest import EXAMPLE

SMALL = m.custom_variant(3, [0, 2], name="fuzz")


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory):
    p = tmp_path_factory.mktemp("fuzz") / "w.h5"
    m.save_weights(p, m.random_weights(SMALL, seed=3), dtype=np.float16)
    return p.read_bytes()


def load_or_error(path):
    """load_weights(path): a valid Weights or WeightsError; anything else fails the test."""
    try:
        w = m.load_weights(path)
    except m.WeightsError:
        return None
    for it in w.iterations:
        for a in it.values():
            assert np.all(np.isfinite(a))
    assert np.all(np.isfinite(w.mean_shape))
    return w


@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8))
def test_weights_with_flipped_bits(tmp_path_factory, weights_bytes, flips):
    data = bytearray(weights_bytes)
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    p = tmp_path_factory.mktemp("flip") / "w.h5"
    p.write_bytes(bytes(data))
    w = load_or_error(p)
    if w is not None:           # the flips missed every tensor (free space, a provenance string): the checksums
        ref = m.random_weights(SMALL, seed=3)                 # vouch that every value is the one written
        for a, b in zip(w.iterations, ref.iterations):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k].astype(np.float16).astype(np.float32))


@given(keep=st.floats(0, 1, exclude_max=True))
def test_truncated_weights(tmp_path_factory, weights_bytes, keep):
    p = tmp_path_factory.mktemp("cut") / "w.h5"
    p.write_bytes(weights_bytes[:int(keep * len(weights_bytes))])
    assert load_or_error(p) is None


ATTRS = ["format", "format_version", "variant", "n_landmarks", "n_patches", "n_iterations", "default_tf"]
VALUES = st.one_of(st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.lists(st.integers(-5, 5), min_size=0, max_size=3),
                   st.sampled_from([1, 2, 3, "musica-ref-weights", 0.05]))
DATASETS = ["patch_indices", "mean_shape", "iteration_0/conv1/weight", "iteration_1/output/bias",
            "iteration_2/recurrent/weight"]


@given(attr=st.sampled_from(ATTRS), value=VALUES)
def test_weights_with_changed_attributes(tmp_path_factory, weights_bytes, attr, value):
    p = tmp_path_factory.mktemp("attr") / "w.h5"
    p.write_bytes(weights_bytes)
    with h5py.File(p, "r+") as f:
        try:
            f.attrs[attr] = value
        except (TypeError, ValueError):
            return                          # h5py cannot store it: not a file anyone can make
    load_or_error(p)


@given(name=st.sampled_from(DATASETS),
       shape=st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
       dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.uint8, np.bool_]),
       fill=st.sampled_from([0.0, 1.0, np.nan, np.inf, 1e30]), rehash=st.booleans())
def test_weights_with_changed_datasets(tmp_path_factory, weights_bytes, name, shape, dtype, fill, rehash):
    from musica_ref.weights import checksum
    p = tmp_path_factory.mktemp("ds") / "w.h5"
    p.write_bytes(weights_bytes)
    with np.errstate(invalid="ignore", over="ignore"):
        data = np.full(shape, fill).astype(dtype)
    with h5py.File(p, "r+") as f:
        del f[name]
        ds = f.create_dataset(name, data=data)
        if rehash:                          # as a buggy exporter would write it, with a matching checksum
            ds.attrs["sha256"] = checksum(data)
    load_or_error(p)


def predict_or_error(model, path):
    try:
        image = m.load_image(path)
    except m.InputError:
        return
    assert image.ndim == 3 and image.shape[2] == 3
    r = model.predict(image, (0, 0, image.shape[1], image.shape[0]))
    assert np.all(np.isfinite(r.landmarks)) and np.all(np.isfinite(r.errors))


@pytest.fixture(scope="module")
def tiny_model():
    return m.MuSiCa(m.random_weights(SMALL, seed=1))


@pytest.fixture(scope="module")
def image_files():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    out = {}
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        out[fmt] = buf.getvalue()
    out["example"] = EXAMPLE.read_bytes()[:4096]
    return out


@given(data=st.binary(max_size=300))
def test_random_bytes_as_an_image(tmp_path_factory, tiny_model, data):
    p = tmp_path_factory.mktemp("img") / "x.png"
    p.write_bytes(data)
    predict_or_error(tiny_model, p)


@given(fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
       keep=st.floats(0.05, 1))
def test_damaged_image_files(tmp_path_factory, tiny_model, image_files, fmt, flips, keep):
    data = bytearray(image_files[fmt])
    for where, value in flips:
        data[int(where * len(data))] = value
    p = tmp_path_factory.mktemp("dmg") / f"x.{fmt.lower()}"
    p.write_bytes(bytes(data[:max(1, int(keep * len(data)))]))
    predict_or_error(tiny_model, p)


PTS_PIECES = st.sampled_from(["version: 1\n", "n_points: 3\n", "n_points: x\n", "{\n", "}\n", "1 2\n",
                              "3.5 -4e3\n", "nan 1\n", "inf inf\n", "1 2 3\n", "\n", "  \t\n", "x y\n",
                              "\ufeff", "\x00", "1e400 1\n", "n_points:\n"])


@given(pieces=st.lists(PTS_PIECES, max_size=12), raw=st.binary(max_size=40))
def test_pts_text(tmp_path_factory, pieces, raw):
    p = tmp_path_factory.mktemp("pts") / "x.pts"
    p.write_bytes("".join(pieces).encode("utf-8") + raw)
    try:
        pts = m.read_pts(p)
    except m.InputError:
        return
    assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) > 0 and np.all(np.isfinite(pts))
