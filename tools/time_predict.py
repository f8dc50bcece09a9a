"""Time `predict` for one face: warm calls in this process, and the first call of fresh processes (numba
compiling, or loading its on-disk cache). Prints the machine it ran on.

    python tools/time_predict.py [--weights FILE] [--repeats 30] [--fresh 3] [--split]

Without --weights it uses random musica68 weights (the speed does not depend on the values).
--split: how much of a warm predict is spent in the kernels (the public functions of musica_ref.kernels
that a predict calls, their Python checks included) and how much in the Python around them.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.numba_cache import use_keyed_cache  # noqa: E402

use_keyed_cache()                   # before numba and musica_ref: never a stale compiled kernel
EXAMPLE = ROOT / "examples" / "face.png"
from tools.make_example import FACE_BOX as BOX  # noqa: E402

CHILD = r"""
import json, sys, time
BOX = tuple(float(v) for v in sys.argv[3].split(","))
t0 = time.perf_counter()
import musica_ref as m
t1 = time.perf_counter()
model = m.MuSiCa.load(sys.argv[1])
img = m.load_image(sys.argv[2])
t2 = time.perf_counter()
model.predict(img, BOX)
t3 = time.perf_counter()
model.predict(img, BOX)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2, "second": t4 - t3}))
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    return (f"{cpu}, {os.cpu_count()} logical CPUs, numba threads {numba.get_num_threads()}, "
            f"Python {platform.python_version()}, numba {numba.__version__}")


def fresh(weights, n, env=None):
    out = []
    for _ in range(n):
        p = subprocess.run([sys.executable, "-c", CHILD, str(weights), str(EXAMPLE), ",".join(map(str, BOX))],
                           capture_output=True,
                           text=True, cwd=ROOT, env=env)
        if p.returncode:
            raise SystemExit(p.stderr)
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


# the kernels a predict calls through musica_ref.kernels (--split times each call)
PREDICT_KERNELS = ("resample_many", "normalise_pyramid", "normalise_pyramids", "level_patch_features",
                   "levels_patch_features", "fully_connected", "fully_connected_scaled", "tanh")


def split(model, img, repeats):
    """Warm predicts with every call of PREDICT_KERNELS timed: the medians of (whole predict, the time
    outside its kernel calls), in seconds."""
    import musica_ref.kernels as k
    spent = [0.0]

    def timed(f):
        def call(*args):
            t = time.perf_counter()
            try:
                return f(*args)
            finally:
                spent[0] += time.perf_counter() - t
        return call
    originals = {name: getattr(k, name) for name in PREDICT_KERNELS}
    whole, inside = [], []
    try:
        for name, f in originals.items():
            setattr(k, name, timed(f))
        for _ in range(repeats):
            spent[0] = 0.0
            t = time.perf_counter()
            model.predict(img, BOX)
            whole.append(time.perf_counter() - t)
            inside.append(spent[0])
    finally:
        for name, f in originals.items():
            setattr(k, name, f)
    return statistics.median(whole), statistics.median(w - i for w, i in zip(whole, inside))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--fresh", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also time a first call with an empty numba cache")
    ap.add_argument("--split", action="store_true", help="also split warm predicts: kernels, and Python")
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.fresh < 0:
        ap.error("--repeats must be at least 1 and --fresh at least 0")
    import musica_ref as m
    tmp = tempfile.mkdtemp()
    weights = a.weights
    if not weights:
        weights = os.path.join(tmp, "w.h5")
        m.save_weights(weights, m.random_weights(m.get_variant("musica68")))
    model = m.MuSiCa.load(weights)
    img = m.load_image(EXAMPLE)
    model.predict(img, BOX)                                # compile / load the cache
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        model.predict(img, BOX)
        times.append(time.perf_counter() - t)
    print(f"machine: {machine()}")
    print(f"variant: {model.weights.variant.name}; image {img.shape[1]}x{img.shape[0]}, box {BOX}")
    print(f"warm predict, one face, all 3 iterations: median {statistics.median(times) * 1e3:.1f} ms, "
          f"min {min(times) * 1e3:.1f} ms over {a.repeats} calls")
    if a.split:
        whole, outside = split(model, img, max(a.repeats, 100))
        print(f"warm predict split (medians of {max(a.repeats, 100)} calls): {whole * 1e3:.2f} ms, of which "
              f"{outside * 1e3:.2f} ms ({outside / whole:.0%}) outside the kernels' calls, in the Python around "
              "them")
    if a.fresh:
        runs = fresh(weights, a.fresh)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"new process, compiled cache present (median of {a.fresh}): import {med['import']:.2f} s, "
              f"first predict {med['first']:.2f} s, second {med['second'] * 1e3:.1f} ms")
    if a.cold:
        env = dict(os.environ, NUMBA_CACHE_DIR=tempfile.mkdtemp())
        r = fresh(weights, 1, env)[0]
        print(f"new process, empty cache (compiles every kernel): import {r['import']:.2f} s, "
              f"first predict {r['first']:.2f} s")


if __name__ == "__main__":
    main()
