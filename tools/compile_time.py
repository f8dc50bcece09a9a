"""Where the first run's compile time goes: one `predict` of one face in a fresh process with an empty Numba
cache, and per kernel the seconds Numba spent compiling it (with the kernels it calls, compiled for it) and
how much of that was LLVM's.

    python tools/compile_time.py [--model musica68] [--top 15] [--cache DIR]

--cache: a Numba cache folder to use instead of a new empty one (a warm one shows what is left to compile).
Prints the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
import musica_ref as m
from musica_ref import kernels
from tools.make_example import FACE_BOX
model = m.MuSiCa.load(sys.argv[1])
image = m.load_image(sys.argv[2])
t = time.perf_counter()
model.predict(image, FACE_BOX)
first = time.perf_counter() - t
timers = {}                                  # Numba's own record of each compile (none for a cache load)
for mod in kernels.MODULES:
    for name, f in vars(mod).items():
        for cres in getattr(f, "overloads", {}).values():
            t = (cres.metadata or {}).get("timers", {})
            if t:
                total, llvm = timers.get(name, (0.0, 0.0))
                timers[name] = (total + t.get("compiler_lock", 0.0), llvm + t.get("llvm_lock", 0.0))
print(json.dumps({"first": first, "timers": timers}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="musica68")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--cache", help="a Numba cache folder (default: a new empty one)")
    a = ap.parse_args(argv)
    from tools.time_predict import machine
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=a.cache or tmp, PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, "-c", CHILD, a.model, str(ROOT / "examples" / "face.png")],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"compile_time: the child process failed:\n{p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    timers = out["timers"]
    print(f"first predict of one face ({a.model}), {'that cache' if a.cache else 'empty cache'}: "
          f"{out['first']:.1f} s; {len(timers)} kernels compiled")
    print(f"{'kernel':32s} {'compile s':>10s} {'of it LLVM':>11s}   (a kernel's time includes the kernels "
          "it calls, compiled for it)")
    for name, (total, llvm) in sorted(timers.items(), key=lambda kv: -kv[1][0])[:a.top]:
        print(f"{name:32s} {total:10.2f} {llvm:11.2f}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
