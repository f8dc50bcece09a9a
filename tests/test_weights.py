"""The weights file, format version 2 (version 1 still read): round trip, and one test per failure mode of
the loader."""
from pathlib import Path

import h5py
import numpy as np
import pytest

import musica_ref as m
from musica_ref.network import TENSORS
from musica_ref.weights import FORMAT_NAME, check_weights

SMALL = m.custom_variant(5, [0, 3], name="tiny")


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "w.h5"
    m.save_weights(path, m.random_weights(SMALL, seed=1))
    return path


def edit(path, fn, rehash=True):
    """Change the file with fn(f); rehash: then give every dataset the checksum of what it now holds (a file
    whose exporter wrote bad values), else leave the old checksums (a file damaged after it was written)."""
    from musica_ref.weights import checksum
    with h5py.File(path, "r+") as f:
        fn(f)
        if rehash:
            f.visititems(lambda name, ds: ds.attrs.__setitem__("sha256", checksum(ds[()]))
                         if isinstance(ds, h5py.Dataset) else None)
    return path


def raises(path, *words):
    with pytest.raises(m.WeightsError) as e:
        m.load_weights(path)
    for w in words:
        assert w in str(e.value), f"message {str(e.value)!r} does not name {w!r}"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip(tmp_path, dtype):
    w = m.random_weights(m.get_variant("musica19"), seed=4)
    w.provenance["data"] = "none (random)"
    m.save_weights(tmp_path / "w.h5", w, dtype=dtype)
    back = m.load_weights(tmp_path / "w.h5")
    assert back.variant == w.variant
    np.testing.assert_array_equal(back.mean_shape, w.mean_shape)
    for a, b in zip(w.iterations, back.iterations):
        for name in TENSORS:
            assert b[name].dtype == np.float32 and b[name].flags.c_contiguous
            np.testing.assert_array_equal(b[name], a[name].astype(dtype).astype(np.float32))
    assert back.provenance["data"] == "none (random)"
    with h5py.File(tmp_path / "w.h5") as f:
        assert f["iteration_2/recurrent/weight"].dtype == dtype
        assert f.attrs["format"] == FORMAT_NAME and f.attrs["format_version"] == 2


def test_missing_file(tmp_path):
    raises(tmp_path / "nope.h5", "does not exist")


def test_directory(tmp_path):
    raises(tmp_path, "directory")


def test_not_hdf5(tmp_path):
    p = tmp_path / "w.h5"
    p.write_bytes(b"\x89PNG not a weights file" * 10)
    raises(p, "not an HDF5 file")


def test_empty_hdf5(tmp_path):
    p = tmp_path / "w.h5"
    h5py.File(p, "w").close()
    raises(p, "no attribute 'format'")


def test_wrong_format_name(good):
    raises(edit(good, lambda f: f.attrs.__setitem__("format", "something-else")), "format 'something-else'")


def test_wrong_version(good):
    raises(edit(good, lambda f: f.attrs.__setitem__("format_version", 3)), "version 3", "reads versions 1, 2")


def test_version_1_files_load_without_checksums(good, capsys):
    """A version 1 file (no checksum attributes) loads as before, and `info` says it has no checksums."""
    from musica_ref import cli

    def to_v1(f):
        f.attrs["format_version"] = 1
        f.visit(lambda name: f[name].attrs.pop("sha256", None) if isinstance(f[name], h5py.Dataset) else None)
    edit(good, to_v1)
    ref = m.random_weights(SMALL, seed=1)
    back = m.load_weights(good)
    np.testing.assert_array_equal(back.iterations[1]["conv1/weight"], ref.iterations[1]["conv1/weight"])
    assert cli.main(["info", str(good)]) == 0
    assert "version 1, no checksums" in capsys.readouterr().out


def test_a_flipped_bit_is_caught_and_its_tensor_named(good, capsys):
    from musica_ref import cli

    def flip(f):
        ds = f["iteration_1/conv2/weight"]
        a = ds[()]
        a.view(np.uint32).reshape(-1)[17] ^= 1 << 3            # one bit of one weight
        ds[...] = a
    raises(edit(good, flip, rehash=False), "iteration_1/conv2/weight", "checksum")
    assert cli.main(["info", str(good)]) == 2
    assert "iteration_1/conv2/weight fails its checksum" in capsys.readouterr().err


def test_a_version_2_tensor_without_checksum_is_refused(good):
    raises(edit(good, lambda f: f["mean_shape"].attrs.pop("sha256"), rehash=False), "mean_shape has no checksum")


def test_a_huge_declared_tensor_is_refused_before_reading(tmp_path):
    """A file that declares one tensor as (400000, 10000) float32 (15 GiB, stored sparse: a few KB on disk)
    is refused from its metadata, without allocating it."""
    import resource
    p = tmp_path / "w.h5"
    m.save_weights(p, m.random_weights(SMALL, seed=1))
    with h5py.File(p, "r+") as f:
        del f["iteration_0/recurrent/weight"]
        f.create_dataset("iteration_0/recurrent/weight", shape=(400000, 10000), dtype=np.float32,
                         chunks=(1000, 1000))                   # never written: no chunk on disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    raises(p, "iteration_0/recurrent/weight", "shape (400000, 10000)")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000   # KB: nothing near 15 GiB


