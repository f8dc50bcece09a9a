"""Fully connected layers: out = bias + x @ weight with the summation order of the numerical contract
(chunks of FC_KCHUNK inputs; docs/porting.md §3), for float32, float16-bit and int8 weights (twin:
kernels_ref.fully_connected)."""
from __future__ import annotations

import numpy as np
from numba import njit

from .contract import FC_KCHUNK, _finish, _take, _wait_for, disjoint, madd, widen
from .parallel import run_alone, run_parallel

# --- constants that only tune speed (no result depends on them) ----------------------------------------------
# each work item of the fully connected kernel reuses a weight row for FC_ROWS inputs of the batch
FC_ROWS = 8
# with at least two groups of FC_GROUP_BLOCKS blocks of FC_ROWS inputs, fully_connected runs the groups in
# parallel, else the chunks
FC_GROUP_BLOCKS = 4
# a layer with at most this many weights runs on the calling thread only: waking a waiting thread (with
# passive OpenMP waiting, an empty parallel region costs tens of microseconds) costs more than the layer's
# work (speed only: no result depends on it)
FC_SERIAL_WEIGHTS = 2 ** 17


@disjoint
def _fc_chunk(x, weight, r0, nr, c, acc, ks, xs):
    """acc[r] = sum over k of chunk c (in order) of x[r0 + r, k] * weight[k], starting from 0, each term a fused
    multiply-add; inputs that are exactly 0 are skipped (adding 0 * w, w finite, leaves every partial sum as
    it is, bit for bit). weight is float32, int8 or uint16 float16 bits (each element widened to float32
    exactly: widen). For each input, its nonzero inputs are listed first and their weight rows taken eight
    at a time: eight terms added in order to each output in one pass (eight row streams in flight for the
    memory system, each output loaded and stored once per eight rows); the chunk's rows stay in cache for
    the next input of the block. ks (int64) and xs (float32), at least FC_KCHUNK long, are scratch (the
    caller's, so that the feature extractor allocates nothing per patch). Returns n, and ks[:n], xs[:n] list
    the non-zero inputs of the last row (r = nr - 1) and their values, in order."""
    K, M = weight.shape
    k0, k1 = c * FC_KCHUNK, min(K, (c + 1) * FC_KCHUNK)
    for r in range(nr):
        for j in range(M):
            acc[r, j] = 0.0
        n = 0
        for k in range(k0, k1):                    # list the non-zero inputs without a branch (which
            xv = x[r0 + r, k]                      # would be mispredicted for most of them)
            ks[n] = k
            xs[n] = xv
            n += xv != 0.0
        q = 0
        while q + 8 <= n:
            ka, kb, kc, kd = ks[q], ks[q + 1], ks[q + 2], ks[q + 3]
            ke, kf, kg, kh = ks[q + 4], ks[q + 5], ks[q + 6], ks[q + 7]
            xa, xb, xc, xd = xs[q], xs[q + 1], xs[q + 2], xs[q + 3]
            xe, xf, xg, xh = xs[q + 4], xs[q + 5], xs[q + 6], xs[q + 7]
            for j in range(M):
                a = acc[r, j]
                a = madd(a, xa, widen(weight[ka, j]))
                a = madd(a, xb, widen(weight[kb, j]))
                a = madd(a, xc, widen(weight[kc, j]))
                a = madd(a, xd, widen(weight[kd, j]))
                a = madd(a, xe, widen(weight[ke, j]))
                a = madd(a, xf, widen(weight[kf, j]))
                a = madd(a, xg, widen(weight[kg, j]))
                a = madd(a, xh, widen(weight[kh, j]))
                acc[r, j] = a
            q += 8
        for t in range(q, n):
            kt, xt = ks[t], xs[t]
            for j in range(M):
                acc[r, j] = madd(acc[r, j], xt, widen(weight[kt, j]))
    return n


@njit(nogil=True, cache=True)
def _fc_groups(counter, n_groups, x, weight, start, out):
    """out = start + x @ weight for two or more groups of FC_GROUP_BLOCKS blocks of FC_ROWS inputs, as a worker
    (parallel.run_parallel): the groups taken in turn; a group runs its blocks chunk by chunk (each chunk's
    weights come from memory once per group and from the cache for its other blocks), adding the chunks
    in order."""
    B, K = x.shape
    M = weight.shape[1]
    n_kc = (K + FC_KCHUNK - 1) // FC_KCHUNK
    g = _take(counter)
    if g < n_groups:
        acc = np.empty((FC_GROUP_BLOCKS, FC_ROWS, M), np.float32)
        ks, xs = np.empty(FC_KCHUNK, np.int64), np.empty(FC_KCHUNK, np.float32)
        while g < n_groups:
            b0, b1 = g * FC_GROUP_BLOCKS * FC_ROWS, min(B, (g + 1) * FC_GROUP_BLOCKS * FC_ROWS)
            for b in range(b0, b1):
                for j in range(M):
                    out[b, j] = start[j]
            for c in range(n_kc):
                for i, r0 in enumerate(range(b0, b1, FC_ROWS)):
                    nr = min(b1, r0 + FC_ROWS) - r0
                    _fc_chunk(x, weight, r0, nr, c, acc[i], ks, xs)
                    for r in range(nr):
                        for j in range(M):
                            out[r0 + r, j] += acc[i, r, j]
            g = _take(counter)


