"""The `musica-ref` command line: predict, track, evaluate, count, info, warmup, random-weights."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from .errors import InputError, MusicaError
from .models import DEFAULT_MODEL, MODELS, WEIGHTS_ENV


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


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
    """Whether paths a and b are the same file (through links too), or would be once a is written."""
    if a is None or b is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:                                    # one of them does not exist (yet)
        return os.path.abspath(a) == os.path.abspath(b)


def _resolve_weights(a):
    """--weights, else --model, else $MUSICA_REF_WEIGHTS (a name or a path), else the default model."""
    from .models import resolve_model
    if a.weights is not None and a.model is not None:
        raise InputError("give --model or --weights, not both")
    if a.weights == "":
        raise InputError("--weights needs a weights file (.h5)")
    if a.model is not None and a.model not in MODELS:       # (an empty --model '' too)
        raise InputError(f"unknown model {a.model!r}; choose one of {', '.join(MODELS)} (or --weights FILE.h5)")
    return resolve_model(a.weights or a.model or os.environ.get(WEIGHTS_ENV) or DEFAULT_MODEL)


def _expand_images(args) -> list[str]:
    """Image paths from files and folders (a folder: its image files, sorted, not its subfolders)."""
    paths = []
    for p in args:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(p, f)))
            if not found:
                raise InputError(f"folder {p!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(p)
    return paths


def _check_writable(path):
    """InputError unless a file can be created at `path`: its folder exists and it is not a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise InputError(f"cannot write {path!r}: it is a folder")


def _atomic_write(path, write):
    """Write a file through a temporary one in the same folder, renamed into place when complete: an
    error leaves nothing half written. write(tmp_path) does the writing. A path that exists and is not a
    regular file (/dev/null, a named pipe) is written directly: renaming onto it would replace it."""
    _check_writable(path)
    if os.path.exists(path) and not os.path.isfile(path):
        try:
            return write(path)
        except OSError as exc:
            raise InputError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".musica-ref-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)                  # as open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _face_record(r) -> dict:
    return {"box": [round(float(v), 4) for v in r.box], "score": None if r.score is None else float(r.score),
            "landmarks": np.round(r.landmarks, 4).tolist(), "errors": [float(e) for e in r.errors],
            "iterations": r.iterations, "failed": r.failed, "multiply_adds": r.multiply_adds}


def _plan_outputs(a, images):
    """Where every output goes: (json_path or '-' or None, pts paths per image or None, overlay paths per
    image or None). Checks, before anything runs, that no output is an input and that names do not clash."""
    out, overlay = a.out, a.overlay
    json_out, pts_dir, pts_file, overlay_of, overlay_file = None, None, None, None, None
    if out is None or out == "-":
        json_out = "-"
    elif out.lower().endswith(".json"):
        json_out = out
    elif out.lower().endswith(".pts"):
        if len(images) != 1 or (a.box and len(a.box) != 1):
            raise InputError("--out FILE.pts holds one face of one image; give a folder for one .pts per face, "
                             "or FILE.json")
        pts_file = out
    elif os.path.splitext(out)[1] and not os.path.isdir(out):
        raise InputError(f"--out must be FILE.json, FILE.pts, a folder (one .pts per face) or - (JSON to "
                         f"standard output), got {out!r}")
    elif os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out!r} exists and is not a folder; give FILE.json, FILE.pts, a folder (one "
                         f".pts per face) or - (JSON to standard output)")
    else:
        pts_dir = out
    if overlay is not None:
        if overlay.lower().endswith((".png", ".jpg", ".jpeg")):
            if len(images) != 1:
                raise InputError(f"--overlay FILE draws one image; for {len(images)} images give a folder")
            overlay_of, overlay_file = {images[0]: overlay}, overlay
        elif os.path.splitext(overlay)[1] and not os.path.isdir(overlay):
            raise InputError(f"--overlay must end in .png or .jpg, or be a folder, got {overlay!r}")
        elif os.path.exists(overlay) and not os.path.isdir(overlay):
            raise InputError(f"--overlay {overlay!r} exists and is not a folder; give FILE.png, FILE.jpg or a "
                             f"folder")
        else:
            overlay_of = {p: os.path.join(overlay, os.path.splitext(os.path.basename(p))[0] + ".png")
                          for p in images}
    for f in (json_out, pts_file, overlay_file):
        if f and f != "-":
            _check_writable(f)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in images]
    if (pts_dir or overlay_of and len(images) > 1) and len(set(stems)) != len(stems):
        raise InputError("two input images have the same file name; their outputs would clash in the folder")
    return json_out, pts_dir, pts_file, overlay_of


