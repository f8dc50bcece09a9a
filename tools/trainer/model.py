"""The MuSiCa network in PyTorch, for training: the twin of musica_ref/network.py and model.py.

Only the network (docs/model.md §6) is re-expressed here; the geometry (pyramid levels, initial shapes, patch centres
-> corners) is musica_ref's own. Tensor names match the weights file: `iterations.{i}.{conv1,conv2,attention,
recurrent,output}.{weight,bias}` <-> `iteration_{i}/{layer}/{weight,bias}`.

Layouts: images and patches are NHWC as in musica_ref; intermediates are returned NHWC under the names of
musica_ref.network.INTERMEDIATES. Conv weights are (Cout, Cin, kh, kw) here and (kh, kw, Cin, Cout) in the
file; Linear weights are (out, in) here and (in, out) in the file.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musica_ref import geometry
from musica_ref.network import CONV_FILTERS, FEATURES, HIDDEN, IN_CHANNELS, TENSORS
from musica_ref.variants import Variant
from musica_ref.weights import Weights


class IterationNet(nn.Module):
    """One iteration's network; weights shared by all patches of the iteration."""

    def __init__(self, n_landmarks: int, n_patches: int):
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANNELS, CONV_FILTERS, 3)
        self.conv2 = nn.Conv2d(CONV_FILTERS, CONV_FILTERS, 3)
        self.attention = nn.Linear(FEATURES, FEATURES)
        self.recurrent = nn.Linear(n_patches * FEATURES + HIDDEN, HIDDEN)
        self.output = nn.Linear(HIDDEN, 2 * n_landmarks + 1)

    def forward(self, patches, h_prev):
        """patches (B*P, 14, 14, 3) NHWC; h_prev (B, 512) -> dict of the named intermediates (NHWC)."""
        B = h_prev.shape[0]
        x = patches.permute(0, 3, 1, 2)                                  # (BP, 3, 14, 14)
        conv1 = F.relu(self.conv1(x))                                    # (BP, 32, 12, 12)
        pool1 = F.max_pool2d(conv1, 2)                                   # (BP, 32, 6, 6)
        conv2 = F.relu(self.conv2(pool1))                                # (BP, 32, 4, 4)
        pool2 = F.max_pool2d(conv2, 2)                                   # (BP, 32, 2, 2)
        feat = torch.cat([conv2[:, :, 1:3, 1:3], pool2], dim=1)          # (BP, 64, 2, 2)
        features = feat.permute(0, 2, 3, 1).reshape(feat.shape[0], -1)   # (BP, 256) (row, col, channel)
        attention = torch.sigmoid(self.attention(features))             # (BP, 256)
        gated = features * attention                                     # (BP, 256)
        hidden = torch.tanh(self.recurrent(torch.cat([gated.reshape(B, -1), h_prev], dim=1)))  # (B, 512)
        out = self.output(hidden)                                        # (B, 2N+1)
        nhwc = lambda t: t.permute(0, 2, 3, 1)                           # noqa: E731
        return dict(conv1=nhwc(conv1), pool1=nhwc(pool1), conv2=nhwc(conv2), pool2=nhwc(pool2),
                    features=features, attention=attention, gated=gated, hidden=hidden, out=out)


def extract_patches(levels, corners, size: int = geometry.PATCH_SIZE):
    """Nearest-pixel patches, zeros outside the image (torch twin of musica_ref.kernels.extract_patches).

    levels (B, H, W, C), zero beyond each face's real level (a padded canvas); corners (B, P, 2) int64
    top-left (col, row) -> (B, P, size, size, C). No gradient flows through the corners.
    """
    B, H, W, C = levels.shape
    pad = size
    padded = F.pad(levels, (0, 0, pad, pad, pad, pad))                   # zeros around the canvas
    c0 = corners[..., 0].clamp(-pad, W) + pad                             # patches entirely outside read zeros
    r0 = corners[..., 1].clamp(-pad, H) + pad
    ar = torch.arange(size, device=levels.device)
    rows = (r0[..., None] + ar)[:, :, :, None]                            # (B, P, size, 1)
    cols = (c0[..., None] + ar)[:, :, None, :]                            # (B, P, 1, size)
    b = torch.arange(B, device=levels.device)[:, None, None, None]
    return padded[b, rows, cols]                                          # (B, P, size, size, C)


