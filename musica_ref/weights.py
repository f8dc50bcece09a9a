"""The weights file: HDF5, format "musica-ref-weights", version 2 (documented in docs/weights-format.md).

    /                       attrs: format, format_version, variant, n_landmarks, n_patches, n_iterations
    /patch_indices          (P,) int                  0-based landmark indices, in patch order
    /mean_shape             (N, 2) float              (x, y) in the box frame: box top-left 0, longer side 142
    /geometry               attrs: bb_size, margin, patch_size, iteration_levels, eye_corners
    /iteration_{i}/{layer}/{weight,bias}   i = 0, 1, 2; float32 or float16; weights are (in, out)
    /provenance             attrs: free-form (data set, epochs, validation NME, git commit, ...)
    optional root attribute default_tf: the failure threshold chosen for the model (tools/choose_tf.py)

Version 2 adds a SHA-256 checksum (attribute `sha256`) to every dataset: load_weights verifies each and
names the tensor that fails. Version 1 files (no checksums) still load. Every dataset's shape and dtype are
checked from the file's metadata before any of it is read, so a file that declares a huge tensor is refused
without allocating it. Loading raises WeightsError naming the problem. No pickle anywhere.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import geometry
from .errors import WeightsError
from .network import TENSORS, tensor_shapes
from .variants import MAX_LANDMARKS, Variant, custom_variant

FORMAT_NAME = "musica-ref-weights"
FORMAT_VERSION = 2                  # what save_weights writes
READABLE_VERSIONS = (1, 2)          # 1: no checksums
CHECKSUM_ATTR = "sha256"
FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65504: larger values do not fit float16 storage
N_ITERATIONS = len(geometry.ITERATION_LEVELS)


@dataclass
class Weights:
    """A loaded model: its variant, mean shape and the tensors of every iteration (float32, C-contiguous).

    variant: N landmarks and the P patch indices.
    mean_shape: (N, 2) float64, (x, y) in the box frame.
    iterations: N_ITERATIONS dicts, tensor name (network.TENSORS) -> float32 array (float16 for the tensors
        that load_weights was asked to keep as stored).
    provenance: free-form facts about where the weights come from.
    default_tf: the failure threshold on E that `MuSiCa.predict` uses when the caller gives none (chosen on
        the validation set by tools/choose_tf.py); None when the file has none (then no face is flagged).
    """
    variant: Variant
    mean_shape: np.ndarray
    iterations: list
    provenance: dict = field(default_factory=dict)
    default_tf: float | None = None

    @property
    def n_landmarks(self) -> int:
        return self.variant.n_landmarks

    @property
    def patch_indices(self) -> np.ndarray:
        return np.asarray(self.variant.patch_indices, dtype=np.int64)

    def n_parameters(self) -> int:
        return sum(a.size for it in self.iterations for a in it.values())


def _geometry_attrs(n_landmarks: int) -> dict:
    eyes = geometry.eye_corners(n_landmarks)
    return {"bb_size": geometry.BB_SIZE, "margin": geometry.MARGIN, "patch_size": geometry.PATCH_SIZE,
            "iteration_levels": np.asarray(geometry.ITERATION_LEVELS, dtype=np.int64),
            "eye_corners": np.asarray(eyes if eyes else (-1, -1), dtype=np.int64)}


def _all_finite(a, block=1 << 20) -> bool:
    """np.isfinite(a).all(), a block at a time (no boolean temporary the size of a 9M-weight layer)."""
    flat = a.reshape(-1)
    return all(np.isfinite(flat[k:k + block]).all() for k in range(0, flat.size, block))


def check_weights(w: Weights, keep_float16=()) -> Weights:
    """Check shapes, dtypes and finiteness of an in-memory Weights; return it with float32 C arrays, except
    that float16 tensors named in keep_float16 (e.g. "recurrent/weight") stay float16."""
    N, P = w.variant.n_landmarks, w.variant.n_patches
    ms = np.asarray(w.mean_shape, dtype=np.float64)
    if ms.shape != (N, 2):
        raise WeightsError(f"mean_shape has shape {ms.shape}, expected ({N}, 2) for N = {N} landmarks")
    if not np.all(np.isfinite(ms)):
        raise WeightsError("mean_shape has non-finite values")
    if len(w.iterations) != N_ITERATIONS:
        raise WeightsError(f"expected {N_ITERATIONS} iterations, got {len(w.iterations)}")
    shapes = tensor_shapes(N, P)
    its = []
    for i, it in enumerate(w.iterations):
        clean = {}
        for name in TENSORS:
            where = f"iteration_{i}/{name}"
            if name not in it:
                raise WeightsError(f"tensor {where} is missing")
            a = np.asarray(it[name])
            if a.shape != shapes[name]:
                raise WeightsError(f"tensor {where} has shape {a.shape}, expected {shapes[name]} "
                                   f"for N = {N} landmarks and P = {P} patches")
            if a.dtype in (np.uint16, np.int8):
                raise WeightsError(f"tensor {where} has dtype {a.dtype}: the in-memory storage of a MuSiCa "
                                   f"(quantize.py), not float values; use load_weights(path), or a model "
                                   f"loaded with recurrent='float32'")
            if a.dtype not in (np.float16, np.float32, np.float64):
                raise WeightsError(f"tensor {where} has dtype {a.dtype}; store float32 or float16")
            a = np.ascontiguousarray(a, dtype=np.float16 if a.dtype == np.float16 and name in keep_float16
                                     else np.float32)
            if not _all_finite(a):
                raise WeightsError(f"tensor {where} has non-finite values (NaN or inf)")
            clean[name] = a
        extra = set(it) - set(TENSORS)
        if extra:
            raise WeightsError(f"iteration_{i} has unknown tensors: {sorted(extra)}")
        its.append(clean)
    return Weights(w.variant, ms, its, dict(w.provenance), _check_default_tf(w.default_tf))


def _check_default_tf(v):
    """None, or a finite float > 0 (the stored failure threshold)."""
    if v is None:
        return None
    try:
        fv = float(v)
    except (TypeError, ValueError, OverflowError):
        raise WeightsError(f"default_tf is {v!r:.40}, expected a number") from None
    if not (math.isfinite(fv) and fv > 0):
        raise WeightsError(f"default_tf is {fv}, expected a finite number > 0")
    return fv


def checksum(a: np.ndarray) -> str:
    """SHA-256 (hex) of an array's values as stored: C order, little-endian, its own dtype."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def _dataset(f, name, data):
    ds = f.create_dataset(name, data=data)
    ds.attrs[CHECKSUM_ATTR] = checksum(data)
    return ds