class _Progress:
    """A progress bar on standard error, only when it is a terminal and there are several images."""

    def __init__(self, n):
        self.n, self.on, self.t0 = n, n > 1 and sys.stderr.isatty(), time.perf_counter()

    def step(self, k, faces):
        if self.on:
            rate = k / max(time.perf_counter() - self.t0, 1e-9)
            bar = "#" * int(30 * k / self.n)
            print(f"\r[{bar:<30}] {k}/{self.n} images, {faces} faces, {rate:.1f} images/s", end="",
                  file=sys.stderr, flush=True)

    def done(self):
        if self.on:
            print(file=sys.stderr)


def cmd_predict(a) -> int:
    from .geometry import tight_box
    from .io import load_image, read_pts
    from .model import DETECTED_REFINE, MuSiCa

    images = _expand_images(a.image)
    if a.max_pixels is not None:
        if a.max_pixels < 1:
            raise InputError(f"--max-pixels must be >= 1, got {a.max_pixels}")
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = a.max_pixels
    if a.box and a.pts:
        raise InputError("give --box or --pts, not both")
    if (a.box or a.pts) and len(images) != 1:
        raise InputError(f"--box and --pts are for one image; got {len(images)} (leave them out to detect faces)")
    weights_path = _resolve_weights(a)
    json_out, pts_dir, pts_file, overlay_of = _plan_outputs(a, images)
    inputs = images + [p for p in (a.pts, weights_path) if p]
    outputs = [o for o in (json_out, pts_file) if o and o != "-"] + list((overlay_of or {}).values())
    for out in outputs:
        if any(_same_file(out, p) for p in inputs):
            raise InputError(f"refusing to overwrite an input file with the output {out!r}")
    tf = _threshold(a.tf, "tf")
    ts = _threshold(a.ts, "ts") or 0.0
    given = [_parse_box(b) for b in a.box] if a.box else [tight_box(read_pts(a.pts)).tolist()] if a.pts else None
    model = MuSiCa.load(weights_path, recurrent="int8" if a.int8 else "stored")
    if given is None:                                   # detection: fail now, not after loading the first image
        from .detect import default_detector
        default_detector()
    records, wrote, n_faces, n_bad = [], [], 0, 0
    if pts_dir is not None:
        os.makedirs(pts_dir, exist_ok=True)
    progress = _Progress(len(images))
    for k, path in enumerate(images):
        try:
            image = load_image(path)
            if given is not None:
                results = model.predict_batch(image, given, ts=ts, tf=tf, refine=a.refine or 0)
            else:
                results = model.predict_image(image, ts=ts, tf=tf, refine=DETECTED_REFINE if a.refine is None
                                              else a.refine)
        except MusicaError as exc:
            if len(images) == 1:
                raise
            print(f"musica-ref: error: {path}: {exc}", file=sys.stderr)
            records.append({"image": path, "error": str(exc)})
            n_bad += 1
            continue
        n_faces += len(results)
        records.append({"image": path, "width": image.shape[1], "height": image.shape[0],
                        "faces": [_face_record(r) for r in results]})
        wrote += _write_image_outputs(path, image, results, pts_file, pts_dir, overlay_of)
        if not progress.on:
            _report(path, results, given is None)
        progress.step(k + 1, n_faces)
    progress.done()
    doc = {"model": model.weights.variant.name, "weights": weights_path, "recurrent": model.recurrent,
           "convention": "(x, y), 0-based pixels", "images": records}
    if json_out == "-":
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
    elif json_out:
        def dump(tmp):
            with open(tmp, "w") as fh:
                json.dump(doc, fh, indent=1)
        _atomic_write(json_out, dump)
        wrote.append(json_out)
    if len(images) > 1:
        print(f"{len(images)} images, {n_faces} faces" + (f", {n_bad} images unreadable" if n_bad else ""),
              file=sys.stderr)
    for p in wrote if len(wrote) <= 5 else []:
        print(f"wrote {p}", file=sys.stderr)
    if len(wrote) > 5:
        print(f"wrote {len(wrote)} files", file=sys.stderr)
    return 2 if n_bad else 0


