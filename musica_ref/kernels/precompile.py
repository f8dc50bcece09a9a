"""A first run's compiling shared between two cores: the feature extractor's worker compiled in a helper
process while this one compiles the rest.

Numba compiles one function at a time per process (a global lock), and a new environment's first `predict`
is mostly compiling. The largest kernel, the feature extractor's worker (about half of that time), has
argument types that do not depend on the model or the image (float32 maps and weights, int64 indices). So
when a run is about to need it and Numba's disk cache does not hold it, `start(one_face)` starts a helper
process (`python -c HELPER WORKER`, below) that compiles it into the cache, and this
process goes on with the resamplings, the normalisation and the plan; when it reaches the worker
(parallel.run_parallel), it waits for the helper and loads the worker from the cache.

Nothing but the disk cache passes between the two, and the helper's code is the same source files, so the
result is the same compiled code either way. If the helper cannot start or fails, this process compiles
the worker itself, as it would have. No helper is started on a machine with one core (nothing to share),
when the worker is in the cache already, in a frozen application (no Python to start), or with
MUSICA_REF_COMPILE_HELPER=0 in the environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
from numba.core.compiler_lock import global_compiler_lock

from . import dense, features, parallel


def _types(*examples):
    """The Numba types of example arguments (arrays by their dtype and number of dimensions; ints int64)."""
    return tuple(numba.typeof(np.int64(e) if isinstance(e, int) else e) for e in examples)


def _a(dtype, ndim):
    """An example array of this dtype and number of dimensions (C-contiguous, as the kernels are given)."""
    return np.zeros((1,) * ndim, dtype)


F32, I64, U64 = np.float32, np.int64, np.uint64

# The worker of each path, and its argument types as its kernel calls it (tests/test_kernels.py checks that
# a predict compiles exactly these).
WORKERS = {
    # level_patch_features (one face): counter, n_items, the plan (n_map, ylo, xlo, Wr, Lr, xin, run0,
    # run1, c1), level, corners, w1t, b1p, w2f, b2, wa, ba, done, out
    "_face_items": (features._face_items,
                    _types(_a(I64, 1), 0, 0, 0, 0, 0, 0, _a(F32, 1), _a(U64, 1), _a(U64, 1), _a(F32, 2),
                           _a(F32, 3), _a(I64, 2), _a(F32, 2), _a(F32, 1), _a(F32, 1), _a(F32, 1), _a(F32, 2),
                           _a(F32, 1), _a(I64, 1), _a(F32, 2))),
    # levels_patch_features (a batch): counter, B, data, offsets, shapes, corners, w1t, b1p, w2f, b2, wa, ba,
    # out, shared
    "_faces": (features._faces,
               _types(_a(I64, 1), 0, _a(F32, 1), _a(I64, 1), _a(I64, 2), _a(I64, 3), _a(F32, 2), _a(F32, 1),
                      _a(F32, 1), _a(F32, 1), _a(F32, 2), _a(F32, 1), _a(F32, 2), _a(I64, 1))),
}

# Kernels the workers call that this process compiles too, for other argument types as well (the fully
# connected chunk: float32 weights in the attention layer and the output layers, float16 or int8 in the
# recurrent one). They are compiled here before the helper starts, so the helper loads them from the cache and
# the two processes never add entries to one function's cache index at the same time: Numba reads the index,
# adds the entry and writes it back, and two processes doing that at once could each number their entry 1.
SHARED = [(dense._fc_chunk, _types(_a(F32, 2), _a(F32, 2), 0, 0, 0, _a(F32, 2), _a(I64, 1), _a(F32, 1)))]

_asked = set()          # the workers a helper was considered for in this process (once each)
started = []            # ... and those a helper process was started for


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):                       # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def _load_cached(worker, sig) -> bool:
    """Whether `worker` has `sig` compiled in this process, loading it from Numba's disk cache if it is
    there (what Dispatcher.compile does before it compiles), without compiling it."""
    if tuple(sig) in worker.overloads:
        return True
    with global_compiler_lock:
        cres = worker._cache.load_overload(sig, worker.targetctx)
        if cres is None:
            return False
        worker.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])
        worker.add_overload(cres)
    return True


def start(one_face: bool) -> bool:
    """Before a run of one face (one_face) or of a batch: if its feature worker is neither compiled here nor
    in the disk cache, start a helper process that compiles it into the cache (see above). Returns at once,
    True if it started one (the caller may compile the kernels it needs after the features meanwhile);
    parallel.run_parallel waits for the helper when it needs the worker."""
    name = "_face_items" if one_face else "_faces"
    if name in _asked:
        return False
    _asked.add(name)
    worker, sig = WORKERS[name]
    if (os.environ.get("MUSICA_REF_COMPILE_HELPER", "1") == "0" or _cores() < 2 or getattr(sys, "frozen", False)
            or not sys.executable):
        return False
    try:
        if _load_cached(worker, sig):
            return False
        for kernel, types in SHARED:
            kernel.compile(types)
        package_root = Path(__file__).resolve().parents[2]     # the folder this musica_ref is imported from
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(package_root),
                                                                      os.environ.get("PYTHONPATH")])))
        if numba.config.CACHE_DIR:                          # the same cache, however this process set it
            env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
        helper = subprocess.Popen([sys.executable, "-c", HELPER, name], cwd=package_root, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except Exception:               # no helper (Numba's cache API changed, no process could start): compile here
        return False
    parallel.compiled_elsewhere(worker, helper)
    started.append(name)
    return True


def main(argv) -> int:
    """The helper: compile the named worker for its argument types (into Numba's disk cache)."""
    (name,) = argv
    worker, sig = WORKERS[name]
    worker.compile(sig)
    return 0


# the helper's command (python -c HELPER WORKER; not -m: the package imports this module before it would run)
HELPER = "import sys; from musica_ref.kernels.precompile import main; sys.exit(main(sys.argv[1:]))"