def save_weights(path, w: Weights, dtype=np.float32) -> None:
    """Write `w` to `path` in format version 2, tensors stored as `dtype` (float32 or float16), every
    dataset with its checksum."""
    import h5py
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32):
        raise WeightsError(f"weights are stored as float32 or float16, not {dtype}")
    w = check_weights(w)
    if dtype == np.float16:
        for i, it in enumerate(w.iterations):
            for name, a in it.items():
                if np.any(np.abs(a) > FLOAT16_MAX):
                    raise WeightsError(f"iteration_{i}/{name} does not fit float16 (|value| > 65504)")
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["variant"] = w.variant.name
        f.attrs["n_landmarks"] = w.variant.n_landmarks
        f.attrs["n_patches"] = w.variant.n_patches
        f.attrs["n_iterations"] = N_ITERATIONS
        if w.default_tf is not None:
            f.attrs["default_tf"] = float(w.default_tf)
        _dataset(f, "patch_indices", np.asarray(w.variant.patch_indices, dtype=np.int32))
        _dataset(f, "mean_shape", w.mean_shape.astype(np.float64))
        g = f.create_group("geometry")
        for k, v in _geometry_attrs(w.variant.n_landmarks).items():
            g.attrs[k] = v
        for i, it in enumerate(w.iterations):
            for name, a in it.items():
                _dataset(f, f"iteration_{i}/{name}", a.astype(dtype))
        p = f.create_group("provenance")
        for k, v in w.provenance.items():
            p.attrs[k] = v