def _write_image_outputs(path, image, results, pts_file, pts_dir, overlay_of) -> list:
    """One image's .pts files and overlay, each written whole (through a temporary file); their paths."""
    from .io import write_pts
    wrote = []
    if pts_file is not None and len(results) != 1:
        raise InputError(f"--out FILE.pts holds one face and {len(results)} were found; give a folder for "
                         f"one .pts per face, or FILE.json")
    stem = os.path.splitext(os.path.basename(path))[0]
    for j, r in enumerate(results):
        dest = pts_file or (os.path.join(pts_dir, f"{stem}_{j}.pts") if pts_dir else None)
        if dest:
            _atomic_write(dest, lambda tmp, r=r: write_pts(tmp, r.landmarks))
            wrote.append(dest)
    if overlay_of is not None:
        from .draw import draw_results
        dest = overlay_of[path]
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        im = draw_results(image, results)
        _atomic_write(dest, lambda tmp: im.save(tmp, format="JPEG" if dest.lower().endswith(("jpg", "jpeg"))
                                                else "PNG"))
        wrote.append(dest)
    return wrote


def _threshold(text, name):
    """--ts/--tf: a fraction (0.05), a percentage (5%), or None (the default)."""
    if text is None:
        return None
    t = str(text).strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise InputError(f"--{name} must be a fraction (0.05) or a percentage (5%), got {text!r}") from None
    if not t.endswith("%") and v > 1 and v != float("inf"):
        raise InputError(f"--{name} {t} would be {v * 100:g}% of the eye-corner distance; write {t}% for a "
                         f"percentage, or a fraction such as {v / 100:g}")
    return v


def _report(path, results, detected):
    """One human-readable line per face on standard error."""
    if not results:
        print(f"{path}: no face found" + (" (give --box x0,y0,x1,y1 to place one)" if detected else ""),
              file=sys.stderr)
    for j, r in enumerate(results):
        errs = ", ".join(f"{e * 100:.2f}%" for e in r.errors)
        score = f", score {r.score:.2f}" if r.score is not None else ""
        box = ",".join(f"{v:.0f}" for v in r.box)
        print(f"{path}: face {j} box {box}{score}: {len(r.landmarks)} landmarks, {r.iterations} iteration(s), "
              f"error estimates [{errs}], failed={r.failed}, {r.multiply_adds / 1e6:.2f} M multiply-adds",
              file=sys.stderr)


def _variant_from(a):
    """The variant of --variant or --landmarks N [--patches P] (patches at the first P landmarks; every
    landmark without --patches): one rule for count and random-weights."""
    from .variants import custom_variant, get_variant
    if a.variant and (a.landmarks is not None or a.patches is not None):
        raise InputError("give --variant or --landmarks/--patches, not both")
    try:
        if a.landmarks is None and a.patches is None:
            return get_variant(a.variant or "musica68")
        if a.landmarks is None:
            raise InputError("--patches P needs --landmarks N")
        if a.patches is not None and not 1 <= a.patches <= a.landmarks:
            raise InputError(f"--patches must be from 1 to --landmarks ({a.landmarks}), got {a.patches}")
        return custom_variant(a.landmarks, range(a.patches) if a.patches is not None else None)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def cmd_count(a) -> int:
    from . import opcount
    v = _variant_from(a)
    print(opcount.format_table1())
    print()
    print(opcount.format_breakdown(v.n_landmarks, v.n_patches))
    return 0


def cmd_info(a) -> int:
    from .opcount import total_macs
    from .weights import FORMAT_NAME, load_weights
    from .models import resolve_model
    a.file = resolve_model(a.file)
    w = load_weights(a.file)
    v = w.variant
    import h5py
    with h5py.File(a.file, "r") as f:
        version = int(f.attrs["format_version"])
        dtype = f["iteration_0/recurrent/weight"].dtype
    print(f"{a.file}: {FORMAT_NAME} version {version}, " + (
        "every tensor's checksum verified" if version >= 2 else "no checksums (format version 1)"))
    print(f"variant {v.name}: N = {v.n_landmarks} landmarks, P = {v.n_patches} patches")
    print(f"patch indices: {list(v.patch_indices)}")
    print("default failure threshold tf: " + (f"{w.default_tf:.4f} ({w.default_tf * 100:.2f}%)"
                                              if w.default_tf is not None else "none stored (no face is flagged)"))
    print(f"parameters: {w.n_parameters():,d}; multiply-adds for 3 iterations: "
          f"{total_macs(v.n_landmarks, v.n_patches) / 1e6:.2f} M (full convention)")
    print(f"storage dtype: {dtype}; file size {os.path.getsize(a.file) / 1e6:.1f} MB")
    for k, val in sorted(w.provenance.items()):
        print(f"provenance.{k}: {val}")
    return 0


