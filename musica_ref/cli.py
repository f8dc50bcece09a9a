"""The `musica-ref` command line: predict, count, info, random-weights."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from .errors import InputError, MusicaError

WEIGHTS_ENV = "MUSICA_REF_WEIGHTS"


def _parse_box(text: str):
    parts = text.replace(" ", "").split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"--box must be four numbers x0,y0,x1,y1, got {text!r}") from None
    if len(vals) != 4:
        raise InputError(f"--box must be four numbers x0,y0,x1,y1, got {len(vals)}: {text!r}")
    return vals


def _same_file(a, b) -> bool:
    return a is not None and b is not None and os.path.abspath(a) == os.path.abspath(b)


def _resolve_weights(path):
    if path:
        return path
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return env
    raise InputError("no --weights given (and $MUSICA_REF_WEIGHTS is not set): the trained models are in the "
                     "repository's weights/ folder, e.g. --weights weights/musica68.h5")


def cmd_predict(a) -> int:
    from .geometry import tight_box
    from .io import load_image, read_pts, write_pts
    from .model import MuSiCa

    if (a.box is None) == (a.pts is None):
        raise InputError("give exactly one of --box x0,y0,x1,y1 or --pts FILE.pts")
    weights_path = _resolve_weights(a.weights)
    inputs = [a.image, a.pts, weights_path]
    for out in (a.out, a.overlay):
        if any(_same_file(out, p) for p in inputs):
            raise InputError(f"refusing to overwrite an input file with the output {out!r}")
    if a.out and os.path.splitext(a.out)[1].lower() not in (".pts", ".json"):
        raise InputError(f"--out must end in .pts or .json, got {a.out!r}")
    if a.overlay and os.path.splitext(a.overlay)[1].lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"--overlay must end in .png or .jpg, got {a.overlay!r}")
    image = load_image(a.image)
    box = _parse_box(a.box) if a.box else tight_box(read_pts(a.pts)).tolist()
    model = MuSiCa.load(weights_path, recurrent="int8" if a.int8 else "stored")
    r = model.predict(image, box, ts=a.ts, tf=a.tf)
    summary = {
        "image": a.image, "box": [float(v) for v in box], "weights": weights_path,
        "recurrent": model.recurrent,
        "landmarks": np.round(r.landmarks, 4).tolist(), "errors": [float(e) for e in r.errors],
        "iterations": r.iterations, "failed": r.failed, "multiply_adds": r.multiply_adds,
        "convention": "(x, y), 0-based pixels",
    }
    if a.out:
        if a.out.lower().endswith(".pts"):
            write_pts(a.out, r.landmarks)
        else:
            with open(a.out, "w") as fh:
                json.dump(summary, fh, indent=1)
    if a.overlay:
        from .draw import draw_result
        draw_result(image, box, r).save(a.overlay)
    errs = ", ".join(f"{e * 100:.2f}%" for e in r.errors)
    print(f"{len(r.landmarks)} landmarks, {r.iterations} iteration(s), error estimates [{errs}], "
          f"failed={r.failed}, {r.multiply_adds / 1e6:.2f} M multiply-adds")
    if not a.out:
        print(json.dumps({"landmarks": summary["landmarks"]}))
    for what, path in (("landmarks", a.out), ("overlay", a.overlay)):
        if path:
            print(f"wrote {what} to {path}")
    return 0


def cmd_count(a) -> int:
    from . import opcount
    from .variants import get_variant
    if a.variant and (a.landmarks or a.patches):
        raise InputError("give --variant or --landmarks/--patches, not both")
    if a.landmarks or a.patches:
        if not (a.landmarks and a.patches) or a.landmarks < 1 or a.patches < 1:
            raise InputError("--landmarks N and --patches P go together, both >= 1")
        N, P = a.landmarks, a.patches
    else:
        try:
            v = get_variant(a.variant or "musica68")
        except ValueError as exc:
            raise InputError(str(exc)) from None
        N, P = v.n_landmarks, v.n_patches
    print(opcount.format_table1())
    print()
    print(opcount.format_breakdown(N, P))
    return 0


def cmd_info(a) -> int:
    from .opcount import total_macs
    from .weights import FORMAT_NAME, FORMAT_VERSION, load_weights
    w = load_weights(a.file)
    v = w.variant
    print(f"{a.file}: {FORMAT_NAME} version {FORMAT_VERSION}")
    print(f"variant {v.name}: N = {v.n_landmarks} landmarks, P = {v.n_patches} patches")
    print(f"patch indices: {list(v.patch_indices)}")
    print(f"parameters: {w.n_parameters():,d}; multiply-adds for 3 iterations: "
          f"{total_macs(v.n_landmarks, v.n_patches) / 1e6:.2f} M (full convention)")
    import h5py
    with h5py.File(a.file, "r") as f:
        print(f"storage dtype: {f['iteration_0/recurrent/weight'].dtype}; file size "
              f"{os.path.getsize(a.file) / 1e6:.1f} MB")
    for k, val in sorted(w.provenance.items()):
        print(f"provenance.{k}: {val}")
    return 0


def cmd_random_weights(a) -> int:
    from .variants import custom_variant, get_variant
    from .weights import random_weights, save_weights
    if os.path.exists(a.out) and not a.force:
        raise InputError(f"{a.out!r} exists; pass --force to replace it")
    try:
        v = (custom_variant(a.landmarks, range(a.patches) if a.patches else None)
             if a.landmarks else get_variant(a.variant))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    save_weights(a.out, random_weights(v, seed=a.seed), dtype=np.float16 if a.float16 else np.float32)
    print(f"wrote random weights for {v.name} (N = {v.n_landmarks}, P = {v.n_patches}) to {a.out}; "
          "their predictions are meaningless: they exercise the engine, nothing more")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musica-ref", description="MuSiCa face alignment on the CPU (NumPy + Numba).")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("predict", help="landmarks of one face in an image")
    q.add_argument("image")
    q.add_argument("--box", help="face box x0,y0,x1,y1 in pixels (0-based, x right, y down)")
    q.add_argument("--pts", help="take the face box as the tight box of this .pts file's points")
    q.add_argument("--weights", help=f"weights file (.h5); default ${WEIGHTS_ENV}")
    q.add_argument("--ts", type=float, default=0.0, help="early exit: stop once E < ts (0: run all iterations)")
    q.add_argument("--tf", type=float, default=math.inf, help="failure: flag the face if the last E > tf")
    q.add_argument("--out", help="write the landmarks to FILE.pts (1-based) or FILE.json (0-based)")
    q.add_argument("--overlay", help="draw box, landmarks and error estimates on the image into FILE.png")
    q.add_argument("--int8", action="store_true",
                   help="recurrent layers as int8 with a scale per unit: faster at batch 1, slightly less accurate")
    q.set_defaults(func=cmd_predict)

    c = sub.add_parser("count", help="multiply-adds and parameters: paper Table 1 and a per-layer breakdown")
    c.add_argument("--variant", help="musica68 (default), musica34, musica19, musica98, musica49")
    c.add_argument("--landmarks", type=int, help="N, with --patches")
    c.add_argument("--patches", type=int, help="P, with --landmarks")
    c.set_defaults(func=cmd_count)

    i = sub.add_parser("info", help="describe a weights file")
    i.add_argument("file")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("random-weights", help="write a valid weights file with random values (for trying the engine)")
    r.add_argument("out")
    r.add_argument("--variant", default="musica68")
    r.add_argument("--landmarks", type=int, help="custom N (patches at the first --patches landmarks)")
    r.add_argument("--patches", type=int)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--float16", action="store_true", help="store tensors as float16")
    r.add_argument("--force", action="store_true", help="replace an existing file")
    r.set_defaults(func=cmd_random_weights)
    return p


def main(argv=None) -> int:
    # Numba's OpenMP threads spin while they wait; on a machine busy with other work that made one predict
    # ~40x slower here (400 ms instead of 8-10 ms). Passive waiting avoids it; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MusicaError as exc:
        print(f"musica-ref: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:                 # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