@pytest.mark.parametrize("N, P", [(10 ** 7, 2), (5, 6), (0, 0)])
def test_absurd_sizes_are_refused_before_reading(good, N, P):
    def setsize(f):
        f.attrs["n_landmarks"], f.attrs["n_patches"] = N, P
    raises(edit(good, setsize), f"N = {N} landmarks and P = {P} patches")


def test_non_integer_attribute(good):
    raises(edit(good, lambda f: f.attrs.__setitem__("n_patches", 2.5)), "'n_patches'", "integer")
    raises(edit(good, lambda f: f.attrs.__setitem__("format_version", float("inf"))), "'format_version'", "integer")


def test_wrong_iteration_count(good):
    raises(edit(good, lambda f: f.attrs.__setitem__("n_iterations", 2)), "n_iterations = 2")


def test_missing_tensor(good):
    raises(edit(good, lambda f: f.__delitem__("iteration_1/attention/bias")), "iteration_1/attention/bias",
           "missing")


def test_missing_iteration(good):
    raises(edit(good, lambda f: f.__delitem__("iteration_2")), "iteration_2", "missing")


def test_missing_mean_shape(good):
    raises(edit(good, lambda f: f.__delitem__("mean_shape")), "'mean_shape'")


def _replace(name, data):
    def fn(f):
        del f[name]
        f.create_dataset(name, data=data)
    return fn


def test_misshaped_tensor(good):
    raises(edit(good, _replace("iteration_0/conv2/weight", np.zeros((3, 3, 32, 31), np.float32))),
           "iteration_0/conv2/weight", "(3, 3, 32, 31)", "(3, 3, 32, 32)")


def test_misshaped_mean_shape(good):
    raises(edit(good, _replace("mean_shape", np.zeros((4, 2)))), "mean_shape", "(4, 2)", "(5, 2)")


def test_non_finite_tensor(good):
    bad = np.zeros((512, 11), np.float32)
    bad[3, 4] = np.nan
    raises(edit(good, _replace("iteration_2/output/weight", bad)), "iteration_2/output/weight", "non-finite")


def test_non_finite_mean_shape(good):
    raises(edit(good, _replace("mean_shape", np.full((5, 2), np.inf))), "mean_shape", "non-finite")


def test_integer_tensor(good):
    raises(edit(good, _replace("iteration_0/conv1/bias", np.zeros(32, np.int32))), "iteration_0/conv1/bias",
           "dtype int32")


def test_inconsistent_patch_count(good):
    raises(edit(good, lambda f: f.attrs.__setitem__("n_patches", 3)), "inconsistent variant", "n_patches = 3")


def test_patch_index_out_of_range(good):
    raises(edit(good, _replace("patch_indices", np.array([0, 7], np.int32))), "inconsistent variant", "[7]")


def test_repeated_patch_index(good):
    raises(edit(good, _replace("patch_indices", np.array([3, 3], np.int32))), "inconsistent variant", "repeat")


def test_recurrent_layer_inconsistent_with_patches(tmp_path):
    """A file whose tensors were made for another patch count than its variant says."""
    w = m.random_weights(SMALL)
    other = m.random_weights(m.custom_variant(5, [0, 1, 2]))
    w.iterations[1]["recurrent/weight"] = other.iterations[1]["recurrent/weight"]
    with pytest.raises(m.WeightsError, match=r"iteration_1/recurrent/weight.*\(1280, 512\).*P = 2"):
        check_weights(w)


def test_wrong_geometry_constant(good):
    raises(edit(good, lambda f: f["geometry"].attrs.__setitem__("bb_size", 128.0)), "'bb_size'", "142")


def test_float16_overflow_refused(tmp_path):
    w = m.random_weights(SMALL)
    w.iterations[0]["output/bias"][0] = 1e6
    with pytest.raises(ValueError, match="float16"):
        m.save_weights(tmp_path / "w.h5", w, dtype=np.float16)


def test_truncated_file(good, tmp_path):
    data = good.read_bytes()
    p = tmp_path / "cut.h5"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(m.WeightsError):
        m.load_weights(p)


def test_no_pickle_anywhere():
    import pathlib
    src = pathlib.Path(m.__file__).parent
    for py in src.glob("*.py"):
        text = py.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, py


def test_every_shipped_weights_file_loads_with_its_provenance():
    shipped = sorted((Path(__file__).resolve().parent.parent / "weights").glob("*.h5"))
    assert shipped, "weights/ holds no .h5 file"
    for path in shipped:
        w = m.load_weights(path)
        assert path.stem == w.variant.name
        for key in ("data", "data_terms", "epochs", "steps", "validation_nme_io", "git_commit"):
            assert key in w.provenance, f"{path.name}: provenance lacks {key!r}"
        assert "non-commercial" in w.provenance["data_terms"]