@njit(nogil=True, cache=True)
def _fc_chunks(counter, n_items, x, weight, start, part, done, out):
    """out = start + x @ weight for up to FC_GROUP_BLOCKS blocks of FC_ROWS inputs, as a worker
    (parallel.run_parallel, or run_alone for the calling thread alone): the first n_kc items are the
    chunks (each for every block, so its weights come from memory once and from the cache after) into
    part (n_kc, B, M), counted in done when finished; the next ones add the partial sums of a block of
    FC_ROWS inputs in chunk order, once every chunk is finished (_wait_for)."""
    B = x.shape[0]
    n_kc = part.shape[0]
    t = _take(counter)
    if t < n_items:
        ks, xs = np.empty(FC_KCHUNK, np.int64), np.empty(FC_KCHUNK, np.float32)
        while t < n_items:
            if t < n_kc:                                     # chunk t of every block
                for r0 in range(0, B, FC_ROWS):
                    _fc_chunk(x, weight, r0, min(B, r0 + FC_ROWS) - r0, t, part[t, r0:], ks, xs)
                _finish(done)
            else:                                            # the sums of a block of rows
                _wait_for(done, n_kc)
                r0 = (t - n_kc) * FC_ROWS
                M = out.shape[1]
                for b in range(r0, min(B, r0 + FC_ROWS)):
                    for j in range(M):
                        out[b, j] = start[j]
                    for c in range(n_kc):
                        for j in range(M):
                            out[b, j] += part[c, b, j]
            t = _take(counter)


@njit(cache=True)
def _scale_outputs(out, scale, bias):
    """out[b, j] = bias[j] + scale[j] * out[b, j], one fused multiply-add (int8 storage)."""
    for b in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[b, j] = madd(bias[j], scale[j], out[b, j])


def _fully_connected(x, weight, bias, scale, name):
    """fully_connected (scale None) and fully_connected_scaled. The work split is chosen here, in Python,
    so that only the kernel a call needs is compiled (a first run compiles less): every split sums the same
    chunks in the same order, so the choice changes no result."""
    if not (isinstance(x, np.ndarray) and isinstance(weight, np.ndarray) and x.ndim == 2 and weight.ndim == 2
            and np.ndim(bias) == 1 and weight.shape[0] == x.shape[1] and np.shape(bias)[0] == weight.shape[1]):
        raise ValueError(f"{name}: x (B, K), weight (K, M) and bias (M,) do not fit")
    if scale is not None and (np.ndim(scale) != 1 or np.shape(scale)[0] != weight.shape[1]):
        raise ValueError(f"{name}: scale must be (M,), one per output")
    B, K = x.shape
    M = weight.shape[1]
    out = np.empty((B, M), np.float32)
    start = np.asarray(bias, np.float32) if scale is None else np.zeros(M, np.float32)   # the sums start here
    n_rb = (B + FC_ROWS - 1) // FC_ROWS
    if n_rb > FC_GROUP_BLOCKS:
        n_groups = (n_rb + FC_GROUP_BLOCKS - 1) // FC_GROUP_BLOCKS
        run_parallel(_fc_groups, n_groups, n_groups, x, weight, start, out)
    else:
        n_kc = (K + FC_KCHUNK - 1) // FC_KCHUNK
        part = np.empty((n_kc, B, M), np.float32)
        n_items = n_kc + n_rb
        args = (n_items, x, weight, start, part, np.zeros(1, np.int64), out)
        if K * M <= FC_SERIAL_WEIGHTS:                 # a small layer: on this thread
            run_alone(_fc_chunks, *args)
        else:
            run_parallel(_fc_chunks, n_items, *args)
    if scale is not None:
        _scale_outputs(out, scale, bias)
    return out


def fully_connected(x, weight, bias):
    """out = x @ weight + bias, batched. x (B, K) float32; weight (K, M), finite; bias (M,) -> (B, M) float32.

    Accumulator: float32. The K inputs are cut into fixed chunks of FC_KCHUNK; each chunk's partial sum
    runs over its k in order from 0, and out = bias + partial_0 + partial_1 + ... in chunk order. The chunks
    and the order depend on K only, never on the batch size or the thread count, so results are
    bit-identical however the work is split. A block of FC_ROWS inputs streams each weight row once,
    contiguously, and reuses it for all of them (vectorised along the M outputs); inputs equal to 0 (most of
    the ReLU features) skip their row. Up to FC_GROUP_BLOCKS blocks: the chunks run in parallel (_fc_chunks;
    a layer of at most FC_SERIAL_WEIGHTS weights on the calling thread alone), and the chunks' partial sums
    are added after; from two groups of FC_GROUP_BLOCKS blocks up, the groups run in parallel, each
    adding its chunks in order, one chunk at a time for all its blocks (_fc_groups). Either way a chunk's
    weights come from memory once per thread or group and from the cache for the other blocks. (Splitting
    the outputs into column blocks instead was much slower at 16-32 inputs, probably because a block's short
    row pieces, 1-2 KB apart, fall into few cache sets.)
    """
    return _fully_connected(x, weight, bias, None, "fully_connected")


def fully_connected_scaled(x, qweight, scale, bias):
    """out = bias + scale * (x @ qweight): a fully connected layer whose weights are stored as int8 with one
    float32 scale per output (weight[:, j] ~ scale[j] * qweight[:, j]). x (B, K) float32; qweight (K, M)
    int8; scale, bias (M,) float32 -> (B, M) float32. The same chunks, order and batch invariance as
    fully_connected; the sum of the chunks starts from 0 and is scaled once at the end (bias + scale * sum,
    one fused multiply-add).
    """
    return _fully_connected(x, qweight, bias, scale, "fully_connected_scaled")