def _attr(obj, key, where="file"):
    if key not in obj.attrs:
        raise WeightsError(f"the {where} has no attribute {key!r}")
    v = obj.attrs[key]
    return v.decode() if isinstance(v, bytes) else v


def _int_attr(obj, key, where="file") -> int:
    v = _attr(obj, key, where)
    try:
        iv = int(v)
    except (TypeError, ValueError, OverflowError):     # OverflowError: an infinite float
        raise WeightsError(f"attribute {key!r} of the {where} is {v!r}, expected an integer") from None
    if iv != v:
        raise WeightsError(f"attribute {key!r} of the {where} is {v!r}, expected an integer")
    return iv


def load_weights(path, keep_float16=()) -> Weights:
    """Read and validate a weights file; raise WeightsError naming the problem if anything is wrong.
    Tensors come as float32, except those named in keep_float16 that the file stores as float16 (exact
    either way; float16 takes half the memory)."""
    import h5py
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"weights file {path!r} does not exist")
    if os.path.isdir(path):
        raise WeightsError(f"weights path {path!r} is a directory, not a file")
    if not h5py.is_hdf5(path):
        raise WeightsError(f"{path!r} is not an HDF5 file (a musica-ref weights file is HDF5, format "
                           f"{FORMAT_NAME!r} version {FORMAT_VERSION})")
    try:
        with h5py.File(path, "r") as f:
            return _read(f, path, keep_float16)
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:   # a damaged file deep inside
        raise WeightsError(f"{path!r} could not be read as a weights file: {exc}") from exc


def _read(f, path, keep_float16=()) -> Weights:
    import h5py
    fmt = _attr(f, "format")
    if fmt != FORMAT_NAME:
        raise WeightsError(f"{path!r} has format {fmt!r}, expected {FORMAT_NAME!r}")
    version = _int_attr(f, "format_version")
    if version not in READABLE_VERSIONS:
        raise WeightsError(f"{path!r} is format version {version}; this musica_ref reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))}. Re-export it with the trainer of a "
                           f"matching release.")
    read = _reader(version)
    N = _int_attr(f, "n_landmarks")
    P = _int_attr(f, "n_patches")
    if not (1 <= N <= MAX_LANDMARKS and 1 <= P <= N):
        raise WeightsError(f"the file declares N = {N} landmarks and P = {P} patches; this library takes "
                           f"1 <= P <= N <= {MAX_LANDMARKS}")
    n_it = _int_attr(f, "n_iterations")
    if n_it != N_ITERATIONS:
        raise WeightsError(f"the file has n_iterations = {n_it}; this model runs {N_ITERATIONS}")
    name = str(_attr(f, "variant"))
    for key in ("patch_indices", "mean_shape", "geometry"):
        if key not in f:
            raise WeightsError(f"{path!r} has no {key!r} entry")
    if not isinstance(f["patch_indices"], h5py.Dataset) or not isinstance(f["mean_shape"], h5py.Dataset):
        raise WeightsError("patch_indices and mean_shape must be datasets")
    ds = f["patch_indices"]
    if len(ds.shape) != 1 or not np.issubdtype(ds.dtype, np.integer):
        raise WeightsError(f"patch_indices must be a 1-D integer array, got {ds.dtype} {ds.shape}")
    if ds.shape[0] != P:
        raise WeightsError(f"inconsistent variant: n_patches = {P} but patch_indices has {ds.shape[0]} entries")
    idx = read(ds, "patch_indices")
    try:
        variant = custom_variant(N, idx.tolist(), name=name)
    except ValueError as exc:
        raise WeightsError(f"inconsistent variant: {exc}") from None
    g = f["geometry"]
    for key, expected in _geometry_attrs(N).items():
        got = np.asarray(_attr(g, key, "geometry group"))
        if got.shape != np.shape(expected) or not np.allclose(got, expected, rtol=0, atol=1e-9):
            raise WeightsError(f"geometry constant {key!r} is {got.tolist()} in the file but this library "
                               f"implements {np.asarray(expected).tolist()}")
    shapes = tensor_shapes(N, P)
    its = []
    for i in range(N_ITERATIONS):
        it = {}
        grp = f.get(f"iteration_{i}")
        if grp is None:
            raise WeightsError(f"tensor group iteration_{i} is missing")
        for tname in TENSORS:
            if tname not in grp:
                raise WeightsError(f"tensor iteration_{i}/{tname} is missing")
            ds = grp[tname]
            where = f"iteration_{i}/{tname}"
            if not isinstance(ds, h5py.Dataset):
                raise WeightsError(f"tensor {where} is not a dataset")
            if ds.shape != shapes[tname]:                  # from the metadata, before reading anything
                raise WeightsError(f"tensor {where} has shape {ds.shape}, expected {shapes[tname]} "
                                   f"for N = {N} landmarks and P = {P} patches")
            if ds.dtype not in (np.float16, np.float32, np.float64):
                raise WeightsError(f"tensor {where} has dtype {ds.dtype}; store float32 or float16")
            a = read(ds, where)
            # float16 files: widen tensor by tensor, so the whole half-size copy never coexists with the result
            it[tname] = a.astype(np.float32) if a.dtype == np.float16 and tname not in keep_float16 else a
        its.append(it)
    prov = {}
    if "provenance" in f:
        prov = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f["provenance"].attrs.items()}
    tf = f.attrs.get("default_tf")
    if tf is not None and np.ndim(tf) != 0:
        raise WeightsError(f"default_tf has shape {np.shape(tf)}, expected one number")
    ds = f["mean_shape"]
    if ds.shape != (N, 2) or ds.dtype.kind != "f":
        raise WeightsError(f"mean_shape has shape {ds.shape} and dtype {ds.dtype}, expected ({N}, 2) float "
                           f"for N = {N} landmarks")
    return check_weights(Weights(variant, read(ds, "mean_shape"), its, prov, tf), keep_float16)


