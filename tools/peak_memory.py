"""Peak memory of one face in a large photo: `musica-ref predict` in child processes, on a drawn face
(examples/face.png, enlarged) in the middle of an N x N photo written to a temporary folder, against the
same command on the small example. Each child reports its own peak resident memory (ru_maxrss). Prints the
machine it ran on.

    python tools/peak_memory.py [--size 12000] [--face 2000] [--format jpg] [--model musica68]

The increase over the small example is given in full-size RGB copies of the photo (N * N * 3 bytes); Pillow
holds a decoded RGB image in 4 bytes a pixel, so reading the file costs 4/3 of a copy on its own while it
is converted.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.numba_cache import use_keyed_cache  # noqa: E402

use_keyed_cache()                   # before numba and musica_ref: never a stale compiled kernel
from tools.make_example import FACE_BOX  # noqa: E402
from tools.time_predict import machine  # noqa: E402

EXAMPLE = ROOT / "examples" / "face.png"

CHILD = r"""
import json, resource, sys
from musica_ref import cli
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(args) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"child failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def make_photo(folder, size, face, fmt):
    """An N x N photo, grey with the example face enlarged to `face` pixels in the middle; its face box."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    small = Image.open(EXAMPLE).convert("RGB")
    k = face / small.size[0]
    photo = Image.new("RGB", (size, size), (118, 121, 117))
    x0 = y0 = (size - face) // 2
    photo.paste(small.resize((face, face), Image.BILINEAR), (x0, y0))
    path = os.path.join(folder, f"photo.{fmt}")
    photo.save(path, quality=90) if fmt == "jpg" else photo.save(path)
    box = [x0 + k * v for v in FACE_BOX[:2]] + [x0 + k * v for v in FACE_BOX[2:]]
    return path, box


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=12000, help="the photo's side in pixels")
    ap.add_argument("--face", type=int, default=2000, help="the drawn head's side in the photo, in pixels")
    ap.add_argument("--format", choices=("jpg", "png"), default="jpg")
    ap.add_argument("--model", default="musica68")
    a = ap.parse_args(argv)
    if not 320 <= a.face <= a.size:
        ap.error("--face must be from 320 to --size")
    with tempfile.TemporaryDirectory() as tmp:
        photo, box = make_photo(tmp, a.size, a.face, a.format)
        limit = str(a.size * a.size + 1)
        common = ["predict", "--model", a.model, "--out", os.path.join(tmp, "out.json")]
        run(common + [str(EXAMPLE), "--box", ",".join(map(str, FACE_BOX))])     # compiles, if the cache is cold
        base = run(common + [str(EXAMPLE), "--box", ",".join(map(str, FACE_BOX))])
        rows = [("the example (320 x 320), --box", base)]
        big = common + [photo, "--box", ",".join(f"{v:.1f}" for v in box), "--max-pixels", limit]
        rows.append((f"{a.size} x {a.size} {a.format}, --box", run(big)))
        rows.append((f"{a.size} x {a.size} {a.format}, --box, --overlay (jpg)",
                     run(big + ["--overlay", os.path.join(tmp, "overlay.jpg")])))
    copy_mb = a.size * a.size * 3 / 2 ** 20
    print(f"one full-size RGB copy of the photo: {copy_mb:.0f} MB; face box {[round(v) for v in box]}")
    print("| run | peak resident memory (MB) | over the example, in full-size copies |")
    print("|---|---|---|")
    for name, r in rows:
        over = (r["peak_mb"] - base["peak_mb"]) / copy_mb
        print(f"| {name} | {r['peak_mb']:.0f} | {over:.2f} |")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
