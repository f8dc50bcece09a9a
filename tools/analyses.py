"""The paper's analyses reproduced on our data: each subcommand writes a table (text) and a plot (PNG).

    python tools/analyses.py early-exit --weights weights/musica68.h5 [weights/musica19.h5 ...] \
        --data ../shared/data/val_merl_aflw.h5 --out runs/analyses
    python tools/analyses.py attention --weights weights/musica68.h5 --data ... --out runs/analyses
    python tools/analyses.py estimate --weights weights/musica68.h5 --data ... --out runs/analyses
    python tools/analyses.py regions --weights weights/musica68.h5 --data ../shared/data/test_aflw2000.h5
    python tools/analyses.py hidden-fill --data ../shared/data/train_merl_aflw.h5

early-exit (Figures 2 and 7): one run with every iteration gives each face's landmarks and error estimate
after every iteration, from which any Ts is simulated exactly as the engine stops (first iteration with
E < Ts, else the last; one Ts is re-run through the engine to check). For a sweep of Ts: mean iterations,
mean multiply-adds and NME for our policy, for the random policy with the same histogram of iteration counts
(50 repeats) and for the oracle (the true error instead of E); per variant the NME-against-multiply-adds curve
and the operating point that halves the average iterations, with its NME cost.
attention (Figure 6): the average patch-attention weight of each patch, drawn at its landmark's mean-face
position, one panel per iteration.
estimate: how well E(i) predicts the true error (Pearson and Spearman correlation per iteration), and how
often failure (E > Tf) flags the faces that really fail (true NME_io > 10%) for a sweep of Tf.
regions (sets with poses): NME_box per landmark group and |yaw| bin, each side's jaw, brow and eye apart
(the far side is the one the face turns away from), so that the error of points hidden at large yaw shows.
hidden-fill (no weights): how well tools/trainer/data.fill_hidden places points that have no location,
checked on the fully located faces that are turned most, with their far-side jaw (0-7 or 9-16) taken away;
against the mean shape fitted to the remaining points by a similarity transform.

NME here is NME_box unless a flag says otherwise; the error estimate's own target is the eye-corner NME
(with the fallback for faces without both corners, musica_ref.metrics.error_normaliser).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                          # noqa: E402
from musica_ref import geometry, metrics, opcount               # noqa: E402
from tools.plot import line_chart, patch_map                    # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402
from musica_ref.metrics import error_normaliser as normaliser   # noqa: E402


def full_runs(model, faces, batch=32):
    """Every iteration of every face: NME_box (n, 3), true eye-corner error (n, 3), estimates E (n, 3)."""
    n = len(faces)
    nme_box, nme_eye, est = np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3))
    for k in range(0, n, batch):
        sel = list(range(k, min(n, k + batch)))
        res = model.predict_batch([faces.image(i) for i in sel], [faces.boxes[i] for i in sel])
        for i, r in zip(sel, res):
            gt, vis = faces.landmarks[i], faces.visible[i]
            norm_box = metrics.normalisers(gt, vis)["box"]
            norm_eye = normaliser(gt, vis)
            for it in range(3):
                e = np.nanmean(metrics.point_errors(r.history[it], gt, vis))
                nme_box[i, it], nme_eye[i, it] = e / norm_box, e / norm_eye
            est[i] = r.errors
        print(f"\r{sel[-1] + 1}/{n} faces", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return nme_box, nme_eye, est


def stop_iteration(scores, ts):
    """Index of the iteration each face stops at: the first with score < ts, else the last (ts = 0: last)."""
    below = (scores < ts) & (ts > 0)
    return np.where(below.any(1), below.argmax(1), scores.shape[1] - 1)


def sweep(nme, est, truth, macs_per_it, rng, thresholds, repeats=50):
    """Per Ts: our policy (stop on E), the random policy with the same histogram of iteration counts, and
    the oracle (stop on `truth`, the true value of what E estimates); NME reported is `nme`."""
    rows = []
    n = len(nme)
    for ts in thresholds:
        stop = stop_iteration(est, ts)
        ours = nme[np.arange(n), stop].mean()
        rand = np.mean([nme[np.arange(n), rng.permutation(stop)].mean() for _ in range(repeats)])
        oracle_stop = stop_iteration(truth, ts)
        rows.append({"ts": ts, "iterations": stop.mean() + 1, "macs_M": (stop.mean() + 1) * macs_per_it / 1e6,
                     "nme": ours, "nme_random": rand, "oracle_iterations": oracle_stop.mean() + 1,
                     "nme_oracle": nme[np.arange(n), oracle_stop].mean()})
    return rows


def cmd_early_exit(a, faces, out):
    rng = np.random.default_rng(0)
    lines, fig7 = [], []
    for wpath in a.weights:
        model = m.MuSiCa.load(wpath)
        v = model.weights.variant
        per_it = opcount.total_macs(v.n_landmarks, v.n_patches, iterations=1)
        nme, truth, est = full_runs(model, faces)
        ths = np.unique(np.concatenate([[0.0], np.quantile(est, np.linspace(0.02, 1.0, 40)) + 1e-9]))
        ths = ths[ths >= 0]
        rows = sweep(nme, est, truth, per_it, rng, ths)
        # check the simulation against the engine itself at one threshold
        ts_check = float(np.median(est[:, 0]))
        if ts_check > 0:
            sub = list(range(min(64, len(faces))))
            res = model.predict_batch([faces.image(i) for i in sub], [faces.boxes[i] for i in sub], ts=ts_check)
            sim = stop_iteration(est[sub], ts_check) + 1
            assert [r.iterations for r in res] == sim.tolist(), "simulated early exit differs from the engine"
        base = rows[0]
        half = min(rows, key=lambda r: abs(r["iterations"] - 2.0) if r["iterations"] <= 2.0 else 9)
        ok30 = [r for r in rows if r["macs_M"] <= 0.7 * base["macs_M"] and r["nme"] <= 1.02 * base["nme"]]
        lines += [f"## {v.name} ({Path(wpath).name}) on {Path(a.data).name}, {len(faces)} faces",
                  f"{'Ts %':>7} {'iters':>6} {'MMA':>7} {'NME_box %':>9} {'random %':>9} {'oracle it.':>10} "
                  f"{'oracle %':>9}"]
        for r in rows:
            lines.append(f"{r['ts'] * 100:>7.2f} {r['iterations']:>6.3f} {r['macs_M']:>7.2f} {r['nme'] * 100:>9.3f} "
                         f"{r['nme_random'] * 100:>9.3f} {r['oracle_iterations']:>10.3f} {r['nme_oracle'] * 100:>9.3f}")
        lines.append(f"all iterations: {base['macs_M']:.2f} M MA, NME_box {base['nme'] * 100:.3f}%")
        lines.append(f"halving the average iterations (Ts = {half['ts'] * 100:.2f}%): {half['iterations']:.2f} "
                     f"iterations, {half['macs_M']:.2f} M MA, NME_box {half['nme'] * 100:.3f}% "
                     f"({(half['nme'] / base['nme'] - 1) * 100:+.1f}% relative)")
        if ok30:
            best = min(ok30, key=lambda r: r["macs_M"])
            lines.append(f"largest saving within 2% relative NME: Ts = {best['ts'] * 100:.2f}%, "
                         f"{(1 - best['macs_M'] / base['macs_M']) * 100:.1f}% fewer multiply-adds, NME_box "
                         f"{best['nme'] * 100:.3f}% ({(best['nme'] / base['nme'] - 1) * 100:+.2f}%)")
        else:
            lines.append("no threshold saves 30% of the multiply-adds within 2% relative NME")
        lines.append("")
        line_chart(out / f"fig2-{v.name}.png",
                   [("ours (E)", [r["iterations"] for r in rows], [r["nme"] * 100 for r in rows]),
                    ("random, same histogram", [r["iterations"] for r in rows], [r["nme_random"] * 100 for r in rows]),
                    ("oracle (true error)", [r["oracle_iterations"] for r in rows], [r["nme_oracle"] * 100 for r in rows])],
                   title=f"Early exit, {v.name}, {Path(a.data).name}", xlabel="mean iterations", ylabel="NME_box (%)")
        fig7.append((v.name, [r["macs_M"] for r in rows], [r["nme"] * 100 for r in rows]))
    line_chart(out / "fig7.png", fig7, title=f"NME vs multiply-adds across Ts, {Path(a.data).name}",
               xlabel="multiply-adds (M)", ylabel="NME_box (%)")
    (out / "early-exit.txt").write_text("\n".join(lines))
    print("\n".join(lines))


def cmd_attention(a, faces, out):
    model = m.MuSiCa.load(a.weights[0])
    v = model.weights.variant
    acc = np.zeros((3, v.n_patches))
    for i in range(len(faces)):
        _, trace = model.trace(faces.image(i), faces.boxes[i])
        for it, t in enumerate(trace):
            acc[it] += t["attention"].mean(1)
        print(f"\r{i + 1}/{len(faces)} faces", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    acc /= len(faces)
    pos = model.mean_shape[model.patch_indices]
    lines = [f"average attention weight per patch, {v.name}, {len(faces)} faces of {Path(a.data).name}",
             "patch landmark  " + "  ".join(f"it{i}" for i in range(3))]
    patch_map(out / f"fig6-{v.name}.png", pos, acc,
              [f"iteration {it} (level {geometry.ITERATION_LEVELS[it]})" for it in range(3)],
              "mean attention weight", geometry.BB_SIZE)
    for p, lm in enumerate(model.patch_indices):
        lines.append(f"{p:>5} {lm:>8}  " + "  ".join(f"{acc[it, p]:.3f}" for it in range(3)))
    (out / f"attention-{v.name}.txt").write_text("\n".join(lines))
    print("\n".join(lines[:2] + lines[2:12] + ["..."]))


def cmd_estimate(a, faces, out):
    from scipy.stats import pearsonr, spearmanr
    model = m.MuSiCa.load(a.weights[0])
    _, nme_eye, est = full_runs(model, faces)
    lines = [f"error estimate of {model.weights.variant.name} on {len(faces)} faces of {Path(a.data).name}"]
    for it in range(3):
        lines.append(f"iteration {it}: Pearson {pearsonr(est[:, it], nme_eye[:, it])[0]:.3f}, Spearman "
                     f"{spearmanr(est[:, it], nme_eye[:, it])[0]:.3f}, mean E {est[:, it].mean() * 100:.2f}% vs "
                     f"mean true {nme_eye[:, it].mean() * 100:.2f}%")
    fail = nme_eye[:, -1] > 0.10
    lines.append(f"faces that really fail (true eye-corner NME > 10% after the last iteration): {fail.sum()}")
    lines.append(f"{'Tf %':>6} {'flagged':>8} {'precision':>9} {'recall':>7}")
    pr = []
    for tf in np.linspace(0.02, 0.2, 19):
        flag = est[:, -1] > tf
        prec = (flag & fail).sum() / max(flag.sum(), 1)
        rec = (flag & fail).sum() / max(fail.sum(), 1)
        pr.append((rec, prec))
        lines.append(f"{tf * 100:>6.1f} {flag.sum():>8d} {prec:>9.3f} {rec:>7.3f}")
    (out / "estimate.txt").write_text("\n".join(lines))
    line_chart(out / "estimate.png", [("E(last) vs true error", nme_eye[:, -1] * 100, est[:, -1] * 100, "points")],
               title="error estimate against true error", xlabel="true NME (%)", ylabel="estimated E (%)")
    print("\n".join(lines))


# landmark groups of the 68-point scheme: (name, points on the image's left, points on its right or None)
REGIONS = [("jaw", range(0, 8), range(9, 17)), ("brow", range(17, 22), range(22, 27)),
           ("eye", range(36, 42), range(42, 48)), ("nose", range(27, 36), None), ("mouth", range(48, 68), None)]


def nose_position(landmarks) -> np.ndarray:
    """Where the nose tip (30) lies between the jaw ends 0 and 16 along x, per face: about 0.5 for a frontal
    face, below it when the face turns so that its image-left side (points 0-7) recedes (the far side)."""
    L = np.asarray(landmarks)
    return (L[:, 30, 0] - L[:, 0, 0]) / np.maximum(L[:, 16, 0] - L[:, 0, 0], 1e-6)


def cmd_regions(a, faces, out):
    from musica_ref.evaluate import evaluate
    if faces.pose is None or faces.n_landmarks != 68:
        raise SystemExit("regions needs a 68-point set with poses (pitch, yaw, roll), e.g. test_aflw2000.h5")
    model = m.MuSiCa.load(a.weights[0])
    preds = evaluate(model, faces, 0.0, float("inf"), 32, progress=True).predictions
    err = np.stack([metrics.point_errors(p, g, v) / metrics.normalisers(g, v)["box"]
                    for p, g, v in zip(preds, faces.landmarks, faces.visible)]) * 100      # (n, 68), % of box
    yaw = faces.pose[:, 1]
    nose_left = nose_position(faces.landmarks) < 0.5              # the image's left side is the far one
    lines = [f"NME_box (%) per landmark group of {model.weights.variant.name} on {len(faces)} faces of "
             f"{Path(a.data).name}, by |yaw|; far = the side the face turns away from",
             f"{'|yaw|':>8} {'faces':>5} {'all':>6} " + " ".join(
                 f"{n + (' far' if r else ''):>9}" + (f" {n + ' near':>9}" if r else "") for n, _, r in REGIONS)]
    bins = metrics.yaw_bin(yaw)                      # the evaluation's bins (|yaw| > 90 counts in the last)
    for k, (lo, hi) in enumerate(metrics.YAW_BINS):
        sel = bins == k
        row = f"{lo:>3.0f}-{min(hi, 90):<4.0f} {int(sel.sum()):>5} {np.nanmean(err[sel]):>6.2f} "
        for name, left, right in REGIONS:
            if right is None:
                row += f"{np.nanmean(err[sel][:, list(left)]):>9.2f} "
                continue
            far = np.concatenate([err[i, list(left if nose_left[i] else right)] for i in np.flatnonzero(sel)])
            near = np.concatenate([err[i, list(right if nose_left[i] else left)] for i in np.flatnonzero(sel)])
            row += f"{np.nanmean(far):>9.2f} {np.nanmean(near):>9.2f} "
        lines.append(row.rstrip())
    (out / f"regions-{model.weights.variant.name}.txt").write_text("\n".join(lines))
    print("\n".join(lines))


def cmd_hidden_fill(a, faces, out):
    from tools.trainer.data import fill_hidden, shape_basis_3d, _similarity_align, mean_shape
    L, V = faces.landmarks, faces.visible
    full = np.flatnonzero(V.all(1))
    nose = nose_position(L)
    test = full[np.argsort(np.abs(nose[full] - 0.5))[-min(400, len(full) // 4):]]      # the most turned
    basis = shape_basis_3d(L[np.setdiff1d(full, test)], V[np.setdiff1d(full, test)])
    _, jaw_left, jaw_right = REGIONS[0]
    masked = V.copy()
    for i in test:
        masked[i, list(jaw_left if nose[i] < 0.5 else jaw_right)] = False
    filled = fill_hidden(L[test], masked[test], basis)[0]
    ref = mean_shape(faces)
    e3d, emean = [], []
    for k, i in enumerate(test):
        h, v = ~masked[i], masked[i]
        size = np.sqrt(np.ptp(L[i, :, 0]) * np.ptp(L[i, :, 1]))
        e3d.append(np.linalg.norm(filled[k, h] - L[i, h], axis=1).mean() / size)
        placed = _similarity_align(ref[v], L[i, v])(ref)
        emean.append(np.linalg.norm(placed[h] - L[i, h], axis=1).mean() / size)
    lines = [f"{Path(a.data).name}: {(~V).mean() * 100:.1f}% of the points have no location, on "
             f"{(~V).any(1).mean() * 100:.1f}% of the {len(V)} faces; every face has at least "
             f"{int(V.sum(1).min())} located points",
             f"far-side jaw points taken away from the {len(test)} most turned of the {len(full)} fully located "
             f"faces of {Path(a.data).name} (the basis from the other {len(full) - len(test)}); mean error of "
             f"the filled points in % of sqrt(w h) of the face's tight box:",
             f"  rank-3 3-D shape projection (fill_hidden): {np.mean(e3d) * 100:.2f}%  (median "
             f"{np.median(e3d) * 100:.2f}%)",
             f"  mean shape, similarity-fitted to the other points: {np.mean(emean) * 100:.2f}%  (median "
             f"{np.median(emean) * 100:.2f}%)"]
    (out / "hidden-fill.txt").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["early-exit", "attention", "estimate", "regions", "hidden-fill"])
    ap.add_argument("--weights", nargs="+", help="weights file(s); every command but hidden-fill needs one")
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", default="runs/analyses")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.command != "hidden-fill" and not a.weights:
        ap.error(f"{a.command} needs --weights")
    faces = FaceSet(a.data, a.limit)
    {"early-exit": cmd_early_exit, "attention": cmd_attention, "estimate": cmd_estimate, "regions": cmd_regions,
     "hidden-fill": cmd_hidden_fill}[a.command](a, faces, out)


if __name__ == "__main__":
    main()