def _reader(version):
    """read(dataset, name) -> its array; for version 2, after checking its checksum."""
    def read(ds, name):
        a = ds[()]
        if version >= 2:
            want = ds.attrs.get(CHECKSUM_ATTR)
            if want is None:
                raise WeightsError(f"tensor {name} has no checksum (format version {version} gives every "
                                   f"dataset one)")
            want = want.decode() if isinstance(want, bytes) else str(want)
            if checksum(a) != want:
                raise WeightsError(f"tensor {name} fails its checksum: the file is corrupt (re-download or "
                                   f"re-export it)")
        return a
    return read


def random_weights(variant: Variant, seed: int = 0) -> Weights:
    """Weights drawn at random for any variant, with a plausible scale at every layer (He-style for the
    convolutions, 1/sqrt(fan-in) for the fully connected layers), so that the whole engine can be exercised
    before any trained model exists. Predictions made with them are meaningless.

    The mean shape is random points inside the box frame; displacements come out at a few pixels and the
    error estimate E around 0.05.
    """
    rng = np.random.default_rng(seed)
    N, P = variant.n_landmarks, variant.n_patches
    shapes = tensor_shapes(N, P)
    its = []
    for _ in range(N_ITERATIONS):
        it = {}
        for name, shape in shapes.items():
            if name.endswith("/bias"):
                it[name] = rng.normal(0.0, 0.05, shape).astype(np.float32)
                continue
            fan_in = int(np.prod(shape[:-1]))
            gain = {"conv1/weight": 2.0, "conv2/weight": 2.0, "output/weight": 8.0}.get(name, 1.0)
            it[name] = rng.normal(0.0, np.sqrt(gain / fan_in), shape).astype(np.float32)
        it["output/weight"][:, -1] *= 0.02                             # E around 5% +- 3%
        it["output/bias"][-1] = 0.05
        its.append(it)
    mean_shape = rng.uniform(0.0, geometry.BB_SIZE, (N, 2))
    return check_weights(Weights(variant, mean_shape, its, {"source": "random_weights", "seed": seed}))
