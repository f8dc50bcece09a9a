"""Train a MuSiCa variant and export weights that `musica_ref` loads (docs/training.md).

    python tools/train.py --variant musica68 --train ../shared/data/train_merl_aflw.h5 \
        --val ../shared/data/val_merl_aflw.h5 --minutes 60 --out weights/musica68.h5

Resumable: every epoch (and when the time budget ends) the state goes to --checkpoint, and --resume continues
from it. --init FILE.h5 warm-starts from exported weights (e.g. the committed ones) with a fresh optimiser.
Needs PyTorch (`pip install ".[train]"`); musica_ref itself never imports this.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                         # noqa: E402
from tools.trainer import data as D                            # noqa: E402
from tools.trainer.model import MuSiCaTorch, load_into, to_weights   # noqa: E402


# --- loss (docs/training.md) ---------------------------------------------------------------------------------

def loss_terms(out, gt0, visible, norm, dead_zone: float, hidden_weight: float = 0.0,
               iteration_weights=None):
    """Per iteration i: L_i = mean over visible points of the L1 point error / normaliser, errors under
    `dead_zone` counted as zero; eps_i = the true Euclidean NME (a constant for the error term);
    loss = sum_i w_i mean_batch(0.95 L_i + 0.05 |eps_i - E_i|), w_i = 1 (the paper's loss) unless
    `iteration_weights` (one per iteration) says otherwise. Returns (loss, eps (3, B)).

    hidden_weight > 0: the points without a location count in L_i too, with that weight (a weighted mean);
    their targets in gt0 must then be filled in (`data.fill_hidden`). eps_i stays over visible points."""
    vis = visible.to(out["shapes"].dtype)
    nvis = vis.sum(-1).clamp(min=1)
    diff = out["shapes"] - gt0                                   # (3, B, N, 2)
    l1 = diff.abs().sum(-1) / norm[:, None]                       # (3, B, N)
    l1 = l1 * (l1 >= dead_zone)
    pw = vis + hidden_weight * (1 - vis) if hidden_weight > 0 else vis
    L = (l1 * pw).sum(-1) / pw.sum(-1).clamp(min=1)                # (3, B)
    eps = ((diff.detach().norm(dim=-1) / norm[:, None]) * vis).sum(-1) / nvis   # (3, B)
    E = out["errors"].to(eps.dtype)
    per_iteration = (0.95 * L + 0.05 * (eps - E).abs()).mean(1)     # (3,)
    if iteration_weights is None:
        return per_iteration.sum(), eps
    w = torch.as_tensor(iteration_weights, dtype=per_iteration.dtype, device=per_iteration.device)
    return (w * per_iteration).sum(), eps


# --- batches ---------------------------------------------------------------------------------------------

class EpochBatches(torch.utils.data.Dataset):
    """Batch k of an epoch: faces order[k*B:(k+1)*B], augmented (seeded by epoch and k) and prepared."""

    def __init__(self, source, limit, mean, batch, aug: D.Augment, order, seed, faces=None, landmarks=None):
        self.source, self.limit, self.mean, self.batch, self.aug = source, limit, mean, batch, aug
        self.order, self.seed = order, seed
        self.faces = faces                         # None: opened in the worker process
        self.landmarks = landmarks                 # the targets (hidden points filled in), or the set's own

    def __len__(self):
        return len(self.order) // self.batch

    def __getitem__(self, k):
        if self.faces is None:                     # opened lazily: in the worker process
            self.faces = D.FaceSet(self.source, self.limit)
        rng = np.random.default_rng([self.seed, k])
        lm = self.faces.landmarks if self.landmarks is None else self.landmarks
        items = [D.augment(self.faces.image(i), lm[i], self.faces.visible[i],
                           self.faces.boxes[i], self.aug, rng)
                 for i in self.order[k * self.batch:(k + 1) * self.batch]]
        b = D.prepare([x[0] for x in items], [x[3] for x in items], [x[1] for x in items],
                      [x[2] for x in items], self.mean)
        return b.levels, b.init0, b.gt0, b.visible, b.norm


def to_torch(b, device, dtype=torch.float32):
    levels, init0, gt0, vis, norm = b
    t = lambda a, dt: torch.as_tensor(np.asarray(a)).to(device=device, dtype=dt)   # noqa: E731
    return [t(x, dtype) for x in levels], t(init0, torch.float64), t(gt0, torch.float64), \
        t(vis, torch.bool), t(norm, torch.float64)


def validation_batches(faces: D.FaceSet, mean, n: int, batch: int):
    idx = np.linspace(0, len(faces) - 1, min(n, len(faces))).astype(int)
    for k in range(0, len(idx), batch):
        sel = idx[k:k + batch]
        b = D.prepare([faces.image(i) for i in sel], [faces.boxes[i] for i in sel],
                      [faces.landmarks[i] for i in sel], [faces.visible[i] for i in sel], mean)
        yield b.levels, b.init0, b.gt0, b.visible, b.norm


@torch.no_grad()
def evaluate(model, val, device, dead_zone):
    """(validation loss, NME per iteration (3,)) over the batches `val`. The loss is the paper's (every
    iteration weighs 1, the located points only) whatever the run's --iteration-weights and --hidden-weight,
    so the validation losses of runs with different options compare."""
    model.eval()
    tot, nme, n = 0.0, np.zeros(3), 0
    for b in val:
        lv, i0, g, v, nr = to_torch(b, device)
        out = model(lv, i0)
        loss, eps = loss_terms(out, g, v, nr, dead_zone)
        tot += float(loss) * len(i0)
        nme += eps.sum(1).cpu().numpy()
        n += len(i0)
    model.train()
    return tot / n, nme / n


# --- EMA -------------------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of the parameters, decay min(decay, (1 + t) / (10 + t)) at step t."""

    def __init__(self, model, decay):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model, step):
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except OSError:
        return "unknown"


