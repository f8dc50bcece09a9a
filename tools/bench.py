"""Speed of the Numba engine beside PyTorch (eager, TorchScript) and ONNX Runtime on the same network, with
this machine's measured floors. One run, interleaved rounds, medians after warm-up.

    pip install torch==2.13.0 && pip install ".[train,bench]"        # optional baselines
    python tools/bench.py [--weights FILE] [--variant musica68] [--rounds 15]

Cases (batch 1 and batch B, 1 and 2 threads):
- engine, whole cascade: image + box -> landmarks (pyramid, patches, 3 iterations); it reads the patches from
  the pyramid levels and computes conv1 once per position shared by overlapping patches (docs/engine.md),
  which the network-only cases, given extracted patches, cannot;
- engine, early exit at --ts (default: the median first-iteration estimate on the example faces);
- the engine's recurrent layers as the file stores them (the default: 16-bit for a float16 file, widened in
  the kernel, the same results) and, for such a file, also widened to float32 at load (twice the bytes);
- engine with the recurrent layers stored as int8 (musica_ref/quantize.py), whole cascade;
- network only, patches given (3 iterations chained by the hidden state): engine, PyTorch eager,
  TorchScript, ONNX Runtime; same weights, same inputs.
Floors: batch 1 streams every weight once per face (parameters x 4 bytes / read bandwidth); large batches are
bound by arithmetic (2 x multiply-adds / matrix-multiply GFLOP/s). Both are measured here, with 1 and 2
threads, for the dense network. The engine skips the products of inputs that are exactly 0 (most ReLU
features; the results do not change), so it does less than the dense work and can beat both; the share of
zero inputs on the example face is printed. Also: `import musica_ref` and the first `predict` in a fresh
process (compiled cache present), and the peak resident memory of a batch run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.numba_cache import use_keyed_cache  # noqa: E402

use_keyed_cache()                   # before numba and musica_ref: never a stale compiled kernel
# Numba's and PyTorch's OpenMP pools share this process: with spinning waits each starves the other
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba                                                    # noqa: E402
from numba import njit, prange                                  # noqa: E402

import musica_ref as m                                          # noqa: E402
from musica_ref import opcount                                  # noqa: E402
from musica_ref.network import HIDDEN, iteration_forward        # noqa: E402

EXAMPLE = ROOT / "examples" / "face.png"
from tools.make_example import FACE_BOX as BOX  # noqa: E402
from tools.time_predict import fresh, machine  # noqa: E402


@njit(parallel=True, cache=True)
def _read_sum(a):
    """Read every element of a (n,) float32 array once (n a multiple of 64 * 16). 16 independent running sums
    per chunk, so the adds vectorise without reassociation and the loop runs at memory speed."""
    n = a.size
    chunks = 64
    part = np.zeros((chunks, 16), np.float32)
    for c in prange(chunks):
        acc = part[c]
        for i in range(c * n // chunks, (c + 1) * n // chunks, 16):
            for j in range(16):
                acc[j] += a[i + j]
    return part.sum()


def machine_peaks(threads):
    """(read bandwidth GB/s, float32 matmul GFLOP/s) with `threads` threads. The bandwidth is the best of two
    probes (the Numba one above and, for one thread, NumPy's vectorised float32 sum)."""
    numba.set_num_threads(threads)
    a = np.ones(256 * 2**20 // 4, np.float32)              # 256 MB: far beyond any cache
    _read_sum(a)
    best = min(_timeit(lambda: _read_sum(a), 5))
    if threads == 1:
        best = min(best, min(_timeit(lambda: np.add.reduce(a), 5)))
    bw = a.nbytes / best / 1e9
    code = ("import numpy as np, time; a=np.random.rand(2048,2048).astype(np.float32); b=a.copy(); a@b; "
            "t=[];\nfor _ in range(5):\n s=time.perf_counter(); a@b; t.append(time.perf_counter()-s)\n"
            "print(2*2048**3/min(t)/1e9)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    gf = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout)
    return bw, gf


def _timeit(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def peak_memory(weights, batch, recurrent="stored"):
    """A fresh process: resident memory (VmRSS) after `import musica_ref`, after loading the weights and after a
    first one-face `predict`, then the peak (VmHWM) after a batch, and the resident memory after the batch split
    into anonymous (RssAnon: what the process allocated) and file-backed pages (RssFile: mostly the code of the
    shared libraries, NumPy, LLVM, HDF5); bytes. VmHWM rather than ru_maxrss, which keeps the RSS of the
    forked copy of this (large) benchmark process from before exec."""
    # the example face's box, shifted by a few pixels per face like the timed batches
    code = ("import sys, json\n"
            "def rss(key='VmRSS'):\n"
            "    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) * 1024\n"
            "import numpy as np, musica_ref as m\n"
            "r = [rss()]\n"
            "mo = m.MuSiCa.load(sys.argv[1], recurrent=sys.argv[5]); r.append(rss())\n"
            "im = m.load_image(sys.argv[2]); x0, y0, x1, y1 = map(float, sys.argv[4].split(','))\n"
            "mo.predict(im, (x0, y0, x1, y1)); r.append(rss())\n"
            "mo.predict_batch(im, [(x0 + i % 5, y0 + i % 3, x1 + i % 5, y1 + i % 3) for i in range(int(sys.argv[3]))])\n"
            "r += [rss('VmHWM'), rss('RssAnon'), rss('RssFile')]; print(json.dumps(r))\n")
    p = subprocess.run([sys.executable, "-c", code, str(weights), str(EXAMPLE), str(batch),
                        ",".join(map(str, BOX)), recurrent], capture_output=True, text=True, cwd=ROOT)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--variant", default="musica68")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--ts", type=float)
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp()
    if a.weights:
        weights_path = a.weights
    else:
        weights_path = os.path.join(tmp, "w.h5")
        m.save_weights(weights_path, m.random_weights(m.get_variant(a.variant)))
    model = m.MuSiCa.load(weights_path)                   # recurrent layers as stored (float16 files: 16-bit)
    model32 = m.MuSiCa.load(weights_path, recurrent="float32")
    w = model.weights
    v = w.variant
    img = m.load_image(EXAMPLE)
    rng = np.random.default_rng(0)
    boxes = [tuple(np.asarray(BOX) + rng.uniform(-6, 6, 4)) for _ in range(a.batch)]
    # patches of a real run, per iteration, to feed the network-only cases
    _, trace = model.trace(img, BOX)
    patches1 = [t["patches"] for t in trace]
    patchesB = [np.concatenate([p] * a.batch) for p in patches1]
    ts = a.ts if a.ts is not None else float(np.median([r.errors[0] for r in model.predict_batch(img, boxes[:16])]))

    def engine_net(patches, B):
        h = np.zeros((B, HIDDEN), np.float32)
        for i in range(3):
            _, h, _ = iteration_forward(patches[i], h, w.iterations[i])

    cases = {}                                     # name -> (callable, faces per call)
    model8 = m.MuSiCa.load(weights_path, recurrent="int8")
    for B, pat in ((1, patches1), (a.batch, patchesB)):
        bx = boxes[:B]
        cases[f"engine cascade, batch {B}"] = (lambda bx=bx: model.predict_batch(img, bx), B)
        if model.recurrent != "float32":
            cases[f"engine cascade float32, batch {B}"] = (lambda bx=bx: model32.predict_batch(img, bx), B)
        cases[f"engine cascade int8, batch {B}"] = (lambda bx=bx: model8.predict_batch(img, bx), B)
        cases[f"engine cascade Ts={ts:.3f}, batch {B}"] = (lambda bx=bx: model.predict_batch(img, bx, ts=ts), B)
        cases[f"engine network, batch {B}"] = (lambda pat=pat, B=B: engine_net(pat, B), B)
    notes = []
    try:
        import torch
        net = torch_network(model32.weights)
        scripted = torch.jit.trace(net, tuple(torch.from_numpy(p) for p in patches1), check_trace=False)
        for B, pat in ((1, patches1), (a.batch, patchesB)):
            tp = tuple(torch.from_numpy(p) for p in pat)
            cases[f"PyTorch eager network, batch {B}"] = (lambda tp=tp: _no_grad(net, tp), B)
            cases[f"TorchScript network, batch {B}"] = (lambda tp=tp: _no_grad(scripted, tp), B)
        try:
            sessions = onnx_sessions(net, patches1, (1, 2), tmp)
            for B, pat in ((1, patches1), (a.batch, patchesB)):
                feed = {"p0": pat[0], "p1": pat[1], "p2": pat[2]}
                cases[f"ONNX Runtime network, batch {B}"] = (lambda feed=feed: sessions[THREADS[0]].run(None, feed), B)
        except ImportError:
            notes.append("ONNX Runtime not installed: its rows are missing")
    except ImportError:
        notes.append("PyTorch not installed: the PyTorch, TorchScript and ONNX rows are missing")

    results = {}
    for th in (1, 2):
        THREADS[0] = th
        numba.set_num_threads(th)
        _set_torch_threads(th)
        for fn, _ in cases.values():               # warm-up
            fn()
            fn()
        times = {k: [] for k in cases}
        for _ in range(a.rounds):                  # interleaved rounds
            for k, (fn, _) in cases.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        for k, (fn, B) in cases.items():
            results[(k, th)] = statistics.median(times[k]) / B

    peaks = {th: machine_peaks(th) for th in (1, 2)}
    numba.set_num_threads(2)
    runs = fresh(weights_path, 3)
    imp = statistics.median(r["import"] for r in runs)
    first = statistics.median(r["first"] for r in runs)
    mem = {r: peak_memory(weights_path, a.batch, r) for r in ("stored", "float32", "int8")}
    params = opcount.total_parameters(v.n_landmarks, v.n_patches)
    macs = opcount.total_macs(v.n_landmarks, v.n_patches)
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"weights {weights_path}: recurrent layers held as {model.recurrent} in the engine's default cases")
    print(f"variant {v.name}: {macs / 1e6:.2f} M multiply-adds, {params:,d} parameters "
          f"({params * 4 / 1e6:.1f} MB float32) per face, all 3 iterations")
    for th in (1, 2):
        bw, gf = peaks[th]
        print(f"{th} thread(s): read bandwidth {bw:.1f} GB/s, float32 matmul {gf:.1f} GFLOP/s -> floors: "
              f"weight streaming {params * 4 / bw / 1e9 * 1e3:.2f} ms/face, arithmetic "
              f"{2 * macs / gf / 1e9 * 1e3:.2f} ms/face")
    print(f"\n{'case':<42} {'threads':>7} {'ms/face':>9} {'faces/s':>9} {'x stream floor':>15} {'x arith floor':>14}")
    for (k, th), t in results.items():
        bw, gf = peaks[th]
        sf, af = params * 4 / bw / 1e9, 2 * macs / gf / 1e9
        print(f"{k:<42} {th:>7} {t * 1e3:>9.2f} {1 / t:>9.1f} {t / sf:>15.2f} {t / af:>14.2f}")
    print("\nratios (engine time / baseline time; < 1 means the engine is faster):")
    for th in (1, 2):
        for B in (1, a.batch):
            for mine in ("network", "cascade", "cascade float32", "cascade int8"):
                e = results.get((f"engine {mine}, batch {B}", th))
                for base in ("PyTorch eager", "TorchScript", "ONNX Runtime"):
                    b = results.get((f"{base} network, batch {B}", th))
                    if e and b:
                        print(f"  batch {B}, {th} thread(s): engine {mine} / {base} network = {e / b:.2f}")
    print(f"\nfresh process, compiled cache present (median of 3): import musica_ref {imp:.2f} s, "
          f"first predict {first:.2f} s")
    print(f"peak resident memory of a batch of {a.batch} in a fresh process (weights {params * 4 / 1e6:.0f} MB as "
          f"float32): resident after import / after loading the weights / after a first one-face predict, and the "
          f"peak after the batch (then anonymous + file-backed resident memory after it)")
    for r, (imp_b, load_b, first_b, peak_b, anon_b, file_b) in mem.items():
        label = f"{r} ({model.recurrent})" if r == "stored" else r
        print(f"  recurrent layers {label}: {imp_b / 1e6:.0f} / {load_b / 1e6:.0f} / {first_b / 1e6:.0f} MB, "
              f"peak {peak_b / 1e6:.0f} MB ({anon_b / 1e6:.0f} + {file_b / 1e6:.0f} MB)")
    print(f"early exit threshold Ts = {ts:.4f}")
    zeros = [float((t["features"] == 0).mean()) for t in trace]
    print("inputs exactly 0 on the example face (their products are skipped): features "
          + ", ".join(f"{z:.0%}" for z in zeros) + " in iterations 1-3")
    for n in notes:
        print(n)


THREADS = [2]


def torch_network(weights32):
    """The trainer's PyTorch model of the network only: (patches of iterations 1, 2, 3) -> the 3 outputs
    (3, B, 2N+1), the iterations chained by the hidden state; weights32 a float32 musica_ref Weights."""
    import torch
    from tools.trainer.model import from_weights

    class NetOnly(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.its = net.iterations

        def forward(self, p0, p1, p2):
            h = torch.zeros(p0.shape[0] // weights32.variant.n_patches, HIDDEN)
            outs = []
            for it, p in zip(self.its, (p0, p1, p2)):
                r = it(p, h)
                h = r["hidden"]
                outs.append(r["out"])
            return torch.stack(outs)

    return NetOnly(from_weights(weights32, torch.float32)).eval()


def onnx_sessions(net, patches, threads, folder):
    """torch_network `net` exported to ONNX (in `folder`, traced on `patches`, any batch) -> {threads:
    ONNX Runtime session with that many intra-op threads}. Raises ImportError without onnxruntime."""
    import onnxruntime as ort
    import torch
    path = os.path.join(folder, "net.onnx")
    torch.onnx.export(net, tuple(torch.from_numpy(p) for p in patches), path,
                      input_names=["p0", "p1", "p2"], output_names=["out"],
                      dynamic_axes={k: {0: "bp"} for k in ("p0", "p1", "p2")}, dynamo=False)
    sessions = {}
    for th in threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads = th
        so.inter_op_num_threads = 1
        # ONNX Runtime's pool spins after each run by default, which would steal the cores from the
        # next case of the interleaved rounds; the other pools here wait passively too
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[th] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sessions


def _no_grad(net, tp):
    import torch
    with torch.no_grad():
        return net(*tp)


def _set_torch_threads(th):
    try:
        import torch
        torch.set_num_threads(th)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
