"""Where the first run's compile time goes: one `predict` of one face in a fresh process with an empty Numba
cache, and per kernel the seconds Numba spent compiling it (with the kernels it calls, compiled for it) and
how much of that was LLVM's. The CPU time of the call is printed too: on a shared machine it varies less than
the wall-clock time (time the process waited for a core is not in it).

    python tools/compile_time.py [--model musica68] [--top 15] [--cache DIR]
    python tools/compile_time.py --against OTHER_TREE [--rounds 3]
    python tools/compile_time.py --no-helper          (MUSICA_REF_COMPILE_HELPER=0: all in one process)

--cache: a Numba cache folder to use instead of a new empty one (a warm one shows what is left to compile).
--against: the first predict of this tree and of another checkout (e.g. `git worktree add /tmp/base main`)
in alternating fresh processes, each with a new empty cache, and the medians.
Prints the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
import musica_ref as m
from musica_ref import kernels
from tools.make_example import FACE_BOX
model = m.MuSiCa.load(sys.argv[1])
image = m.load_image(sys.argv[2])
t, c = time.perf_counter(), time.process_time()
model.predict(image, FACE_BOX)
first, cpu = time.perf_counter() - t, time.process_time() - c
helper = resource.getrusage(resource.RUSAGE_CHILDREN)
helper_cpu = helper.ru_utime + helper.ru_stime
timers = {}                                  # Numba's own record of each compile (none for a cache load)
for mod in kernels.MODULES:
    for name, f in vars(mod).items():
        for cres in getattr(f, "overloads", {}).values():
            t = (cres.metadata or {}).get("timers", {})
            if t:
                total, llvm = timers.get(name, (0.0, 0.0))
                timers[name] = (total + t.get("compiler_lock", 0.0), llvm + t.get("llvm_lock", 0.0))
print(json.dumps({"first": first, "cpu": cpu, "helper_cpu": helper_cpu, "timers": timers}))
"""


def first_run(root: Path, model: str, cache: str | None, helper: bool = True) -> dict:
    """One fresh process of the tree at `root`: its first predict with the given (or a new empty) cache."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache or tmp, PYTHONPATH=str(root),
                   MUSICA_REF_COMPILE_HELPER="1" if helper else "0")
        p = subprocess.run([sys.executable, "-c", CHILD, model, str(root / "examples" / "face.png")],
                           capture_output=True, text=True, env=env, cwd=root)
    if p.returncode != 0:
        sys.exit(f"compile_time: the child process for {root} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="musica68")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--cache", help="a Numba cache folder (default: a new empty one)")
    ap.add_argument("--against", type=Path, help="another checkout of this project: first runs of both, "
                    "alternating, --rounds times (the machine's speed drifts; compare within rounds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-helper", action="store_true", help="no helper process: every kernel compiled in the "
                    "predicting process (MUSICA_REF_COMPILE_HELPER=0)")
    a = ap.parse_args(argv)
    from tools.time_predict import machine
    if a.against:
        other = a.against.resolve()
        if not (other / "musica_ref").is_dir():
            sys.exit(f"compile_time: {other} is not a checkout of this project")
        firsts = {"this": [], "other": []}
        for r in range(a.rounds):
            cpu = {}
            for name, root in (("this", ROOT), ("other", other)):
                out = first_run(root, a.model, None, not a.no_helper)
                firsts[name].append(out["first"])
                cpu[name] = out["cpu"] + out.get("helper_cpu", 0.0)
            print(f"round {r + 1}: this {firsts['this'][-1]:.1f} s, other {firsts['other'][-1]:.1f} s, "
                  f"this / other {firsts['this'][-1] / firsts['other'][-1]:.2f} (CPU time with any helper's: "
                  f"this {cpu['this']:.1f} s, other {cpu['other']:.1f} s)", flush=True)
        this, base = statistics.median(firsts["this"]), statistics.median(firsts["other"])
        print(f"first predict of one face ({a.model}), empty cache, median of {a.rounds} rounds: this {this:.1f} s, "
              f"other {base:.1f} s, this / other {this / base:.2f}")
        print(f"this: {ROOT}; other: {other}")
        print(f"machine: {machine()}")
        return
    out = first_run(ROOT, a.model, a.cache, not a.no_helper)
    timers = out["timers"]
    print(f"first predict of one face ({a.model}), {'that cache' if a.cache else 'empty cache'}"
          f"{', no helper process' if a.no_helper else ''}: {out['first']:.1f} s ({out['cpu']:.1f} s of CPU "
          f"time, and {out['helper_cpu']:.1f} s in a helper process); {len(timers)} kernels compiled here")
    print(f"{'kernel':32s} {'compile s':>10s} {'of it LLVM':>11s}   (a kernel's time includes the kernels "
          "it calls, compiled for it)")
    for name, (total, llvm) in sorted(timers.items(), key=lambda kv: -kv[1][0])[:a.top]:
        print(f"{name:32s} {total:10.2f} {llvm:11.2f}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
