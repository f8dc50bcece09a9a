"""Golden parity, no PyTorch needed: the Numba engine reproduces every tensor of each golden file in
tests/golden/ (written by tools/golden.py from the trainer's float64 PyTorch model and the shipped weights).

Tolerances per tensor, relative to the tensor's largest magnitude (float32 engine against a float64
reference): pyramid levels 1e-5 (the same float32 code; only the machine may differ), patches and network
intermediates 1e-4, landmarks 2e-3 level-0 pixels, error estimates 1e-4, patch centres 2e-3 px.
"""

import h5py
import numpy as np
import pytest

import musica_ref as m
from musica_ref import geometry

from conftest import ROOT

GOLDEN = sorted((ROOT / "tests" / "golden").glob("*.h5"))
TOL = {"level": 1e-5, "centres": 2e-3, "tensor": 1e-4, "landmarks": 2e-3, "errors": 1e-4}


def compare(name, got, want, tol, scale=None):
    """One line: OK / NOT OK with max abs and rel difference and the first mismatching positions."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False, f"NOT OK {name}: shape {got.shape} != golden {want.shape}"
    scale = max(1.0, float(np.abs(want).max())) if scale is None else scale
    diff = np.abs(got - want)
    bad = diff > tol * scale
    rel = float((diff / np.maximum(np.abs(want), 1e-12)).max()) if diff.size else 0.0
    line = f"{name}: max abs {diff.max() if diff.size else 0:.3g}, max rel {rel:.3g}, tol {tol * scale:.3g}"
    if bad.any():
        first = [tuple(int(v) for v in ix) for ix in np.argwhere(bad)[:3]]
        return False, f"NOT OK {line}; first mismatches at {first}"
    return True, f"OK {line}"


@pytest.mark.skipif(not GOLDEN, reason="no golden files in tests/golden")
@pytest.mark.parametrize("path", GOLDEN, ids=[p.name for p in GOLDEN])
def test_engine_reproduces_golden_vectors(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "musica-ref-golden", "not a golden file"
        assert int(f.attrs["format_version"]) == 1, "golden format version 1 expected; regenerate with tools/golden.py"
        wpath = ROOT / "weights" / str(f.attrs["weights"])
        assert wpath.is_file(), f"the golden file is for {wpath.name}, which is not in weights/"
        import hashlib
        assert hashlib.sha256(wpath.read_bytes()).hexdigest() == f.attrs["weights_sha256"], \
            f"{wpath.name} changed since {path.name} was written: regenerate it with tools/golden.py"
        model = m.MuSiCa.load(wpath)
        rows = list(f.attrs["patch_rows"])
        image = f["image"][()]
        lines, ok = [], True
        for k in range(int(f.attrs["n_faces"])):
            g = f[f"face_{k}"]
            box = g["box"][()]
            res, trace = model.trace(image, box)
            frame = geometry.face_frame(box)
            checks = [(f"face_{k}/level_{L}", t["level_image"], g[f"level_{L}"][()], TOL["level"])
                      for L, t in ((t["level"], t) for t in trace)]
            for i, t in enumerate(trace):
                gi = g[f"iteration_{i}"]
                checks.append((f"face_{k}/iteration_{i}/centres", t["centres"][0], gi["centres"][()], TOL["centres"]))
                for name in ("patches", "conv1", "pool1", "conv2", "pool2", "features", "attention", "gated"):
                    checks.append((f"face_{k}/iteration_{i}/{name}", np.asarray(t[name])[rows], gi[name][()],
                                   TOL["tensor"]))
                checks.append((f"face_{k}/iteration_{i}/hidden", t["hidden"][0], gi["hidden"][()], TOL["tensor"]))
                checks.append((f"face_{k}/iteration_{i}/out", t["out"][0], gi["out"][()], TOL["tensor"]))
            checks.append((f"face_{k}/landmarks (level-0 px)", res.history * frame.scale,
                           g["landmarks"][()] * frame.scale, TOL["landmarks"]))
            checks.append((f"face_{k}/errors", res.errors, g["errors"][()], TOL["errors"]))
            for name, got, want, tol in checks:
                good, line = compare(name, got, want, tol, scale=1.0 if "centres" in name or "landmarks" in name
                                     or "errors" in name else None)
                ok &= good
                lines.append(line)
    print("\n".join(lines))                      # the per-tensor report (pytest -s shows it)
    assert ok, "golden parity failed:\n" + "\n".join(lines)


def test_every_shipped_model_has_a_current_golden_file():
    """A model cannot ship without its golden file (python tools/golden.py --all writes the missing ones)."""
    shipped = sorted(p.name for p in (ROOT / "weights").glob("*.h5"))
    assert shipped and shipped == [p.name for p in GOLDEN]


def test_golden_tool_arguments():
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[train]')")
    from tools import golden
    for argv in ([], ["--all", "--weights", "w.h5"], ["--weights", "w.h5"], ["--force"]):
        with pytest.raises(SystemExit):
            golden.main(argv)
    assert golden.is_current(GOLDEN[0], ROOT / "weights" / GOLDEN[0].name)
    assert not golden.is_current(ROOT / "tests" / "golden" / "none.h5", ROOT / "weights" / GOLDEN[0].name)
