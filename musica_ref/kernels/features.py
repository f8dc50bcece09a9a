"""The feature extractor fused per patch (conv1 -> pool1 -> conv2 -> pool2 -> crop and concat ->
attention -> gate), on given patches (patch_features) or read from a pyramid level with conv1 shared between
overlapping patches (level_patch_features, levels_patch_features): the same sums in the same order as the
layers one at a time (layers.py; twin: kernels_ref.patch_features), so bit for bit the same."""
from __future__ import annotations

import numpy as np
from numba import njit, uint64

from .contract import FC_KCHUNK, _finish, _slot, _take, _wait_for, disjoint, inline, madd
from ..geometry import PATCH_SIZE
from .dense import _fc_chunk
from .parallel import run_parallel


# the sides of one patch's maps (the patch side is geometry's): conv1 (no padding), pool1, and the stride of
# the pool1 outputs of a group's patches side by side (one column apart)
CONV1_SIDE = PATCH_SIZE - 2
POOL1_SIDE = CONV1_SIDE // 2
POOL1_STRIDE = POOL1_SIDE + 1
# patches per work item of patch_features (speed only); its conv1 takes exactly this many input channels (RGB)
FEATURE_ITEM = 4
CONV1_IN = 3


# conv1 computes this many output channels per pass over its input
CONV1_OUT_BLOCK = 4


@njit(cache=True)
def _add3(u, x0, x1, x2, w0, w1, w2):
    """u + x0 w0 + x1 w1 + x2 w2, three fused multiply-adds left to right (one kernel row of a 3x3 tap;
    inlined by LLVM)."""
    return madd(madd(madd(u, x0, w0), x1, w1), x2, w2)


@disjoint
def _conv1_span(xt, w1t, b1, o, c1, S, L, n0, n1):
    """Output channels o .. o + 3 of conv1 on channel-major rows of width S: c1[o + q, n] = b1[o + q] + sum
    over (c, di, dj) in order of xt[c * L + n + di * S + dj] * w1t[o + q, (c * 3 + di) * 3 + dj], for
    n0 <= n < n1. One pass over the span per input channel and kernel row (c, di): each of its 3 inputs is
    loaded once for the 4 output channels (12 weights and 4 sums fit in registers), and the 4 sums are
    independent chains. The loop over n vectorises. (One channel per pass, its 9 taps unrolled, would
    reload every input for every output channel: slower, docs/engine.md.) S, L, n0, n1 are uint64: non-negative indices let the loads be plain vector loads (a signed
    index may wrap around, which turns every load into a gather)."""
    da, db, dc, dd = c1[o], c1[o + 1], c1[o + 2], c1[o + 3]
    ba, bb, bc, bd = b1[o], b1[o + 1], b1[o + 2], b1[o + 3]
    for n in range(n0, n1):
        da[n] = ba
        db[n] = bb
        dc[n] = bc
        dd[n] = bd
    for c in range(CONV1_IN):
        for di in range(3):
            t = (c * 3 + di) * 3
            wa0, wa1, wa2 = w1t[o, t], w1t[o, t + 1], w1t[o, t + 2]
            wb0, wb1, wb2 = w1t[o + 1, t], w1t[o + 1, t + 1], w1t[o + 1, t + 2]
            wc0, wc1, wc2 = w1t[o + 2, t], w1t[o + 2, t + 1], w1t[o + 2, t + 2]
            wd0, wd1, wd2 = w1t[o + 3, t], w1t[o + 3, t + 1], w1t[o + 3, t + 2]
            base = uint64(c) * L + uint64(di) * S
            for n in range(n0, n1):
                i = base + n
                x0, x1, x2 = xt[i], xt[i + uint64(1)], xt[i + uint64(2)]
                da[n] = _add3(da[n], x0, x1, x2, wa0, wa1, wa2)
                db[n] = _add3(db[n], x0, x1, x2, wb0, wb1, wb2)
                dc[n] = _add3(dc[n], x0, x1, x2, wc0, wc1, wc2)
                dd[n] = _add3(dd[n], x0, x1, x2, wd0, wd1, wd2)