# --- main ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", help="musica68, musica34, musica19, musica98, musica49")
    ap.add_argument("--landmarks", type=int, help="custom variant: N (with --patches)")
    ap.add_argument("--patches", help="custom variant: comma-separated 0-based patch indices")
    ap.add_argument("--train", required=True, help="HDF5 set (../shared/data layout) or 300W-style folder")
    ap.add_argument("--val", help="validation set (same forms)")
    ap.add_argument("--limit", type=int, help="use only the first LIMIT training faces")
    ap.add_argument("--val-faces", type=int, default=600, help="validation faces per epoch (evenly spaced)")
    ap.add_argument("--out", required=True, help="exported weights file (.h5)")
    ap.add_argument("--float16", action="store_true", help="export tensors as float16")
    ap.add_argument("--checkpoint", help="training state file (default: OUT.ckpt)")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    ap.add_argument("--init", help="warm start from an exported weights file")
    ap.add_argument("--minutes", type=float, default=60.0, help="time budget of this run")
    ap.add_argument("--epochs", type=int, default=100, help="total epochs (across resumed runs)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-steps", default="", help="epochs at which the learning rate drops x0.1, e.g. 30,45")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--hidden-weight", type=float, default=0.0,
                    help="weight in the loss of the self-occluded points (no location in the set), filled in "
                         "where the faces' 3-D shape projects them (data.fill_hidden); 0: left out")
    ap.add_argument("--iteration-weights", default="",
                    help="comma-separated weight of each iteration's term in the loss (default: 1 each, the "
                         "paper's loss); more weight on the early iterations trades final accuracy for early exit")
    ap.add_argument("--dead-zone", type=float, default=0.002, help="per-point normalised L1 errors below it count as 0")
    ap.add_argument("--no-gdb", action="store_true", help="no Generalized Data Balancing (uniform sampling)")
    ap.add_argument("--gdb-variance", type=float, default=0.95, help="GDB keeps the PCA components up to this variance")
    for f in D.Augment.__dataclass_fields__.values():
        ap.add_argument("--aug-" + f.name.replace("_", "-"), type=float, default=f.default, dest="aug_" + f.name)
    ap.add_argument("--no-augment", action="store_true", help="switch every augmentation off")
    ap.add_argument("--workers", type=int, default=0,
                    help="data-preparation processes (0: in the main process; on 2 cores a worker beside "
                         "torch's 2 threads oversubscribes them and runs 3-4x slower)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", help="JSON-lines log of every epoch (default: OUT.log.jsonl)")
    return ap.parse_args(argv)


def make_variant(a):
    if a.variant:
        return m.get_variant(a.variant)
    if not a.landmarks:
        raise SystemExit("give --variant NAME or --landmarks N [--patches i,j,...]")
    idx = [int(x) for x in a.patches.split(",")] if a.patches else None
    return m.custom_variant(a.landmarks, idx)


N_ITERATIONS = len(m.geometry.ITERATION_LEVELS)


