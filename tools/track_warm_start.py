"""Can a tracked face skip iterations? The cascade run from the previous frame's landmarks instead of the
mean shape in the box, on the moving-face sequences of tools/track_bench.py.

    python tools/track_warm_start.py --data ../shared/data/val_merl_aflw.h5 [--model musica19] [--faces 8]

Each frame's box is the tight box of the previous frame's landmarks (as the Tracker does); the first frame
runs from the ground truth's tight box. Ways of running a frame, each on the same sequences:

- full: the whole cascade from the mean shape in the box (what the Tracker does);
- from iteration 1, 2 (of 0, 1, 2): only the later iterations, from the previous frame's landmarks, with the
  recurrent state zero or the one the previous frame had entering that iteration;
- all iterations from the previous landmarks: the whole cascade, the previous landmarks in place of the
  mean shape.

A frame whose landmarks are off by more than half the box is counted lost and the next frame starts again
from the ground truth's box. Prints NME_box of the other frames and the machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.numba_cache import use_keyed_cache  # noqa: E402

use_keyed_cache()

import musica_ref as m                                          # noqa: E402
from musica_ref import geometry                                 # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402
from musica_ref.detect import DlibDetector                      # noqa: E402
from musica_ref.network import HIDDEN, iteration_forward_levels  # noqa: E402
from musica_ref.pyramid import Pyramids                         # noqa: E402
from tools.time_predict import machine                          # noqa: E402
from tools.track_bench import LOST, nme, sequence               # noqa: E402


def run_from(model, rgb, box, start_shape, h, first):
    """Iterations first .. 2 of the cascade on one face, starting from start_shape (image (N, 2); None: the
    mean shape in the box) and recurrent state h ((1, 512); None: zeros). Returns (landmarks, {iteration:
    the state entering it})."""
    frame = geometry.face_frame(box)
    pyramids = Pyramids([frame])
    pyramids.fill(rgb, [0])
    n, idx = model.n_landmarks, model.patch_indices
    init0 = (geometry.initial_shape(model.mean_shape, frame) if start_shape is None
             else geometry.image_to_level(start_shape, frame, 0))
    d = np.zeros((n, 2))
    h = np.zeros((1, HIDDEN), np.float32) if h is None else h
    states = {}
    for i in range(first, len(geometry.ITERATION_LEVELS)):
        states[i] = h
        L = geometry.ITERATION_LEVELS[i]
        corners = geometry.patch_corners(init0[idx] / 2 ** L + d[idx])[None]
        out, h = iteration_forward_levels(pyramids.data, pyramids.offsets[[0], L], pyramids.shapes[[0], L],
                                          corners, h, model.weights.iterations[i], None, model._features[i])
        d += out[0, :2 * n].reshape(n, 2)
        landmarks = geometry.level_to_image(init0 / 2 ** L + d, frame, L)
        d *= 2
    return landmarks, states


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="musica19")
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40)
    a = ap.parse_args(argv)
    model = m.MuSiCa.load(a.model)
    faces = FaceSet(a.data)
    rng = np.random.default_rng(0)
    probe = DlibDetector()
    picked = [i for i in rng.permutation(len(faces))[:8 * a.faces] if probe(faces.image(int(i)))][:a.faces]
    seqs = [sequence(faces.image(int(i)), faces.landmarks[int(i)], a.frames, "move", rng) for i in picked]
    ways = [("full (the Tracker)", 0, False, False), ("from iteration 1, state zero", 1, True, False),
            ("from iteration 1, previous state", 1, True, True), ("from iteration 2, state zero", 2, True, False),
            ("from iteration 2, previous state", 2, True, True), ("all iterations from the previous landmarks", 0, True, False)]
    print(f"{len(seqs)} sequences of {a.frames} frames from {Path(a.data).name}, {a.model}")
    print("| way | NME_box % | frames lost |\n|---|---|---|")
    for name, first, warm, keep_state in ways:
        errors, lost = [], 0
        for frames, truths in seqs:
            landmarks, states = run_from(model, frames[0], geometry.tight_box(truths[0]), None, None, 0)
            for frame, truth in zip(frames[1:], truths[1:]):
                start = landmarks if warm else None
                h = states.get(first) if keep_state else None
                landmarks, new = run_from(model, frame, geometry.tight_box(landmarks), start, h, first)
                states.update(new)
                e = nme(landmarks, truth)
                if e > LOST:                    # lost: start again from the true box
                    lost += 1
                    landmarks, states = truth, {}
                else:
                    errors.append(e)
        print(f"| {name} | {100 * np.mean(errors):.3f} | {lost} |")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
