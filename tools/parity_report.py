"""Largest differences, per named tensor, between the Numba engine (float32) and the trainer's PyTorch model
(float64) on the same inputs, over random faces and weights of several variants.

    python tools/parity_report.py [--weights FILE ...] [--faces 5]

Without --weights it uses random weights of musica68, musica19 and musica49. Needs PyTorch.
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                  # noqa: E402
from musica_ref import geometry                         # noqa: E402
from musica_ref.network import INTERMEDIATES            # noqa: E402
from tools.trainer.model import canvases, from_weights  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="*")
    ap.add_argument("--faces", type=int, default=5)
    a = ap.parse_args()
    models = ([m.load_weights(w) for w in a.weights] if a.weights else
              [m.random_weights(m.get_variant(v), seed=1) for v in ("musica68", "musica19", "musica49")])
    rng = np.random.default_rng(0)
    for w in models:
        engine, net = m.MuSiCa(w), from_weights(w, torch.float64)
        worst = defaultdict(lambda: [0.0, 0.0])          # name -> [max abs, max abs / tensor scale]
        skipped = 0
        for _ in range(a.faces):
            img = rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)
            x0, y0, s = rng.uniform(20, 90), rng.uniform(20, 70), rng.uniform(60, 150)
            box = (x0, y0, x0 + s, y0 + s * rng.uniform(0.8, 1.25))
            res, trace = engine.trace(img, box)
            frame = geometry.face_frame(box)
            canv = canvases([t["level_image"] for t in sorted(trace, key=lambda t: t["level"])])
            with torch.no_grad():
                out = net(canv, torch.from_numpy(geometry.initial_shape(w.mean_shape, frame)[None]), keep=True)
            if any(not np.array_equal(np.floor(t["centres"][0]), np.floor(r["centres"][0].numpy()))
                   for t, r in zip(trace, out["trace"])):
                skipped += 1                            # a float32/float64 tie at a pixel boundary
                continue
            for i, (t, r) in enumerate(zip(trace, out["trace"])):
                for name in ("centres", "patches") + INTERMEDIATES:
                    got = np.asarray(t[name], np.float64)
                    want = r[name].numpy().reshape(got.shape)
                    d = float(np.abs(got - want).max())
                    sc = max(1e-12, float(np.abs(want).max()))
                    worst[name][0] = max(worst[name][0], d)
                    worst[name][1] = max(worst[name][1], d / sc)
            lm = geometry.image_to_level(res.history, frame, 0) - out["shapes"][:, 0].numpy()
            worst["landmarks (level-0 px)"][0] = max(worst["landmarks (level-0 px)"][0], float(np.abs(lm).max()))
            e = float(np.abs(res.errors - out["errors"][:, 0].numpy()).max())
            worst["error estimates"][0] = max(worst["error estimates"][0], e)
        print(f"{w.variant.name}: {a.faces - skipped} faces compared ({skipped} skipped for a pixel-boundary tie)")
        print(f"  {'tensor':<24} {'max |diff|':>11} {'max |diff| / max |ref|':>24}")
        for name, (d, rel) in worst.items():
            print(f"  {name:<24} {d:>11.3g} " + (f"{rel:>24.3g}" if name in INTERMEDIATES + ("centres", "patches")
                                                 else f"{'-':>24}"))


if __name__ == "__main__":
    main()