def parse_iteration_weights(text: str):
    """'' -> None (every iteration weighs 1); '2,2,1' -> [2.0, 2.0, 1.0]: one finite weight >= 0 per
    iteration, not all 0."""
    if not text:
        return None
    try:
        w = [float(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"--iteration-weights: {text!r} is not a comma-separated list of numbers") from None
    if len(w) != N_ITERATIONS or not all(math.isfinite(x) and x >= 0 for x in w) or not any(w):
        raise SystemExit(f"--iteration-weights: give {N_ITERATIONS} finite weights >= 0, not all 0 (got {text!r})")
    return w


def main(argv=None):
    a = parse_args(argv)
    iteration_weights = parse_iteration_weights(a.iteration_weights)
    t_start = time.time()
    commit = git_commit()                          # the code this run starts with (exports come later)
    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    variant = make_variant(a)
    ckpt_path = a.checkpoint or a.out + ".ckpt"
    log_path = a.log or a.out + ".log.jsonl"
    aug = D.Augment.off() if a.no_augment else D.Augment(**{k[4:]: v for k, v in vars(a).items() if k.startswith("aug_")})

    train = D.FaceSet(a.train, a.limit)
    if train.n_landmarks != variant.n_landmarks:
        raise SystemExit(f"{a.train} has {train.n_landmarks} landmarks, the variant {variant.n_landmarks}")
    mean = D.mean_shape(train)
    targets, fitted = None, None                   # None: the set's own landmarks (hidden points left out)
    if a.hidden_weight > 0:
        targets, fitted = D.fill_hidden(train.landmarks, train.visible,
                                        D.shape_basis_3d(train.landmarks, train.visible))
        print(f"hidden points: {int((~train.visible[fitted]).sum())} filled in by the rank-3 shape of "
              f"{int(train.visible.all(1).sum())} fully located faces, weight {a.hidden_weight} in the loss; "
              f"{int((~fitted).sum())} faces with too few located points to fit are not drawn", flush=True)
    if a.no_gdb:
        weights, K = np.ones(len(train)), None
    else:
        weights, K, _ = D.gdb_weights(train, a.gdb_variance)
    if fitted is not None:
        weights = np.where(fitted, weights, 0.0)   # their hidden rows hold no targets
    print(f"train: {len(train)} faces from {a.train}; GDB: "
          + ("off" if K is None else f"K = {K} components ({a.gdb_variance:.0%} of variance), faces drawn with probability "
             f"in proportion to their Mahalanobis distance d (weight d / mean d: {weights.min():.2f}.."
             f"{weights.max():.2f})"), flush=True)

    model = MuSiCaTorch(variant, mean).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    ema = EMA(model, a.ema)
    epoch, step, history = 0, 0, []
    trained_s = 0.0                                # seconds spent in completed epochs (validation included)
    # the training before this run's epoch 0 (a warm start), carried into the exported provenance
    before = {"from": "none", "epochs": 0, "steps": 0, "minutes": 0.0}
    if a.resume and os.path.exists(ckpt_path):
        st = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(st["model"])
        ema.model.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        epoch, step, history = st["epoch"], st["step"], json.loads(st["history"])
        trained_s = float(st.get("trained_s", 0.0))
        before = json.loads(st.get("before", json.dumps(before)))
        print(f"resumed from {ckpt_path}: epoch {epoch}, step {step}", flush=True)
    elif a.init:
        w = m.load_weights(a.init)
        load_into(model, w)
        load_into(ema.model, w)
        p = w.provenance
        before = {"from": f"{a.init} (git commit {p.get('git_commit', '?')})",
                  "epochs": int(p.get("total_epochs", p.get("epochs", 0))),
                  "steps": int(p.get("total_steps", p.get("steps", 0))),
                  "minutes": float(p.get("total_training_minutes", p.get("training_minutes", 0.0)))}
        print(f"warm start from {a.init} ({before['epochs']} epochs before)", flush=True)
    model.mean_shape.copy_(torch.as_tensor(mean))
    ema.model.mean_shape.copy_(torch.as_tensor(mean))
    val_faces = D.FaceSet(a.val) if a.val else None
    lr_steps = [int(x) for x in a.lr_steps.split(",") if x]

    def save_state():
        torch.save({"model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": epoch, "step": step, "history": json.dumps(history), "trained_s": trained_s,
                    "before": json.dumps(before)}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)

    def export(val_nme):
        prov = {"data": os.path.basename(a.train), "data_terms": "non-commercial research only (AFLW)",
                "faces": len(train), "epochs": epoch, "steps": step, "batch": a.batch,
                "validation_set": os.path.basename(a.val) if a.val else "none",
                "validation_nme_io": float(val_nme) if val_nme is not None else float("nan"),
                "validation_faces": min(a.val_faces, len(val_faces)) if val_faces else 0,
                "gdb_components": -1 if K is None else K, "augmentation": json.dumps(vars(aug)),
                "dead_zone": a.dead_zone, "hidden_weight": a.hidden_weight,
                "iteration_weights": ",".join(f"{x:g}" for x in iteration_weights or [1.0] * N_ITERATIONS),
                "hidden_points": ("filled in by the rank-3 3-D shape projection (tools/trainer/data.fill_hidden)"
                                  if a.hidden_weight > 0 else "left out of the loss"),
                "ema_decay": a.ema, "git_commit": commit,
                "trainer": "tools/train.py", "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
                "lr": a.lr, "lr_steps": a.lr_steps, "training_minutes": round(trained_s / 60, 1),
                "warm_start": before["from"], "total_epochs": before["epochs"] + epoch,
                "total_steps": before["steps"] + step,
                "total_training_minutes": round(before["minutes"] + trained_s / 60, 1)}
        tmp = a.out + ".tmp"
        m.save_weights(tmp, to_weights(ema.model.cpu(), prov), dtype=np.float16 if a.float16 else np.float32)
        ema.model.to(device)
        os.replace(tmp, a.out)

    budget = a.minutes * 60
    val_nme = history[-1]["val_nme"][-1] if history and history[-1].get("val_nme") else None
    stopped, exported_epoch = False, None
    while epoch < a.epochs and not stopped:
        for g in opt.param_groups:
            g["lr"] = a.lr * 0.1 ** sum(epoch >= s for s in lr_steps)
        rng = np.random.default_rng([a.seed, epoch])
        order = rng.choice(len(train), size=len(train), p=weights / weights.sum())
        ds = EpochBatches(a.train, a.limit, mean, a.batch, aug, order, [a.seed, epoch],
                          faces=None if a.workers else train, landmarks=targets)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=a.workers,
                                             multiprocessing_context="spawn" if a.workers else None,
                                             prefetch_factor=4 if a.workers else None)
        t_ep, seen, run_loss, run_nme = time.time(), 0, 0.0, 0.0
        for k, b in enumerate(loader):
            lv, i0, g, v, nr = to_torch(b, device)
            out = model(lv, i0)
            loss, eps = loss_terms(out, g, v, nr, a.dead_zone, a.hidden_weight, iteration_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ema.update(model, step)
            seen += len(i0)
            run_loss += float(loss.detach()) * len(i0)
            run_nme += float(eps[-1].sum())
            if k % 20 == 0 or k == len(ds) - 1:
                rate = seen / (time.time() - t_ep)
                left = budget - (time.time() - t_start)
                eta_epoch = (len(ds) * a.batch - seen) / max(rate, 1e-9)
                print(f"epoch {epoch} batch {k + 1}/{len(ds)} loss {run_loss / seen:.4f} train NME "
                      f"{run_nme / seen:.4f} | {rate:.1f} faces/s, epoch ETA {eta_epoch / 60:.1f} min, "
                      f"budget left {left / 60:.1f} min", flush=True)
            if time.time() - t_start > budget:
                stopped = True
                break
        if stopped and seen < len(ds) * a.batch:
            print(f"time budget reached inside epoch {epoch} ({seen} faces); that partial epoch is dropped: "
                  f"the checkpoint and {a.out} stay as they were at the end of epoch {epoch}", flush=True)
            break
        epoch += 1
        rec = {"epoch": epoch, "step": step, "train_loss": run_loss / max(seen, 1),
               "train_nme": run_nme / max(seen, 1), "faces_per_s": seen / (time.time() - t_ep),
               "lr": opt.param_groups[0]["lr"], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        if val_faces is not None:
            vl, vn = evaluate(ema.model, validation_batches(val_faces, mean, a.val_faces, 64), device, a.dead_zone)
            rec.update(val_loss=vl, val_nme=vn.tolist())
            val_nme = vn[-1]
            print(f"epoch {epoch}: validation loss {vl:.4f}, NME per iteration "
                  f"{', '.join(f'{x:.4f}' for x in vn)} (EMA weights, {min(a.val_faces, len(val_faces))} faces)",
                  flush=True)
        history.append(rec)
        trained_s += time.time() - t_ep
        with open(log_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        save_state()
        export(val_nme)
        exported_epoch = epoch
    if exported_epoch is None:
        print("no epoch completed in this run; nothing exported (a longer --minutes is needed)", flush=True)
    else:
        print(f"{a.out} holds epoch {exported_epoch}; {(time.time() - t_start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