@inline
def _pool1(c1, base, S, p1, Q1, rowmax):
    """ReLU + 2x2 max-pool of the 2Q1 x 2Q1 block of conv1 that starts at flat index base (channel-major, rows
    of width S) into p1 (C, Q1 * Q1), channel-major. Each output is ReLU(max of its 4 inputs): the max of the
    ReLUs, as ReLU is monotone; the max of 4 finite numbers does not depend on the order it is taken in (up
    to the sign of a zero, which ReLU removes). Per channel: the row pairs' maxima first (contiguous), then
    the column pairs of all Q1 x Q1 outputs in one loop (long enough to vectorise). rowmax: scratch of
    4 Q1 Q1 values, rowmax[i * 2Q1 + n] the max of rows 2i and 2i + 1 at column n."""
    zero = np.float32(0.0)
    for o in range(p1.shape[0]):                    # c1 may have padding channels (_conv1_rows)
        for i in range(Q1):
            r0 = uint64(base + 2 * i * S)
            r1 = uint64(base + (2 * i + 1) * S)
            for n in range(uint64(2 * Q1)):
                rowmax[i * 2 * Q1 + n] = max(c1[o, r0 + n], c1[o, r1 + n])
        for q in range(Q1 * Q1):
            m = max(rowmax[2 * q], rowmax[2 * q + 1])
            p1[o, q] = m if m > zero else zero


# a group's pool1 output: row i of patch k's 6x6 at columns k * 7 .. k * 7 + 5 of a row GROUP_POOL_W wide
GROUP_POOL_W = FEATURE_ITEM * POOL1_STRIDE


@inline
def _pool1_group(c1, n, p1g):
    """ReLU + 2x2 max-pool of a whole group's conv1 (rows GROUP_W wide, the n patches side by side, see
    GROUP_W) into p1g (C, 6 * GROUP_POOL_W): patch k's output (i, jj) at p1g[o, i * GROUP_POOL_W + k * 7 + jj].
    Each output is ReLU(max of its 4 inputs), as in _pool1; the 7th column of each patch pools its two
    conv1 columns that no patch uses and is never read. One loop over the group's row pair per output row
    (long enough to vectorise)."""
    zero = np.float32(0.0)
    for o in range(p1g.shape[0]):
        for i in range(POOL1_SIDE):
            r0 = uint64(2 * i * GROUP_W)
            r1 = r0 + uint64(GROUP_W)
            q = uint64(i * GROUP_POOL_W)
            for m in range(uint64(n * POOL1_STRIDE)):
                a = max(c1[o, r0 + 2 * m], c1[o, r0 + 2 * m + 1])
                b = max(c1[o, r1 + 2 * m], c1[o, r1 + 2 * m + 1])
                v = max(a, b)
                p1g[o, q + m] = v if v > zero else zero


@njit(cache=True)
def _add_row4(s0, s1, s2, s3, x0, x1, x2, x3, w):
    """One tap of conv2 for a row of 4 outputs: (s0 + x0 w, s1 + x1 w, s2 + x2 w, s3 + x3 w), each a fused
    multiply-add (inlined by LLVM; 4 independent sums)."""
    return madd(s0, x0, w), madd(s1, x1, w), madd(s2, x2, w), madd(s3, x3, w)


