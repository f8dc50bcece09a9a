"""Warm `predict` of one face in this tree against another checkout (a change against its base), in
alternating fresh processes: an A/B within one process is biased (OpenMP's threads keep spinning after
one side's parallel regions), and a shared machine drifts, so each round runs one process per tree (A then
B, then B then A in the next round) and the medians of the rounds are compared.

    python tools/ab_predict.py OTHER_TREE [--rounds 8] [--calls 150] [--threads 1,2] [--weights musica68]
    python tools/ab_predict.py OTHER_TREE --paired [--calls 400] [--batch 16]
    python tools/ab_predict.py OTHER_TREE --stages [--calls 1500] [--threads 1]

OTHER_TREE: a checkout of this project, e.g. `git worktree add /tmp/base main`. Each process warms up
(20 calls, compiling or loading its kernels from a cache keyed by its own sources, tools/numba_cache.py),
then times `calls` predicts at each thread count and reports their median. Prints the machine it ran on.

--paired: both trees in one process (the other tree's package imported under another name), their predicts
alternating call by call, A B B A ...: immune to the differences between processes (on a shared virtual
machine a process can land on a slower host core for its whole life), though each side's calls run with the
other's code and data in the caches. With --batch K each call is one predict_batch of K faces (the example
face's box shifted and scaled a little, the same K boxes every call).

--stages: as --paired, but per kernel: the arguments this tree's kernels get in one predict (the
resamplings, the normalisation, the feature kernel at each iteration's level, the fully connected layers)
recorded once, then each kernel of both trees called with them, alternating, --calls times; the medians per
kernel.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
root, weights, calls, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, root)
from tools.numba_cache import use_keyed_cache
use_keyed_cache()
import numba
import musica_ref as m
from tools.make_example import FACE_BOX
model = m.MuSiCa.load(weights)
image = m.load_image(root + "/examples/face.png")
out = {}
for n in (int(v) for v in threads.split(",")):
    numba.set_num_threads(n)
    for _ in range(20):
        model.predict(image, FACE_BOX)
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        model.predict(image, FACE_BOX)
        ts.append(time.perf_counter() - t)
    ts.sort()
    out[n] = ts[len(ts) // 2]
print(json.dumps(out))
"""


def run(tree, a):
    p = subprocess.run([sys.executable, "-c", CHILD, str(tree), a.weights, str(a.calls), a.threads],
                       capture_output=True, text=True, cwd=tree, env=dict(os.environ))
    if p.returncode != 0:
        sys.exit(f"ab_predict: the process for {tree} failed:\n{p.stderr[-2000:]}")
    return {int(k): v for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}


PAIRED = r"""
import importlib.util, json, statistics, sys, time
this, other, weights, calls, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
batch = int(sys.argv[6])
sys.path.insert(0, this)
from tools.numba_cache import use_keyed_cache
use_keyed_cache()
import numba
from tools.make_example import FACE_BOX
def load(name, root):
    spec = importlib.util.spec_from_file_location(name, root + "/musica_ref/__init__.py",
                                                  submodule_search_locations=[root + "/musica_ref"])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
import musica_ref
mods = {"this": musica_ref, "other": load("musica_ref_other", other)}
models = {k: m.MuSiCa.load(weights) for k, m in mods.items()}
image = musica_ref.load_image(this + "/examples/face.png")
x0, y0, x1, y1 = FACE_BOX
boxes = [(x0 + 3 * (j % 5 - 2), y0 + 2 * (j % 3 - 1), x1 + 3 * (j % 4 - 2) + j % 7, y1 + 2 * (j % 5 - 2))
         for j in range(batch)]
out = {}
for n in (int(v) for v in threads.split(",")):
    numba.set_num_threads(n)
    ts = {k: [] for k in models}
    for i in range(calls + 20):
        for k in (("this", "other") if i % 2 == 0 else ("other", "this")):
            t = time.perf_counter()
            if batch > 1:
                models[k].predict_batch(image, boxes)
            else:
                models[k].predict(image, FACE_BOX)
            if i >= 20:
                ts[k].append(time.perf_counter() - t)
    out[n] = {k: statistics.median(v) for k, v in ts.items()}
print(json.dumps(out))
"""