def cmd_random_weights(a) -> int:
    from .weights import random_weights, save_weights
    if os.path.exists(a.out) and not a.force:
        raise InputError(f"{a.out!r} exists; pass --force to replace it")
    _check_writable(a.out)
    if not 0 <= a.seed < 2 ** 63:                   # stored in the file's provenance as a 64-bit integer
        raise InputError(f"--seed must be from 0 to 2**63 - 1, got {a.seed}")
    v = _variant_from(a)
    _atomic_write(a.out, lambda tmp: save_weights(tmp, random_weights(v, seed=a.seed),
                                                  dtype=np.float16 if a.float16 else np.float32))
    print(f"wrote random weights for {v.name} (N = {v.n_landmarks}, P = {v.n_patches}) to {a.out}; "
          "their predictions are meaningless: they exercise the engine, nothing more")
    return 0


def cmd_track(a) -> int:
    from .model import MuSiCa
    from .track import Tracker
    from .video import frame_count, read_frames
    if not os.path.exists(a.input):
        raise InputError(f"{a.input!r} does not exist (give a video file or a folder of frames)")
    from .video import frame_files
    weights = _resolve_weights(a)
    out = a.out or "-"
    inputs = (frame_files(a.input) if os.path.isdir(a.input) else [a.input]) + [weights]
    if out != "-" and any(_same_file(out, p) for p in inputs):
        raise InputError(f"refusing to overwrite an input file with the output {out!r}")
    if a.overlay and _same_file(a.overlay, a.input):
        raise InputError(f"--overlay {a.overlay!r} is the input; give another folder for the overlay frames")
    if out != "-":
        _check_writable(out)
    if a.overlay:
        if os.path.isfile(a.overlay):
            raise InputError(f"--overlay {a.overlay!r} is a file; give a folder for the overlay frames")
        _check_writable(os.path.join(a.overlay, "frame_000000.png") if os.path.isdir(a.overlay) else a.overlay)
    if a.fps is not None and not a.fps > 0:
        raise InputError(f"--fps must be > 0, got {a.fps}")
    if a.max_frames is not None and a.max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {a.max_frames}")
    model = MuSiCa.load(weights, recurrent="int8" if a.int8 else "stored")
    tracker = Tracker(model, ts=_threshold(a.ts, "ts") or 0.0, tf=_threshold(a.tf, "tf"),
                      smoothing=not a.no_smoothing, detect_every=a.detect_every, fps=a.fps or 30.0)
    n = frame_count(a.input)
    progress = _Progress(min(n, a.max_frames or n) if n else 0)
    lines, n_frames, total_faces = [], 0, 0
    if a.overlay:
        os.makedirs(a.overlay, exist_ok=True)
    for k, t, frame in read_frames(a.input, fps=a.fps or 30.0, max_frames=a.max_frames):
        faces = tracker.update(frame, t)
        rec = {"frame": k, "time": round(t, 6),
               "faces": [{"track": r.track_id, **_face_record(r)} for r in faces]}
        if out == "-":
            print(json.dumps(rec), flush=True)
        else:
            lines.append(json.dumps(rec))
        if a.overlay:
            from .draw import draw_results
            im = draw_results(frame, faces)
            _atomic_write(os.path.join(a.overlay, f"frame_{k:06d}.png"), lambda tmp: im.save(tmp, format="PNG"))
        n_frames, total_faces = n_frames + 1, total_faces + len(faces)
        progress.step(k + 1, total_faces)
    progress.done()
    if out != "-":
        def dump(tmp):
            with open(tmp, "w") as fh:
                fh.write("\n".join(lines) + "\n")
        _atomic_write(out, dump)
    print(f"{n_frames} frames, {total_faces} tracked faces, {tracker.tracks_started} tracks, the detector ran on "
          f"{tracker.detections} frames" + (f"; wrote {out}" if out != "-" else ""), file=sys.stderr)
    return 0


