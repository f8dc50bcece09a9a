"""What fused multiply-add would buy the engine: an experiment, not a mode of the library.

The engine's kernels are compiled without `fastmath`, so every multiply-add is a multiply and an add
(docs/engine.md, "Why no fused multiply-add"). This copies musica_ref into a temporary folder, compiles
the copy's kernels with fastmath={'contract'} (LLVM may then fuse a multiply and an add into one FMA;
nothing else of fastmath), and times the network only (patches given, 3 iterations, as tools/bench.py's
"engine network" case) at batch B on 2 threads, the shipped package and the copy each in its own process
beside ONNX Runtime on the same network (interleaved rounds, medians). It prints ms per face, each
engine's throughput against ONNX Runtime's, and how far the FMA copy's outputs are from the shipped
engine's.

    pip install torch==2.13.0 && pip install ".[train,bench]"
    python tools/fma_experiment.py [--weights weights/musica68.h5] [--batch 64] [--rounds 12] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORT_LINE = "from numba import njit, prange, types, uint64\n"
CONTRACT = ("from numba import njit as _njit, prange, types, uint64\n\n\n"
            "def njit(*args, **kw):        # fma_experiment: every kernel may fuse multiply and add\n"
            "    kw.setdefault('fastmath', {'contract'})\n"
            "    if args and callable(args[0]):\n"
            "        return _njit(**kw)(args[0])\n"
            "    return _njit(*args, **kw)\n")


def contract_copy(folder: Path) -> Path:
    """musica_ref copied under `folder`, its kernels compiled with fastmath={'contract'}; returns `folder`."""
    shutil.copytree(ROOT / "musica_ref", folder / "musica_ref", ignore=shutil.ignore_patterns("__pycache__"))
    k = folder / "musica_ref" / "kernels.py"
    text = k.read_text()
    if text.count(IMPORT_LINE) != 1:
        raise SystemExit(f"{k}: expected one line {IMPORT_LINE.strip()!r} to replace; update fma_experiment.py")
    k.write_text(text.replace(IMPORT_LINE, CONTRACT))
    return folder


def child(package_root: str, weights: str, batch: int, rounds: int, out_npy: str) -> None:
    """Time the network of the musica_ref under package_root beside ONNX Runtime; print one JSON line."""
    sys.path.insert(0, package_root)
    import numpy as np
    import numba
    import musica_ref as m
    if not m.__file__.startswith(package_root):
        raise SystemExit(f"imported {m.__file__}, not the package under {package_root}")
    sys.path.insert(1, str(ROOT))
    import torch
    from tools.bench import BOX, EXAMPLE, onnx_sessions, torch_network
    from musica_ref.network import HIDDEN, iteration_forward
    numba.set_num_threads(2)
    torch.set_num_threads(2)
    model = m.MuSiCa.load(weights)
    w = model.weights
    _, trace = model.trace(m.load_image(EXAMPLE), BOX)
    patches1 = [t["patches"] for t in trace]
    pB = [np.concatenate([p] * batch) for p in patches1]

    def engine():
        h = np.zeros((batch, HIDDEN), np.float32)
        for i in range(3):
            out, h, _ = iteration_forward(pB[i], h, w.iterations[i])
        return out

    sess = onnx_sessions(torch_network(m.MuSiCa.load(weights, recurrent="float32").weights), patches1, (2,),
                         tempfile.mkdtemp())[2]
    feed = {"p0": pB[0], "p1": pB[1], "p2": pB[2]}
    np.save(out_npy, engine())
    for _ in range(2):
        engine()
        sess.run(None, feed)
    te, to = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        engine()
        te.append(time.perf_counter() - t)
        t = time.perf_counter()
        sess.run(None, feed)
        to.append(time.perf_counter() - t)
    print(json.dumps({"engine": statistics.median(te) / batch, "onnx": statistics.median(to) / batch}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(ROOT / "weights" / "musica68.h5"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2, help="processes per package, alternating")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out-npy", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.batch < 1 or a.rounds < 1 or a.repeats < 1:
        raise SystemExit("--batch, --rounds and --repeats must be at least 1")
    if a.child:
        return child(a.child, a.weights, a.batch, a.rounds, a.out_npy)
    if not os.path.exists(a.weights):
        raise SystemExit(f"no weights file {a.weights}")
    a.weights = os.path.abspath(a.weights)            # the children run in the scratch folder
    tmp = Path(tempfile.mkdtemp())
    try:
        report(a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(a, tmp: Path) -> None:
    """Run the child processes (their scratch and the package copy, with its Numba cache, in `tmp`) and
    print the table."""
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from tools.time_predict import machine
    packages = {"shipped (multiply, then add)": str(ROOT), "fastmath contract (FMA)": str(contract_copy(tmp))}
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")      # idle OpenMP threads must not steal the cores
    runs = {k: [] for k in packages}
    outputs = {}
    for r in range(a.repeats + 1):                      # the first pass compiles both; it is not counted
        for name, root in packages.items():
            npy = tmp / f"out{len(outputs)}.npy"
            p = subprocess.run([sys.executable, __file__, "--child", root, "--weights", a.weights, "--batch",
                                str(a.batch), "--rounds", str(a.rounds if r else 1), "--out-npy", str(npy)],
                               capture_output=True, text=True, cwd=tmp, env=env)
            if p.returncode:
                raise SystemExit(f"the {name} process failed:\n{p.stderr[-3000:]}")
            outputs[name] = np.load(npy)
            if r:
                runs[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"network only, {Path(a.weights).name}, batch {a.batch}, 2 threads; medians of {a.rounds} interleaved "
          f"rounds per process, {a.repeats} processes per package")
    print(f"{'engine':<32} {'ms/face':>9} {'ONNX Runtime ms/face':>21} {'throughput vs ONNX Runtime':>27}")
    for name, rs in runs.items():
        for x in rs:
            print(f"{name:<32} {x['engine'] * 1e3:>9.3f} {x['onnx'] * 1e3:>21.3f} {x['onnx'] / x['engine']:>26.2f}x")
    a_out, b_out = outputs.values()
    print(f"last iteration's outputs, FMA copy against the shipped engine: max |difference| "
          f"{float(np.abs(a_out - b_out).max()):.3g} (the shipped engine is the reference)")


if __name__ == "__main__":
    main()