class MuSiCaTorch(nn.Module):
    """The whole cascade on prepared inputs: pyramid canvases and initial shapes from musica_ref geometry."""

    def __init__(self, variant: Variant, mean_shape):
        super().__init__()
        self.variant = variant
        N, P = variant.n_landmarks, variant.n_patches
        self.iterations = nn.ModuleList([IterationNet(N, P) for _ in geometry.ITERATION_LEVELS])
        self.register_buffer("patch_indices", torch.as_tensor(variant.patch_indices, dtype=torch.long))
        self.register_buffer("mean_shape", torch.as_tensor(np.asarray(mean_shape), dtype=torch.float64))
        for it in self.iterations:            # the original's init: N(0, 0.01) weights, zero biases
            for name, p in it.named_parameters():
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.normal_(p, 0.0, 0.01)

    def forward(self, levels, init0, keep: bool = False):
        """levels: 3 tensors (B, H_L, W_L, 3) (level L canvases, zero-padded); init0 (B, N, 2) float64,
        the initial shape in level-0 pixels.

        Returns a dict: `shapes` (3, B, N, 2) the estimate after each iteration in level-0 pixels (carries
        gradient), `errors` (3, B) the error estimates, and with keep=True `trace`: per iteration the
        centres, patches and named intermediates.
        """
        N = self.variant.n_landmarks
        B = init0.shape[0]
        dtype = levels[0].dtype
        d = torch.zeros(B, N, 2, dtype=init0.dtype, device=init0.device)   # displacement, current level
        h = torch.zeros(B, HIDDEN, dtype=dtype, device=init0.device)
        shapes, errors, trace = [], [], []
        for i, L in enumerate(geometry.ITERATION_LEVELS):
            centres = (init0 / 2 ** L + d)[:, self.patch_indices]           # (B, P, 2)
            corners = torch.floor(centres.detach()).long() - geometry.PATCH_BEFORE
            patches = extract_patches(levels[L], corners)                   # (B, P, 14, 14, 3)
            r = self.iterations[i](patches.reshape(-1, *patches.shape[2:]), h)
            h = r["hidden"]
            d = d + r["out"][:, :2 * N].reshape(B, N, 2).to(d.dtype)
            shapes.append((init0 / 2 ** L + d) * 2 ** L)                    # level-0 pixels
            errors.append(r["out"][:, 2 * N])
            if keep:
                trace.append({"level": L, "centres": centres.detach(), "patches": patches.reshape(-1, *patches.shape[2:]), **r})
            d = 2 * d                                                        # Eq. 1
        out = {"shapes": torch.stack(shapes), "errors": torch.stack(errors)}
        if keep:
            out["trace"] = trace
        return out


def canvases(levels, dtype=torch.float64):
    """One face's pyramid levels [(H_L, W_L, 3)] -> the model's inputs: 3 tensors (1, H_max, W_max, 3),
    zero beyond the level (patch extraction reads that as outside the image, as inference does)."""
    out = []
    for L, lv in enumerate(levels):
        c = np.zeros((1, *geometry.max_level_shape(L), 3))
        c[0, :lv.shape[0], :lv.shape[1]] = lv
        out.append(torch.from_numpy(c).to(dtype))
    return out


# --- conversion to and from the weights file ---------------------------------------------------------------

def _to_file(name: str, t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().double().numpy()
    if name.endswith("/weight"):
        a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T
    return np.ascontiguousarray(a, dtype=np.float32)


def _from_file(name: str, a: np.ndarray) -> torch.Tensor:
    if name.endswith("/weight"):
        a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
    return torch.as_tensor(np.ascontiguousarray(a))


def to_weights(model: MuSiCaTorch, provenance: dict | None = None) -> Weights:
    """The model's parameters as a musica_ref Weights object (what save_weights writes)."""
    its = []
    for it in model.iterations:
        params = dict(it.named_parameters())
        its.append({name: _to_file(name, params[name.replace("/", ".")]) for name in TENSORS})
    return Weights(model.variant, model.mean_shape.cpu().numpy(), its, dict(provenance or {}))


def from_weights(w: Weights, dtype=torch.float32) -> MuSiCaTorch:
    """A MuSiCaTorch holding the values of a musica_ref Weights object."""
    model = MuSiCaTorch(w.variant, w.mean_shape)
    load_into(model, w)
    model.iterations.to(dtype)              # the mean shape buffer stays float64
    return model


def load_into(model: MuSiCaTorch, w: Weights) -> None:
    """Copy a Weights object's tensors into an existing model (warm start). Variants must match."""
    if tuple(w.variant.patch_indices) != tuple(model.variant.patch_indices) or \
            w.variant.n_landmarks != model.variant.n_landmarks:
        raise ValueError(f"weights are for {w.variant.name} (N={w.n_landmarks}, P={w.variant.n_patches}), "
                         f"the model is {model.variant.name}")
    with torch.no_grad():
        for it, wt in zip(model.iterations, w.iterations):
            params = dict(it.named_parameters())
            for name in TENSORS:
                p = params[name.replace("/", ".")]
                p.copy_(_from_file(name, wt[name]).to(p.dtype))
        model.mean_shape.copy_(torch.as_tensor(w.mean_shape, dtype=torch.float64))