def cmd_evaluate(a) -> int:
    from .data import FaceSet
    from .evaluate import evaluate
    from .model import MuSiCa
    from .models import resolve_model
    weights = resolve_model(a.model)
    outputs = [o for o in (a.csv, a.ced) if o]
    for out in outputs:
        if any(_same_file(out, p) for p in (a.data, weights)):
            raise InputError(f"refusing to overwrite an input file with the output {out!r}")
        _check_writable(out)
    if a.csv and a.ced and _same_file(a.csv, a.ced):
        raise InputError("--csv and --ced name the same file")
    if a.batch < 1:
        raise InputError(f"--batch must be at least 1, got {a.batch}")
    tf = _threshold(a.tf, "tf")
    ts = _threshold(a.ts, "ts") or 0.0
    model = MuSiCa.load(weights, recurrent="int8" if a.int8 else "stored")
    faces = FaceSet(a.data, a.limit)
    ev = evaluate(model, faces, ts=ts, tf=tf, batch=a.batch, progress=sys.stderr.isatty())
    print(f"{model.weights.variant.name} ({weights}{', int8 recurrent' if a.int8 else ''}) on {a.data}: "
          f"{len(faces)} faces, ts {ts:g}, tf {model.default_tf if tf is None else tf:g}")
    print("\n".join(ev.lines()))
    if a.csv:
        _atomic_write(a.csv, ev.write_csv)
        print(f"wrote {a.csv}", file=sys.stderr)
    if a.ced:
        _atomic_write(a.ced, ev.write_ced)
        print(f"wrote {a.ced}", file=sys.stderr)
    return 0