STAGES = PAIRED.split("out = {}")[0] + r"""
import numpy as np
kernels = musica_ref.kernels
names = ("resample_many", "normalise_pyramid", "level_patch_features", "fully_connected")
recorded = []
def recorder(name, f):
    def call(*args):
        recorded.append((name, tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)))
        return f(*args)
    return call
originals = {n: getattr(kernels, n) for n in names}
for n, f in originals.items():
    setattr(kernels, n, recorder(n, f))
models["this"].predict(image, FACE_BOX)
for n, f in originals.items():
    setattr(kernels, n, f)
out = {}
for n in (int(v) for v in threads.split(",")):
    numba.set_num_threads(n)
    rows = []
    for i, (name, args) in enumerate(recorded):
        fs = {k: getattr(m.kernels, name) for k, m in mods.items()}
        ts = {k: [] for k in fs}
        for j in range(calls + 20):
            for k in (("this", "other") if j % 2 == 0 else ("other", "this")):
                t = time.perf_counter()
                fs[k](*args)
                if j >= 20:
                    ts[k].append(time.perf_counter() - t)
        shape = (f"{args[1].shape[0]} patches" if name == "level_patch_features" else
                 f"{args[1].dtype} {args[1].shape[0]} x {args[1].shape[1]}" if name == "fully_connected" else "")
        rows.append([i, name, shape, statistics.median(ts["this"]), statistics.median(ts["other"])])
    out[n] = rows
print(json.dumps(out))
"""


def one_process(script, other, a):
    """Run a script of both trees in one process (PAIRED, STAGES); what it printed last, as JSON."""
    p = subprocess.run([sys.executable, "-c", script, str(ROOT), str(other), a.weights, str(a.calls), a.threads,
                        str(a.batch)],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
    if p.returncode != 0:
        sys.exit(f"ab_predict: the process with both trees failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def stages(other, a):
    """Both trees in one process, kernel by kernel (see --stages): the medians per call."""
    for n, rows in one_process(STAGES, other, a).items():
        print(f"{n} thread(s), medians of {a.calls} alternating calls per kernel (us):")
        print(f"  {'call':>4s} {'kernel':22s} {'input':22s} {'this':>9s} {'other':>9s} {'this / other':>12s}")
        for i, name, shape, this, base in rows:
            print(f"  {i:4d} {name:22s} {shape:22s} {this * 1e6:9.1f} {base * 1e6:9.1f} {this / base:12.3f}")


def paired(other, a):
    """Both trees in one process, alternating call by call: the medians per thread count."""
    for n, med in one_process(PAIRED, other, a).items():
        print(f"  {n} thread(s): this {med['this'] * 1e3:.3f}, other {med['other'] * 1e3:.3f}, "
              f"this / other {med['this'] / med['other']:.3f}  (medians of {a.calls} alternating calls"
              + (f" of predict_batch, {a.batch} faces" if a.batch > 1 else "") + ", one process)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", type=Path, help="another checkout of this project")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--weights", default="musica68")
    ap.add_argument("--paired", action="store_true", help="both trees in one process, calls alternating")
    ap.add_argument("--stages", action="store_true", help="both trees in one process, kernel by kernel")
    ap.add_argument("--batch", type=int, default=1, help="with --paired: faces per call (predict_batch)")
    a = ap.parse_args(argv)
    other = a.other.resolve()
    if not (other / "musica_ref").is_dir():
        sys.exit(f"ab_predict: {other} is not a checkout of this project")
    if a.paired or a.stages:
        sys.path.insert(0, str(ROOT))
        from tools.time_predict import machine
        (stages if a.stages else paired)(other, a)
        print(f"this: {ROOT}; other: {other}")
        print(f"machine: {machine()}")
        return
    trees = {"this": ROOT, "other": other}
    runs = {name: [] for name in trees}
    for r in range(a.rounds):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]      # A B, B A, ...: a drift cancels out
        for name in order:
            runs[name].append(run(trees[name], a))
        print(f"round {r + 1}: " + "; ".join(
            f"{name} " + " ".join(f"{n}t {v * 1e3:.3f}" for n, v in res[-1].items()) for name, res in runs.items()),
            flush=True)
    sys.path.insert(0, str(ROOT))
    from tools.time_predict import machine
    print(f"median over {a.rounds} rounds of each process's median of {a.calls} warm predicts (ms):")
    for n in (int(v) for v in a.threads.split(",")):
        this = statistics.median(res[n] for res in runs["this"])
        base = statistics.median(res[n] for res in runs["other"])
        print(f"  {n} thread(s): this {this * 1e3:.3f}, other {base * 1e3:.3f}, this / other {this / base:.3f}")
    print(f"this: {ROOT}; other: {other}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