@disjoint
def _conv2(p1, base, Q1, w2f, b2, c2, S2):
    """conv2 + bias + ReLU: c2[(i * S2 + j) * C + o] = bias + sum over (c, di, dj) in order of
    p1[c, base + (i + di) * Q1 + j + dj] * w2f[((c * 3 + di) * 3 + dj) * C + o]: the 6x6 input of channel c
    at p1[c, base:], rows Q1 apart (6 for one patch's pool1, more where a group's patches lie side by side);
    w2f, c2 flat; S2 = 4 (a row of outputs is done at once).
    For each output row i and input channel c, the 4 outputs of the row and the 9 taps are a fixed unrolled
    sequence inside the vectorised o loop: each weight is loaded once for 4 outputs, and 4 independent sums
    are in flight (one sum alone would wait on its previous addition); a row's channel whose 18 inputs are
    all 0 is skipped (it would add exact zeros; zeros inside a row add exact zeros, which leaves every sum as
    it is but the sign of a zero, which the ReLU removes). Offsets are uint64 so the loads are plain vector
    loads."""
    C = b2.shape[0]
    uC = uint64(C)
    for q in range(S2 * S2):
        for o in range(C):
            c2[q * C + o] = b2[o]
    for i in range(S2):
        ob0 = uint64(i * S2 * C)                 # output (i, j) at c2[ob0 + j * C + o]
        ob1, ob2, ob3 = ob0 + uC, ob0 + uint64(2 * C), ob0 + uint64(3 * C)
        for c in range(C):
            r0, r1, r2 = base + i * Q1, base + (i + 1) * Q1, base + (i + 2) * Q1
            a0, a1, a2, a3, a4, a5 = p1[c, r0], p1[c, r0 + 1], p1[c, r0 + 2], p1[c, r0 + 3], p1[c, r0 + 4], \
                p1[c, r0 + 5]
            b0, b1, b2_, b3, b4, b5 = p1[c, r1], p1[c, r1 + 1], p1[c, r1 + 2], p1[c, r1 + 3], p1[c, r1 + 4], \
                p1[c, r1 + 5]
            d0, d1, d2, d3, d4, d5 = p1[c, r2], p1[c, r2 + 1], p1[c, r2 + 2], p1[c, r2 + 3], p1[c, r2 + 4], \
                p1[c, r2 + 5]
            if a0 == 0.0 and a1 == 0.0 and a2 == 0.0 and a3 == 0.0 and a4 == 0.0 and a5 == 0.0 \
                    and b0 == 0.0 and b1 == 0.0 and b2_ == 0.0 and b3 == 0.0 and b4 == 0.0 and b5 == 0.0 \
                    and d0 == 0.0 and d1 == 0.0 and d2 == 0.0 and d3 == 0.0 and d4 == 0.0 and d5 == 0.0:
                continue
            w0 = uint64(c * 9 * C)                 # tap t of channel c: w2f[w0 + t * C + o]
            w1, w2, w3, w4 = w0 + uC, w0 + uint64(2 * C), w0 + uint64(3 * C), w0 + uint64(4 * C)
            w5, w6, w7, w8 = w0 + uint64(5 * C), w0 + uint64(6 * C), w0 + uint64(7 * C), w0 + uint64(8 * C)
            for o in range(uC):
                s0, s1, s2, s3 = c2[ob0 + o], c2[ob1 + o], c2[ob2 + o], c2[ob3 + o]
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, a0, a1, a2, a3, w2f[w0 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, a1, a2, a3, a4, w2f[w1 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, a2, a3, a4, a5, w2f[w2 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, b0, b1, b2_, b3, w2f[w3 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, b1, b2_, b3, b4, w2f[w4 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, b2_, b3, b4, b5, w2f[w5 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, d0, d1, d2, d3, w2f[w6 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, d1, d2, d3, d4, w2f[w7 + o])
                s0, s1, s2, s3 = _add_row4(s0, s1, s2, s3, d2, d3, d4, d5, w2f[w8 + o])
                c2[ob0 + o], c2[ob1 + o], c2[ob2 + o], c2[ob3 + o] = s0, s1, s2, s3
    zero = np.float32(0.0)
    for q in range(S2 * S2 * C):
        if not c2[q] > zero:
            c2[q] = zero


@inline
def _patch_from_pool1(p1, base, Q1, w2f, b2, wa, ba, tail, out):
    """The rest of one patch after pool1 (its 6x6 per channel at p1[c, base:], rows Q1 apart: a patch's own
    pool1 or a group's, _pool1_group) to its gated features out (8C,): conv2 + ReLU -> maxpool2x2 ->
    crop_concat -> attention -> sigmoid -> gate. tail: scratch (_tail_scratch)."""
    _, c2, feat, part, _, ks, xs = tail
    C = b2.shape[0]
    F = 8 * C
    S2 = 4                                         # conv2 output side
    _conv2(p1, base, Q1, w2f, b2, c2, S2)
    # features = [centre 2x2 of conv2, pool2], (row, col, channel)
    for r in range(2):
        for cc in range(2):
            fb = (r * 2 + cc) * 2 * C
            q0 = 2 * r * S2 + 2 * cc
            for o in range(C):
                feat[fb + o] = c2[((r + 1) * S2 + cc + 1) * C + o]
                feat[fb + C + o] = max(max(max(c2[q0 * C + o], c2[(q0 + 1) * C + o]),
                                           c2[(q0 + S2) * C + o]), c2[(q0 + S2 + 1) * C + o])
    # attention = sigmoid(bias + partial): the partial is the fully connected kernel's own chunk sum (F = 8C
    # <= FC_KCHUNK inputs make one chunk, summed from 0 over the non-zero features); gate (a feature of 0
    # gives 0 whatever its attention, so its sigmoid is not computed)
    one = np.float32(1.0)
    zero, one_row = np.int64(0), np.int64(1)      # not literal constants: the version the dense layers use
    n = _fc_chunk(feat.reshape((1, F)), wa, zero, one_row, zero, part.reshape((1, F)), ks, xs)
    for j in range(F):
        out[j] = 0.0                               # 0 * sigmoid (finite, > 0) is +0 exactly: no exp needed
    for t in range(n):                             # the non-zero features, listed by _fc_chunk
        j = ks[t]
        s = ba[j] + part[j]
        out[j] = xs[t] * (one / (one + np.exp(-s)))


@inline
def _feature_shapes_ok(Cin, S, w1t, b1p, w2f, b2, wa, ba):
    """Whether the feature extractor's weights, in the layouts of feature_weights, fit Cin-channel SxS
    patches."""
    C = b2.shape[0]
    F = 8 * C
    return not (Cin != CONV1_IN or S != PATCH_SIZE or C < 1 or w1t.shape != (_conv1_rows(C), 9 * Cin)
                or b1p.shape[0] != _conv1_rows(C) or F > FC_KCHUNK or w2f.shape[0] != 9 * C * C
                or wa.shape != (F, F) or ba.shape[0] != F)


@njit(cache=True)
def _conv1_rows(C):
    """Rows of a conv1 buffer: C rounded up to a multiple of CONV1_OUT_BLOCK (the extra channels, zero
    weights, are computed and never read)."""
    return (C + CONV1_OUT_BLOCK - 1) // CONV1_OUT_BLOCK * CONV1_OUT_BLOCK


def feature_weights(w1, b1, w2, b2, wa, ba):
    """The feature extractor's weights in the layouts the fused kernels read (patch_features,
    level_patch_features, levels_patch_features), computed once per model: (w1t, b1p, w2f, b2, wa, ba) with
    conv1's weights as w1t[o, (c * 3 + di) * 3 + dj] and its bias b1p, both padded with zeros to
    _conv1_rows(C) output channels (computed and never read), and conv2's as w2f[((c * 3 + di) * 3 + dj) * C + o].

    w1 (3, 3, Cin, C), b1 (C,), w2 (3, 3, C, C), b2 (C,), wa (8C, 8C), ba (8C,), float32 (HWIO, as stored).
    Only copies: no value changes."""
    w1, w2 = np.asarray(w1, np.float32), np.asarray(w2, np.float32)
    if w1.ndim != 4 or w1.shape[:2] != (3, 3) or w2.ndim != 4:
        raise ValueError("feature_weights: w1 must be (3, 3, Cin, C) and w2 (3, 3, C, C)")
    C, Cin = w1.shape[3], w1.shape[2]
    rows = _conv1_rows.py_func(C)
    w1t = np.zeros((rows, 9 * Cin), np.float32)
    w1t[:C] = w1.transpose(3, 2, 0, 1).reshape(C, 9 * Cin)
    b1p = np.zeros(rows, np.float32)
    b1p[:C] = b1
    w2f = np.ascontiguousarray(w2.transpose(2, 0, 1, 3)).reshape(-1)
    return (w1t, b1p, w2f) + tuple(np.ascontiguousarray(a, np.float32) for a in (b2, wa, ba))


# FEATURE_ITEM patches lie side by side in a group's input, as one image 14 rows high and GROUP_W wide:
# channel c, row r, column cc of patch k at xt[c * GROUP_L + r * GROUP_W + k * 14 + cc]
GROUP_W = FEATURE_ITEM * PATCH_SIZE
GROUP_L = PATCH_SIZE * GROUP_W + 2


@inline
def _tail_scratch(C):
    """Scratch of one patch after conv1, reused patch after patch: (p1, c2, feat, part, rowmax, ks, xs)."""
    return (np.empty((C, 36), np.float32), np.empty(16 * C, np.float32), np.empty(8 * C, np.float32),
            np.empty(8 * C, np.float32), np.empty(4 * 36, np.float32), np.empty(FC_KCHUNK, np.int64),
            np.empty(FC_KCHUNK, np.float32))


@inline
def _group_scratch(C, groups):
    """Scratch of one thread's work items: (xt, c1, p1g, tail): a group's input (FEATURE_ITEM patches side by
    side, see GROUP_W), its conv1 (rows GROUP_W wide) and pool1 (_pool1_group), and the scratch of one patch
    after pool1. Without `groups` (patches from a shared conv1 map) only the tail is allocated, the others
    are empty."""
    if groups:
        return (np.zeros(CONV1_IN * GROUP_L, np.float32),
                np.empty((_conv1_rows(C), CONV1_SIDE * GROUP_W), np.float32),
                np.empty((C, POOL1_SIDE * GROUP_POOL_W), np.float32), _tail_scratch(C))
    return (np.empty(0, np.float32), np.empty((0, 0), np.float32), np.empty((0, 0), np.float32),
            _tail_scratch(C))


@inline
def _group_conv1(xt, n, w1t, b1, c1, p1g):
    """conv1 of n <= FEATURE_ITEM 14x14 patches side by side in xt (see GROUP_W) into c1 (rows GROUP_W wide:
    patch k's 12x12 block from column k * 14), then their pool1 into p1g (_pool1_group). conv1 runs as one
    span over the 12 output rows of the group: output i * GROUP_W + j reads input (i + di) * GROUP_W + j + dj
    of each channel (the 2 last columns of each patch are computed and not read), so each block of 4
    channels is a few long vector loops, not n short ones."""
    for o in range(0, w1t.shape[0], CONV1_OUT_BLOCK):
        _conv1_span(xt, w1t, b1, o, c1, uint64(GROUP_W), uint64(GROUP_L), uint64(0),
                    uint64((CONV1_SIDE - 1) * GROUP_W + (n - 1) * PATCH_SIZE + CONV1_SIDE))
    _pool1_group(c1, n, p1g)


@inline
def _patch_input_from_level(level, c0, r0, xt, k):
    """The 14x14 patch of level (H, W, Cin) with top-left (col c0, row r0) into slot k of a group's input xt
    (see GROUP_W), zeros outside the level: what extract_patches gives."""
    H, W, Cin = level.shape
    S = PATCH_SIZE
    for r in range(S):
        y = r0 + r
        for cc in range(S):
            x = c0 + cc
            inside = 0 <= y < H and 0 <= x < W
            for c in range(Cin):
                xt[c * GROUP_L + r * GROUP_W + k * S + cc] = level[y, x, c] if inside else np.float32(0.0)


def patch_features(patches, w1t, b1p, w2f, b2, wa, ba):
    """The patch feature extractor and its attention gate in one pass per patch (docs/model.md §6):
    conv3x3 + ReLU -> maxpool2x2 -> conv3x3 + ReLU -> maxpool2x2 -> crop_concat -> fully_connected -> sigmoid
    -> gate, computed element by element with the same float32 operations in the same order as those
    kernels (each convolution output: bias, then (c, di, dj) in order), so the result is bit-identical to
    running them one after the other (the tests check it). Only the gated features leave the kernel; the
    intermediates live in per-work-item scratch, laid out so the inner loops are long or unrolled.

    patches (BP, S, S, Cin) float32, S = 14 (conv1 S-2 = 12, pool1 6, conv2 4, pool2 2);
    w1t, b1p, w2f, b2, wa, ba: the weights as feature_weights lays them out (conv1 (3, 3, 3, C), conv2
    (3, 3, C, C), attention (8C, 8C)), all finite -> (BP, 8C).
    Changes of order that keep every result: pool1 = ReLU(max of conv1) (ReLU is monotone); inputs of conv2
    and of the attention layer that are exactly 0 are skipped (a finite w times 0 adds nothing).
    """
    if not (isinstance(patches, np.ndarray) and patches.ndim == 4 and patches.shape[1] == patches.shape[2]
            and _feature_shapes_ok(patches.shape[3], patches.shape[1], w1t, b1p, w2f, b2, wa, ba)):
        raise ValueError("patch_features: patches must be (BP, 14, 14, 3) and the weights as feature_weights "
                         "gives them: conv1 (3, 3, 3, C), conv2 (3, 3, C, C), attention (8C, 8C), biases to match")
    BP = patches.shape[0]
    gated = np.empty((BP, 8 * b2.shape[0]), np.float32)
    G = (BP + FEATURE_ITEM - 1) // FEATURE_ITEM
    run_parallel(_patch_groups, G, G, patches, w1t, b1p, w2f, b2, wa, ba, gated)
    return gated


@njit(nogil=True, cache=True)
def _patch_groups(counter, G, patches, w1t, b1p, w2f, b2, wa, ba, gated):
    """patch_features' worker (parallel.run_parallel): groups of FEATURE_ITEM patches, taken in turn; a
    thread allocates its scratch once, not once per group."""
    BP, S = patches.shape[0], patches.shape[1]
    t = _take(counter)
    if t < G:
        xt, c1, p1g, tail = _group_scratch(b2.shape[0], True)
        while t < G:
            p0 = t * FEATURE_ITEM
            n = min(BP, p0 + FEATURE_ITEM) - p0
            for k in range(n):
                for r in range(S):
                    for cc in range(S):
                        for c in range(CONV1_IN):
                            xt[c * GROUP_L + r * GROUP_W + k * S + cc] = patches[p0 + k, r, cc, c]
            _group_conv1(xt, n, w1t, b1p, c1, p1g)
            for k in range(n):
                _patch_from_pool1(p1g, np.int64(k * POOL1_STRIDE), np.int64(GROUP_POOL_W), w2f, b2, wa, ba, tail,
                                  gated[p0 + k])
            t = _take(counter)


# --- the feature extractor reading the patches from the level, conv1 shared between overlapping patches ---
#
# The patches of a face overlap (at the coarse level the 68 patches of musica68 cover each conv1 position
# about 6 times), and a conv1 output depends only on the 3x3x3 level pixels under it, not on the patch. So
# conv1 runs once on a map over the union of the patches' conv1 windows (zeros outside the level, as the
# patches have), each output the same sum in the same order, and each patch takes its 12x12 block of the map
# into pool1 and the rest. Where the patches overlap little (usually the finest level) they go one by one.

# conv1 is shared only while the patches' bounding box has at most this many times the positions of their
# conv1 outputs together (this bounds the scratch, and patches spread wider overlap too little to gain: they
# go one by one, without the cost of working out their overlap). Speed only, like SPAN_GAP.
SHARED_MAP_LIMIT = 1.5
# the map computes conv1 over gaps of at most this many positions between needed ones (long vector loops)
SPAN_GAP = 32
# ... and is used only when that is at most this fraction of the positions computed one by one (12 x 14 a patch)
SHARED_SPAN_RATIO = 0.6


@inline
def _conv1_map_plan(corners):
    """Where conv1 runs for the 14x14 patches with top-left corners (P, 2) (col, row), when shared:
    (ylo, xlo, Hm, Wm, run0, run1): the box of conv1 positions (Hm x Wm from level row ylo, column xlo) and
    the spans [run0[k], run1[k]) of flat map indices y * (Wm + 2) + x to compute: the needed positions in
    row-major order, gaps of at most SPAN_GAP (or a row end) bridged so the spans run as long vectors (the
    extra outputs are never read). No spans when sharing does not pay (SHARED_MAP_LIMIT, SHARED_SPAN_RATIO)."""
    P = corners.shape[0]
    S1, S = CONV1_SIDE, PATCH_SIZE
    xlo, ylo = corners[0, 0], corners[0, 1]
    xhi, yhi = xlo, ylo
    for p in range(P):
        xlo = min(xlo, corners[p, 0])
        xhi = max(xhi, corners[p, 0])
        ylo = min(ylo, corners[p, 1])
        yhi = max(yhi, corners[p, 1])
    Hm, Wm = yhi - ylo + S1, xhi - xlo + S1
    none = np.empty(0, np.uint64)
    if Hm * Wm > SHARED_MAP_LIMIT * P * S1 * S1:
        return ylo, xlo, Hm, Wm, none, none
    Wr = Wm + 2
    need = np.zeros((Hm, Wm), np.bool_)                  # conv1 positions some patch uses
    for p in range(P):
        y0, x0 = corners[p, 1] - ylo, corners[p, 0] - xlo
        for y in range(y0, y0 + S1):
            for x in range(x0, x0 + S1):
                need[y, x] = True
    run0 = np.empty(Hm * (Wm // 2 + 1), np.uint64)
    run1 = np.empty_like(run0)
    nrun = 0
    end = -SPAN_GAP - 1
    for y in range(Hm):
        for x in range(Wm):
            if need[y, x]:
                n = y * Wr + x
                if n - end <= SPAN_GAP and nrun > 0:
                    run1[nrun - 1] = n + 1
                else:
                    run0[nrun] = n
                    run1[nrun] = n + 1
                    nrun += 1
                end = n + 1
    total = uint64(0)
    for k in range(nrun):
        total += run1[k] - run0[k]
    if total > SHARED_SPAN_RATIO * P * S1 * S:
        return ylo, xlo, Hm, Wm, none, none
    return ylo, xlo, Hm, Wm, run0[:nrun], run1[:nrun]


@inline
def _conv1_map_input(level, ylo, xlo, Hm, Wm):
    """The level under a conv1 map (Hm + 2 rows of Wm + 2 from row ylo, column xlo), channel-major, zeros
    outside the level, +2 values at the end (a span may run over a row end). Returns (xin, Lr)."""
    H, W, Cin = level.shape
    Wr = Wm + 2
    Lr = (Hm + 2) * Wr
    xin = np.zeros(Cin * Lr + 2, np.float32)
    for y in range(max(0, ylo), min(H, ylo + Hm + 2)):
        for x in range(max(0, xlo), min(W, xlo + Wr)):
            for c in range(Cin):
                xin[c * Lr + (y - ylo) * Wr + (x - xlo)] = level[y, x, c]
    return xin, Lr


@njit(cache=True)
def _face_plan(level, corners, w1t, b1p, w2f, b2, wa, ba, out):
    """How one face's work items run (_face_item), after checking its arguments (level_patch_features'):
    (n_map, ylo, xlo, Wr, Lr, xin, run0, run1, c1) with n_map blocks of CONV1_OUT_BLOCK channels of a shared
    conv1 map c1 (rows Wr wide, from level row ylo, column xlo; only its spans run0, run1 computed) over xin
    (_conv1_map_input, rows Wr wide, Lr values a channel); n_map = 0 and empty arrays when the patches go one
    by one."""
    P = corners.shape[0]
    C = b2.shape[0]
    if not _feature_shapes_ok(level.shape[2], PATCH_SIZE, w1t, b1p, w2f, b2, wa, ba) or corners.shape[1] != 2 \
            or P < 1 or out.shape[0] != P or out.shape[1] != 8 * C:
        raise ValueError("level_patch_features: level must be (H, W, 3), corners (P, 2) with P >= 1, out "
                         "(P, 8C), and the weights as for patch_features")
    ylo, xlo, Hm, Wm, run0, run1 = _conv1_map_plan(corners)
    if run0.shape[0] == 0:
        return 0, ylo, xlo, 0, 0, np.empty(0, np.float32), run0, run1, np.empty((0, 0), np.float32)
    xin, Lr = _conv1_map_input(level, ylo, xlo, Hm, Wm)
    Wr = Wm + 2
    rows = _conv1_rows(C)
    return rows // CONV1_OUT_BLOCK, ylo, xlo, Wr, Lr, xin, run0, run1, np.empty((rows, Hm * Wr), np.float32)


@inline
def _face_item(t, plan, level, corners, w1t, b1p, w2f, b2, wa, ba, scratch, done, out, out0):
    """Work item t of one face (level (H, W, 3), corners (P, 2), plan: _face_plan) into out[out0:]. The first
    n_map items compute a block of CONV1_OUT_BLOCK channels of the shared conv1 map each, and count it in
    done (_finish); the next ones take FEATURE_ITEM patches each: from the map once every block is finished
    (_wait_for), or one by one (their own conv1, _group_conv1)."""
    n_map, ylo, xlo, Wr, Lr, xin, run0, run1, c1 = plan
    if t < n_map:
        for k in range(run0.shape[0]):
            _conv1_span(xin, w1t, b1p, t * CONV1_OUT_BLOCK, c1, uint64(Wr), uint64(Lr), run0[k], run1[k])
        _finish(done)
        return
    P = corners.shape[0]
    p0 = (t - n_map) * FEATURE_ITEM
    n = min(P, p0 + FEATURE_ITEM) - p0
    xt, c1g, p1g, tail = scratch
    if n_map == 0:                                 # one by one: the group's own conv1 and pool1
        for k in range(n):
            _patch_input_from_level(level, corners[p0 + k, 0], corners[p0 + k, 1], xt, k)
        _group_conv1(xt, n, w1t, b1p, c1g, p1g)
    else:                                          # from the shared map
        _wait_for(done, n_map)
    p1, rowmax = tail[0], tail[4]
    for k in range(n):
        p = p0 + k
        if n_map == 0:
            src, base, Q = p1g, np.int64(k * POOL1_STRIDE), np.int64(GROUP_POOL_W)
        else:
            _pool1(c1, (corners[p, 1] - ylo) * Wr + corners[p, 0] - xlo, Wr, p1, POOL1_SIDE, rowmax)
            src, base, Q = p1, np.int64(0), np.int64(POOL1_SIDE)
        _patch_from_pool1(src, base, Q, w2f, b2, wa, ba, tail, out[out0 + p])


@inline
def _n_items(plan, P):
    """The work items of one face: its conv1 map's blocks, then its groups of patches."""
    return plan[0] + (P + FEATURE_ITEM - 1) // FEATURE_ITEM


def level_patch_features(level, corners, w1t, b1p, w2f, b2, wa, ba, out):
    """patch_features(extract_patches(level, corners, 14), ...) of one face written into out (P, 8C), bit for
    bit, with conv1 shared between the overlapping patches (see above); the work is split between threads
    by output channel (conv1 map) and by patch (_face_item, one parallel run).

    level (H, W, 3) float32; corners (P, 2) int64 top-left (col, row); weights as patch_features;
    out (P, 8C) float32, written. Returns whether conv1 was shared.
    """
    plan = _face_plan(level, corners, w1t, b1p, w2f, b2, wa, ba, out)
    n = _n_items.py_func(plan, corners.shape[0])           # in Python: no call into compiled code
    run_parallel(_face_items, n, n, *plan, level, corners, w1t, b1p, w2f, b2, wa, ba, np.zeros(1, np.int64), out)
    return plan[0] > 0


@njit(nogil=True, cache=True)
def _face_items(counter, n_items, n_map, ylo, xlo, Wr, Lr, xin, run0, run1, c1, level, corners, w1t, b1p, w2f, b2,
                wa, ba, done, out):
    """level_patch_features' worker (parallel.run_parallel): one face's items (_face_item) taken in turn;
    the plan (_face_plan) comes as its fields (a parallel loop takes no tuples); done counts the finished
    conv1 map blocks."""
    plan = (n_map, ylo, xlo, Wr, Lr, xin, run0, run1, c1)
    t = _take(counter)
    if t < n_items:
        scratch = _group_scratch(b2.shape[0], n_map == 0)
        while t < n_items:
            _face_item(t, plan, level, corners, w1t, b1p, w2f, b2, wa, ba, scratch, done, out, 0)
            t = _take(counter)


def levels_patch_features(data, offsets, shapes, corners, w1t, b1p, w2f, b2, wa, ba, out):
    """level_patch_features for many faces at once, the faces split between threads (each face on one):
    face b's level is the (shapes[b, 0], shapes[b, 1], shapes[b, 2]) float32 array at data[offsets[b]:]
    (data flat float32, offsets (B,), shapes (B, 3) int64), corners (B, P, 2) int64, out (B*P, 8C)
    float32, written; face b's patches go to rows b * P .. (b + 1) * P - 1. Bit-identical to
    level_patch_features face by face. Returns how many faces shared conv1."""
    B = corners.shape[0] if isinstance(corners, np.ndarray) and corners.ndim == 3 else -1
    if not (B >= 0 and corners.shape[1] >= 1 and corners.shape[2] == 2 and isinstance(offsets, np.ndarray)
            and offsets.shape == (B,) and isinstance(shapes, np.ndarray) and shapes.shape == (B, 3)
            and isinstance(out, np.ndarray) and out.shape == (B * corners.shape[1], 8 * np.shape(b2)[0])):
        raise ValueError("levels_patch_features: one offset and (H, W, 3) shape per face, corners (B, P, 2) "
                         "with P >= 1, out (B * P, 8C)")
    if B and not ((shapes[:, 2] == CONV1_IN).all() and _feature_shapes_ok(CONV1_IN, PATCH_SIZE, w1t, b1p, w2f, b2, wa,
                                                                           ba)):
        raise ValueError("levels_patch_features: levels must be (H, W, 3) and the weights as for patch_features")
    for b in range(B):
        _slot(data, offsets[b], shapes[b, 0], shapes[b, 1], shapes[b, 2])      # raises if it does not fit
    shared = np.zeros(B, np.int64)
    run_parallel(_faces, B, B, data, offsets, shapes, corners, w1t, b1p, w2f, b2, wa, ba, out, shared)
    return int(shared.sum())


@njit(nogil=True, cache=True)
def _faces(counter, B, data, offsets, shapes, corners, w1t, b1p, w2f, b2, wa, ba, out, shared):
    """levels_patch_features' worker (parallel.run_parallel): the faces taken in turn, each face's items in
    order on one thread; shared[b] = whether face b shared conv1."""
    P = corners.shape[1]
    t = _take(counter)
    if t < B:
        scratch = _group_scratch(b2.shape[0], True)
        done = np.zeros(1, np.int64)
        while t < B:
            level = _slot(data, offsets[t], shapes[t, 0], shapes[t, 1], shapes[t, 2])
            plan = _face_plan(level, corners[t], w1t, b1p, w2f, b2, wa, ba, out[t * P:(t + 1) * P])
            done[0] = 0
            for i in range(_n_items(plan, P)):
                _face_item(i, plan, level, corners[t], w1t, b1p, w2f, b2, wa, ba, scratch, done, out, t * P)
            shared[t] = plan[0] > 0
            t = _take(counter)
