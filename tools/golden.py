"""Golden test vectors: run the trainer's PyTorch model (float64) on a few faces and write, per face and
iteration, the inputs (image, box, pyramid levels, initial shape, patch centres, patches) and every named
intermediate and output to a small HDF5 file, for porters and for tests/test_golden.py.

    python tools/golden.py --all              every shipped model: weights/NAME.h5 -> tests/golden/NAME.h5
                                              (a golden file still matching its weights is kept; --force
                                              rewrites it)
    python tools/golden.py --weights weights/musica19.h5 --out tests/golden/musica19.h5

Format "musica-ref-golden" version 1:
    /                              attrs: format, format_version, weights (file name), weights_sha256,
                                   variant, n_faces, patch_rows, torch_version, created, dtype
    /image                         (H, W, 3) uint8, the input image of every face (synthetic: examples/face.png)
    /face_{k}/box                  (4,) the face box (x0, y0, x1, y1)
    /face_{k}/level_{L}            (H_L, W_L, 3) float32, the normalised pyramid levels
    /face_{k}/init0                (N, 2) initial shape, level-0 pixels
    /face_{k}/iteration_{i}/centres    (P, 2) patch centres, level pixels (x, y)
    /face_{k}/iteration_{i}/{name}     the named intermediates (musica_ref.network.INTERMEDIATES) and the
                                   patches; per-patch tensors (patches, conv1, pool1, conv2, pool2, features,
                                   attention, gated) only for the patch rows in the `patch_rows` attribute
                                   (to keep the file small); hidden (512,), out (2N+1,) in full
    /face_{k}/landmarks            (3, N, 2) the landmarks after every iteration, image pixels
    /face_{k}/errors               (3,) the error estimates

Centres are checked to lie at least MARGIN px from a pixel boundary, so that an implementation in float32
reads the same pixels as this float64 reference; a face that fails the check gets its box nudged.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                              # noqa: E402
from musica_ref import geometry                                     # noqa: E402
from musica_ref.pyramid import build_pyramid                        # noqa: E402
from tools.make_example import FACE_BOX                             # noqa: E402
from tools.trainer.model import canvases, from_weights              # noqa: E402

FORMAT_NAME = "musica-ref-golden"
FORMAT_VERSION = 1
MARGIN = 1e-3
PER_PATCH = ("patches", "conv1", "pool1", "conv2", "pool2", "features", "attention", "gated")
DEFAULT_BOXES = [tuple(float(v) for v in FACE_BOX), (90.5, 108.25, 230.75, 240.5)]


def run_face(net, weights, image, box):
    """The float64 PyTorch cascade on one face, on musica_ref's pyramid. Returns a dict of arrays."""
    frame = geometry.face_frame(geometry.check_box(box, image.shape))
    levels = build_pyramid(image, frame)
    init0 = geometry.initial_shape(weights.mean_shape, frame)
    with torch.no_grad():
        out = net(canvases(levels), torch.from_numpy(init0[None]), keep=True)
    shapes = out["shapes"][:, 0].numpy()
    return {"frame": frame, "levels": levels, "init0": init0, "trace": out["trace"],
            "landmarks": np.stack([geometry.level_to_image(s, frame, 0) for s in shapes]),
            "errors": out["errors"][:, 0].numpy()}


def min_margin(res) -> float:
    c = np.concatenate([t["centres"][0].numpy().ravel() for t in res["trace"]])
    return float(np.min(np.abs(c - np.round(c))))


def is_current(golden: Path, weights: Path) -> bool:
    """True if `golden` exists and was written from these weights (its weights_sha256 matches)."""
    if not golden.is_file():
        return False
    import h5py
    with h5py.File(golden, "r") as f:
        return f.attrs.get("weights_sha256") == hashlib.sha256(weights.read_bytes()).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every weights/*.h5 -> tests/golden/*.h5")
    ap.add_argument("--force", action="store_true", help="with --all: rewrite golden files that are current")
    ap.add_argument("--weights")
    ap.add_argument("--out")
    ap.add_argument("--image", default=str(ROOT / "examples" / "face.png"),
                    help="a synthetic or public-domain image (never one of ../shared/data)")
    ap.add_argument("--boxes", default=";".join(",".join(map(str, b)) for b in DEFAULT_BOXES),
                    help="x0,y0,x1,y1;x0,y0,x1,y1;...")
    a = ap.parse_args(argv)
    if a.all == bool(a.weights or a.out) or (not a.all and not (a.weights and a.out)):
        ap.error("give --all, or --weights and --out")
    if a.all:
        for w in sorted((ROOT / "weights").glob("*.h5")):
            out = ROOT / "tests" / "golden" / w.name
            if is_current(out, w) and not a.force:
                print(f"{out.relative_to(ROOT)} is current for {w.name}: kept")
                continue
            write(w, out, a.image, a.boxes)
    else:
        write(Path(a.weights), Path(a.out), a.image, a.boxes)


def write(weights_path: Path, out: Path, image_path, boxes_text):
    """The golden file of one weights file."""
    a = argparse.Namespace(weights=str(weights_path), out=str(out), image=image_path, boxes=boxes_text)
    weights = m.load_weights(a.weights)
    net = from_weights(weights, torch.float64)
    image = m.load_image(a.image)
    if image.dtype != np.uint8:
        raise SystemExit("golden vectors need an 8-bit image")
    P = weights.variant.n_patches
    rows = sorted({0, P // 2, P - 1})
    import h5py
    with h5py.File(a.out, "w") as f:
        f.attrs.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, weights=Path(a.weights).name,
                       weights_sha256=hashlib.sha256(Path(a.weights).read_bytes()).hexdigest(),
                       variant=weights.variant.name, patch_rows=np.asarray(rows), torch_version=str(torch.__version__),
                       created=time.strftime("%Y-%m-%d %H:%M:%S"), dtype="float64 reference, stored float32")
        f.create_dataset("image", data=image, compression="gzip")
        boxes = [tuple(float(v) for v in b.split(",")) for b in a.boxes.split(";")]
        for k, box in enumerate(boxes):
            for nudge in range(20):               # move the box by 1/7 px until no centre is near a boundary
                b = tuple(v + nudge / 7.0 for v in box)
                res = run_face(net, weights, image, b)
                if min_margin(res) >= MARGIN:
                    break
            else:
                raise SystemExit(f"box {box}: every nudge leaves a patch centre within {MARGIN} px of a boundary")
            g = f.create_group(f"face_{k}")
            g["box"] = np.asarray(b)
            for L, lv in enumerate(res["levels"]):
                g.create_dataset(f"level_{L}", data=lv, compression="gzip")
            g["init0"] = res["init0"]
            for i, t in enumerate(res["trace"]):
                gi = g.create_group(f"iteration_{i}")
                gi["centres"] = t["centres"][0].numpy()
                for name in PER_PATCH:
                    gi.create_dataset(name, data=t[name].numpy()[rows].astype(np.float32), compression="gzip")
                gi["hidden"] = t["hidden"][0].numpy().astype(np.float32)
                gi["out"] = t["out"][0].numpy().astype(np.float32)
            g["landmarks"] = res["landmarks"]
            g["errors"] = res["errors"]
            print(f"face {k}: box {b}, closest centre to a pixel boundary {min_margin(res):.4f} px, "
                  f"errors {np.round(res['errors'], 4).tolist()}")
        f.attrs["n_faces"] = len(boxes)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