def cmd_warmup(a) -> int:
    from .warmup import compile_all
    seconds = compile_all(progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"every kernel compiled or loaded from the cache in {seconds:.1f} s", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musica-ref", description="MuSiCa face alignment on the CPU (NumPy + Numba).")
    from . import __version__
    p.add_argument("--version", action="version", version=f"musica-ref {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("predict", help="landmarks of every face in one or more images",
                       description="Find the faces in each image (or take --box) and give their landmarks.")
    q.add_argument("image", nargs="+", help="image files and folders of images")
    q.add_argument("--box", action="append", help="face box x0,y0,x1,y1 in pixels (0-based, x right, y down) "
                   "instead of detection; repeat it for several faces (one image only)")
    q.add_argument("--pts", help="take the face box as the tight box of this .pts file's points (one image only)")
    q.add_argument("--model", help=f"a model by name: {', '.join(MODELS)} (default {DEFAULT_MODEL})")
    q.add_argument("--weights", help=f"a weights file (.h5) instead of --model; default ${WEIGHTS_ENV} if set")
    q.add_argument("--ts", help="early exit: stop once E < ts, as a fraction (0.05) or a percentage (5%%); "
                   "default 0: run every iteration")
    q.add_argument("--tf", help="flag a face as failed if its last E > tf (fraction or percentage); default: "
                   "the model's own threshold")
    q.add_argument("--refine", type=int, help="run again this many times, each on the box of the landmarks "
                   "found (0-3; default 1 for detected faces, 0 for --box and --pts)")
    q.add_argument("--out", help="FILE.json (every image and face), FILE.pts (one face, 1-based), a folder "
                   "(one IMAGE_k.pts per face), or - for JSON on standard output alone (the default)")
    q.add_argument("--overlay", help="draw the faces on the image into FILE.png (one image) or a folder")
    q.add_argument("--int8", action="store_true",
                   help="recurrent layers as int8 with a scale per unit: faster at batch 1, slightly less accurate")
    q.add_argument("--max-pixels", type=int, help="refuse images with more pixels than this (default: Pillow's "
                   "limit, about 89 million)")
    q.set_defaults(func=cmd_predict)

    t = sub.add_parser("track", help="track the faces of a video file or a folder of frames",
                       description="Follow every face from frame to frame: each frame's landmarks give the next "
                       "frame's box, the detector runs to start, to recover a lost face and every --detect-every "
                       "frames. One JSON line per frame.")
    t.add_argument("input", help="a video file (the video extra: PyAV) or a folder of frames (in name order)")
    t.add_argument("--model", help=f"a model by name: {', '.join(MODELS)} (default {DEFAULT_MODEL})")
    t.add_argument("--weights", help="a weights file (.h5) instead of --model")
    t.add_argument("--out", help="FILE.jsonl, or - for standard output (the default): one JSON object per frame")
    t.add_argument("--overlay", help="a folder for the frames with their faces drawn (frame_000000.png, ...)")
    t.add_argument("--ts", help="early exit threshold (fraction or percentage); default 0: every iteration")
    t.add_argument("--tf", help="a face whose last E > tf is lost and looked for again; default: the model's own")
    t.add_argument("--detect-every", type=int, default=10, help="run the detector every K frames for new faces "
                   "(default 10; 0: only when no face is tracked)")
    t.add_argument("--no-smoothing", action="store_true", help="landmarks as found, not smoothed over time")
    t.add_argument("--fps", type=float, help="the frame rate of a folder of frames (default 30)")
    t.add_argument("--max-frames", type=int, help="stop after N frames")
    t.add_argument("--int8", action="store_true", help="recurrent layers as int8")
    t.set_defaults(func=cmd_track)

    e = sub.add_parser("evaluate", help="accuracy of a model on an annotated face set",
                       description="Run a model on every face of an annotated set from the set's own face box and "
                       "print NME_box, NME_io, NME_ip, the failure rate (NME_io > 10%%), the CED area and, when "
                       "the set has poses, NME_box by |yaw|.")
    e.add_argument("model", help=f"a model by name ({', '.join(MODELS)}) or a weights file")
    e.add_argument("data", help="an HDF5 face set (jpeg, landmarks, visible, box) or a folder of images with .pts "
                   "files beside them")
    e.add_argument("--csv", help="per-face results (NMEs, iterations, multiply-adds, estimate, failed) to this CSV")
    e.add_argument("--ced", help="the cumulative error distributions (NME_box, NME_io) to this CSV")
    e.add_argument("--ts", help="early exit threshold (fraction or percentage); default 0: every iteration")
    e.add_argument("--tf", help="failure threshold (fraction or percentage); default: the model's own")
    e.add_argument("--limit", type=int, help="the first N faces only")
    e.add_argument("--batch", type=int, default=32, help="faces per call (default 32)")
    e.add_argument("--int8", action="store_true", help="recurrent layers as int8")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("count", help="multiply-adds and parameters: paper Table 1 and a per-layer breakdown")
    c.add_argument("--variant", help="musica68 (default), musica34, musica19, musica98, musica49")
    c.add_argument("--landmarks", type=int, help="custom N")
    c.add_argument("--patches", type=int, help="P, with --landmarks (default: every landmark)")
    c.set_defaults(func=cmd_count)

    w = sub.add_parser("warmup", help="compile every kernel now (once per environment), e.g. in a container build")
    w.set_defaults(func=cmd_warmup)

    i = sub.add_parser("info", help="describe a weights file")
    i.add_argument("file", help=f"a weights file, or a model name ({', '.join(MODELS)})")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("random-weights", help="write a valid weights file with random values (for trying the engine)")
    r.add_argument("out")
    r.add_argument("--variant", help="musica68 (default), musica34, musica19, musica98, musica49")
    r.add_argument("--landmarks", type=int, help="custom N (patches at the first --patches landmarks)")
    r.add_argument("--patches", type=int, help="P, with --landmarks (default: every landmark)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--float16", action="store_true", help="store tensors as float16")
    r.add_argument("--force", action="store_true", help="replace an existing file")
    r.set_defaults(func=cmd_random_weights)
    return p


def _say_compiling():
    print("musica-ref: compiling the Numba kernels for this CPU (once per environment and kind of input; later "
          "runs load them from the cache; `musica-ref warmup` does it ahead) ...", file=sys.stderr, flush=True)


def _glue_negative_boxes(argv):
    """`--box -10,-10,50,50` as `--box=-10,-10,50,50`: argparse takes a value starting with '-' for an option."""
    out, k = [], 0
    while k < len(argv):
        if argv[k] == "--box" and k + 1 < len(argv) and argv[k + 1].startswith("-"):
            out.append("--box=" + argv[k + 1])
            k += 2
        else:
            out.append(argv[k])
            k += 1
    return out


def main(argv=None) -> int:
    # Numba's OpenMP threads spin while they wait; on a machine busy with other work that makes a predict
    # many times slower (docs/benchmarks.md). Passive waiting avoids it; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(_glue_negative_boxes(sys.argv[1:] if argv is None else list(argv)))
    from .warmup import compile_notice
    try:
        if args.func is cmd_warmup:                 # says what it compiles itself
            return args.func(args)
        with compile_notice(_say_compiling):        # one line when a kernel starts to compile, if one does
            return args.func(args)
    except MusicaError as exc:
        print(f"musica-ref: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:                 # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
