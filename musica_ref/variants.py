"""The named model variants of the paper's Table 1 (docs/model.md §2).

A variant is data, never a code path: any landmark count N and any list of P patch indices work. Patch lists
are 0-based landmark indices, in the order their patches enter the recurrent layer.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from .errors import InputError

# the most landmarks a variant may have: far above any annotation scheme (68, 98), and a bound on what a weights
# file may declare (weights.py) or random-weights may allocate (a recurrent layer grows with N * 512 weights)
MAX_LANDMARKS = 1000


@dataclass(frozen=True)
class Variant:
    name: str
    n_landmarks: int                 # N
    patch_indices: tuple[int, ...]   # P indices into the N landmarks

    @property
    def n_patches(self) -> int:
        return len(self.patch_indices)


VARIANTS = {v.name: v for v in [
    Variant("musica68", 68, tuple(range(68))),
    Variant("musica34", 68, tuple(range(0, 68, 2))),   # not in the original code; the 98/49 rule
    Variant("musica19", 68, (0, 4, 8, 12, 16, 17, 21, 22, 26, 36, 39, 42, 45, 31, 34, 48, 51, 54, 57)),
    Variant("musica98", 98, tuple(range(98))),
    Variant("musica49", 98, tuple(range(0, 98, 2))),
]}


def get_variant(name: str) -> Variant:
    """The variant called `name` (one of VARIANTS); ValueError listing the known names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise InputError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def custom_variant(n_landmarks: int, patch_indices=None, name: str | None = None) -> Variant:
    """A variant of 1 <= N <= MAX_LANDMARKS landmarks with patches at `patch_indices` (default: every
    landmark)."""
    if isinstance(n_landmarks, bool) or not isinstance(n_landmarks, numbers.Integral) or n_landmarks < 1:
        raise InputError(f"a variant needs at least one landmark, got N = {n_landmarks!r:.40}")
    if n_landmarks > MAX_LANDMARKS:
        raise InputError(f"a variant has at most {MAX_LANDMARKS} landmarks, got N = {n_landmarks!s:.40}")
    n_landmarks = int(n_landmarks)
    idx = tuple(range(n_landmarks)) if patch_indices is None else tuple(int(i) for i in patch_indices)
    if not idx:
        raise InputError("a variant needs at least one patch")
    bad = [i for i in idx if not 0 <= i < n_landmarks]
    if bad:
        raise InputError(f"patch indices {bad} are outside 0..{n_landmarks - 1}")
    if len(set(idx)) != len(idx):
        raise InputError("patch indices must not repeat")
    return Variant(name or f"musica{n_landmarks}x{len(idx)}", n_landmarks, idx)
