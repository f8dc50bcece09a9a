"""Numba kernels: the fast, explicit-loop versions of `kernels_ref.py` (their readable twins).

Rules for every kernel here:
- no `fastmath` (results must not depend on reassociation, and NaN/inf keep their meaning);
- every multiply-add of the network's layers is one fused multiply-add (`madd`: acc + x * w rounded once),
  never a multiply and an add, so vectorised and scalar loops give the same bits on every machine;
- `cache=True`, so a second process loads the compiled code from disk instead of compiling again;
- float32 activations in and out; the accumulator type is stated in each docstring;
- the summation order of every output element is fixed by the loop nest and does not depend on the batch
  size or on how `prange` splits the work between threads, so results are bit-identical whether a face is
  run alone or in a batch, on one thread or many.
"""
from __future__ import annotations

import math

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic, overload

# --- constants that fix results (part of the numerical contract: a bit-exact port copies them; docs/porting.md)
# The fully connected kernel sums its K inputs in fixed chunks of FC_KCHUNK, each from 0, then bias + chunk 0 +
# chunk 1 + ...
FC_KCHUNK = 256
# (mean_std's MEAN_STD_LANES, below with its kernel, is the other one.)

# --- constants that only tune speed (no result depends on them) ------------------------------------------------
# each work item of the fully connected kernel reuses a weight row for FC_ROWS inputs of the batch
FC_ROWS = 8
# with at least two groups of FC_GROUP_BLOCKS blocks of FC_ROWS inputs, fully_connected runs the groups in
# parallel, else the chunks
FC_GROUP_BLOCKS = 4
# a layer with at most this many weights runs on the calling thread only: waking a waiting thread (with
# passive OpenMP waiting, an empty parallel region costs tens of microseconds) costs more than the layer's
# work (speed only: no result depends on it)
FC_SERIAL_WEIGHTS = 2 ** 17


# --- weight storage -----------------------------------------------------------------------------------------

# Weights reach the fully connected kernel as float32, int8 (quantize.py) or uint16 holding IEEE 754
# binary16 bit patterns (float16 storage: Numba has no float16 type on the CPU). `widen` turns one element
# into float32, exactly in every case. x86 CPUs with F16C convert halves in one instruction (vcvtph2ps);
# elsewhere the conversion is done with integer operations (the same values, bit for bit).

def _host_has(x86_feature: str) -> bool:
    """Whether this CPU has an instruction set that 64-bit ARM always has and x86 may have (LLVM's name of
    the x86 feature, e.g. "f16c", "fma"); False elsewhere or when the features are unknown (the portable
    path is then taken)."""
    triple = llvm.get_process_triple()
    if triple.startswith(("aarch64", "arm64")):
        return True
    if not triple.startswith("x86"):
        return False
    try:
        return f"+{x86_feature}" in llvm.get_host_cpu_features().flatten().split(",")   # "-f16c" when absent
    except RuntimeError:
        return False


def _half_in_hardware() -> bool:
    """Whether LLVM turns `fpext half -> float` into one instruction here (else it may call a runtime
    function that a JIT-ed kernel cannot always link): x86 with F16C, and 64-bit ARM (always has it)."""
    return _host_has("f16c")


HALF_IN_HARDWARE = _half_in_hardware()


@intrinsic
def _half_bits_fpext(typingctx, bits):
    # LLVM `fpext half -> float` on the 16 bits: exact; one vcvtph2ps on x86 with F16C, fcvt on ARM
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _bits_as_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@njit(cache=True)
def _half_bits_integer(bits):
    # exponent and mantissa moved into float32's fields give the half's magnitude times 2**-112 (normal or
    # subnormal alike); multiplying by 2**112 is exact
    h = np.uint32(bits)
    f = _bits_as_float32((h & np.uint32(0x7FFF)) << np.uint32(13)) * np.float32(2.0 ** 112)
    return -f if h & np.uint32(0x8000) else f


def widen(v):
    """One stored weight as float32: float32 unchanged, int8 converted, uint16 read as a binary16 bit
    pattern (finite; the loaders reject inf and NaN). Exact in every case."""
    if isinstance(v, np.uint16):
        return np.float32(np.array(v).view(np.float16))
    return np.float32(v)


@overload(widen)
def _widen_impl(v):
    if isinstance(v, types.Integer) and v.bitwidth == 16 and not v.signed:
        half = _half_bits_fpext if HALF_IN_HARDWARE else _half_bits_integer
        return lambda v: half(v)
    return lambda v: np.float32(v)


# --- fused multiply-add ---------------------------------------------------------------------------------------

# Every multiply-add of the network (convolutions, fully connected layers) is one fused multiply-add:
# acc + x * w rounded once to float32 (IEEE 754 fusedMultiplyAdd), the same bits on every machine whether
# LLVM vectorises the loop or not. CPUs with FMA units (x86 with FMA3, 64-bit ARM) do it in one instruction
# (LLVM's llvm.fma); elsewhere `madd` computes the same correctly rounded value in float64 arithmetic.

def _fma_in_hardware() -> bool:
    """Whether this CPU has fused multiply-add instructions (x86 FMA3; 64-bit ARM always has them)."""
    return _host_has("fma")


FMA_IN_HARDWARE = _fma_in_hardware()


@intrinsic
def _fma_llvm(typingctx, acc, x, w):
    # llvm.fma.f32(x, w, acc): x * w + acc with one rounding, by definition (never split into two)
    if not all(a == types.float32 for a in (acc, x, w)):
        return None
    def codegen(context, builder, signature, args):
        return builder.fma(args[1], args[2], args[0])
    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _float64_bits(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.uint64(types.float64), codegen


@njit(cache=True)
def _fma_emulated(acc, x, w):
    """acc + x * w (float32) rounded once, in float64 arithmetic: the product of two float32 is exact in
    float64; the sum is rounded to odd (TwoSum gives its exact error; an even result is moved one ulp toward
    the error), and 53 bits rounded to odd, then to float32's 24, give the correctly rounded sum (Boldo and
    Melquiond, 2008)."""
    p = np.float64(x) * np.float64(w)
    c = np.float64(acc)
    s = p + c
    if not np.isfinite(s):
        return np.float32(s)
    t = s - p
    e = (p - (s - t)) + (c - t)                      # s + e == p + c exactly
    if e != 0.0 and (_float64_bits(s) & np.uint64(1)) == np.uint64(0):
        s = np.nextafter(s, np.inf if e > 0.0 else -np.inf)
    return np.float32(s)


def madd(acc, x, w):
    """acc + x * w for float32 acc, x, w with a single rounding to float32 (a fused multiply-add)."""
    return _fma_emulated(np.float32(acc), np.float32(x), np.float32(w))


@overload(madd)
def _madd_impl(acc, x, w):
    if FMA_IN_HARDWARE:
        return lambda acc, x, w: _fma_llvm(acc, x, w)
    return lambda acc, x, w: _fma_emulated(acc, x, w)


# --- work taken in turn by the threads ----------------------------------------------------------------------
#
# prange splits a loop's iterations between the threads in equal contiguous shares, fixed before they start;
# when one thread runs slower (its core shared with another process, or costlier items in its share), the
# others wait for it at the end. The kernels whose loops are long or uneven let every thread take the next
# work item as soon as it is done with one, from a shared counter (_take):
#
#     nxt = np.zeros(1, np.int64)
#     for _ in prange(n):            # n slots; each thread's first slot takes items until none is left,
#         t = _take(nxt)             # its other slots find none
#         if t < n:
#             ... scratch for this thread ...
#             while t < n:
#                 ... work item t ...
#                 t = _take(nxt)
#
# Which thread computes an item never changes its result (each item's arithmetic is fixed), so this keeps
# every result bit for bit.

@intrinsic
def _take(typingctx, counter):
    """counter[0] += 1 as one atomic operation (LLVM's atomicrmw add), returning the value before: the number
    of the next work item, each number handed out once whatever the threads do. counter: int64 array."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, value=args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [context.get_constant(types.intp, 0)],
                                       wraparound=False)
        return builder.atomic_rmw("add", ptr, context.get_constant(types.int64, 1), "monotonic")
    return types.int64(counter), codegen


# --- image resampling ---------------------------------------------------------------------------------------

@njit(cache=True)
def _tri_cdf(s):
    """Integral of the tent max(0, 1 - |u|) from -inf to s."""
    if s <= -1.0:
        return 0.0
    if s >= 1.0:
        return 1.0
    if s <= 0.0:
        return 0.5 * (1.0 + s) * (1.0 + s)
    return 1.0 - 0.5 * (1.0 - s) * (1.0 - s)


@njit(cache=True)
def _kernel_1d(t, b):
    """kernels_ref.kernel_1d at one offset t: the tent, averaged over a box of width b (tent if b = 0)."""
    if b == 0.0:
        return max(0.0, 1.0 - abs(t))
    return (_tri_cdf(t + 0.5 * b) - _tri_cdf(t - 0.5 * b)) / b


@njit(cache=True)
def _tap_shape(step):
    """(b, radius, T) of a resampling with this step: the box width b averaged over, the kernel's radius
    and the number of taps T per output."""
    b = max(0.0, step - 1.0)
    radius = 1.0 + 0.5 * b
    return b, radius, int(math.ceil(2.0 * radius)) + 2


@njit(cache=True)
def _axis_taps(origin, step, n_out, size):
    """Taps along one axis (see kernels_ref.resample_weights): for output j, taps first[j] + t, t < T,
    with weights w[j, t] (float64, normalised; taps outside [0, size) get weight 0)."""
    b, radius, T = _tap_shape(step)
    first = np.empty(n_out, np.int64)
    w = np.zeros((n_out, T), np.float64)
    for j in range(n_out):
        x = origin + step * j
        k0 = int(math.floor(x - radius))
        first[j] = k0
        norm = 0.0
        for t in range(T):
            wt = _kernel_1d(x - (k0 + t), b)
            norm += wt
            w[j, t] = wt
        for t in range(T):
            k = k0 + t
            w[j, t] = w[j, t] / norm if (0 <= k < size) else 0.0
    return first, w


# output rows per work item of resample (speed only)
RESAMPLE_ROWS = 16


@njit(cache=True)
def resample_span(origin, step, n_out, size):
    """(first, last): the source pixels of one axis, inclusive and within [0, size), that outputs
    0 .. n_out - 1 of a resampling take taps from (first > last if none): the part of an image a caller must
    hold (resample_many's window). The same arithmetic as _axis_taps, so the same pixels."""
    _, radius, T = _tap_shape(step)
    first = int(math.floor(origin - radius))
    last = int(math.floor(origin + step * (n_out - 1) - radius)) + T - 1
    return max(0, first), min(size - 1, last)


@njit(cache=True)
def _resample_setup(H, W, C, origin_x, origin_y, step, out_h, out_w):
    """The taps of both axes of an H x W x C image and the source columns that any output uses: (fx, wx,
    fy, wy, c_lo, n), n the number of source values (columns x channels) of one row from column c_lo; n = 0
    if none."""
    if not step > 0.0 or out_h < 1 or out_w < 1:
        raise ValueError("resample: step must be > 0 and the output at least 1x1")
    fx, wx = _axis_taps(origin_x, step, out_w, W)
    fy, wy = _axis_taps(origin_y, step, out_h, H)
    c_lo = max(0, fx[0])
    c_hi = min(W - 1, fx[out_w - 1] + wx.shape[1] - 1)
    return fx, wx, fy, wy, c_lo, max(0, (c_hi - c_lo + 1) * C)


@njit(cache=True)
def _resample_tile(rows, top, left, C, fx, wx, fy, wy, c_lo, n, flat, tile):
    """Output rows tile * RESAMPLE_ROWS .. of one resampling (see resample) into flat (out_h, out_w * C).
    rows: the image's rows from row top, columns from column left, as (rows, cols * C)."""
    out_h, out_w = flat.shape[0], fx.shape[0]
    Tx, Ty = wx.shape[1], wy.shape[1]
    RB = RESAMPLE_ROWS
    r0 = tile * RB
    nr = min(out_h, r0 + RB) - r0
    blend = np.zeros((RB, n), np.float64)           # vertical pass: blend[r, k] for output row r0 + r
    for r in range(nr):
        for t in range(Ty):
            wt = wy[r0 + r, t]
            if wt != 0.0:                            # taps outside the image have weight 0
                src = rows[fy[r0 + r] + t - top, (c_lo - left) * C:(c_lo - left) * C + n]
                for k in range(n):
                    blend[r, k] += wt * src[k]
    blend_t = np.empty((n, RB), np.float64)          # the tile transposed: column-channel k, then row
    for k in range(n):
        for r in range(RB):
            blend_t[k, r] = blend[r, k]
    acc = np.empty(RB, np.float64)
    for c in range(out_w):                           # horizontal pass, all rows of the tile at once
        for ch in range(C):
            for r in range(RB):
                acc[r] = 0.0
            for t in range(Tx):
                wt = wx[c, t]
                if wt != 0.0:
                    k = (fx[c] + t - c_lo) * C + ch
                    for r in range(RB):
                        acc[r] += wt * blend_t[k, r]
            for r in range(nr):
                flat[r0 + r, c * C + ch] = acc[r]


@njit(cache=True)
def resample(image, origin_x, origin_y, step, out_h, out_w):
    """Axis-aligned affine resampling, bilinear, antialiased when it shrinks (kernels_ref.kernel_1d), zeros
    outside the image.

    image (H, W, C) uint8 or float32; output pixel (r, c) is centred at source
    (origin_x + step * c, origin_y + step * r); returns (out_h, out_w, C) float32.
    Separable, vertical pass first, on tiles of RESAMPLE_ROWS output rows (the tiles run in parallel): the
    vertical pass blends the source rows under each output row (contiguous multiply-adds along the source
    columns that matter, which vectorise); the tile is transposed in cache, so the horizontal pass runs
    along the tile's rows (a short contiguous vector per tap) instead of one scalar at a time. Each output is
    the same sum in the same order either way: vertical taps in order, then horizontal taps in order, taps
    of weight 0 skipped. Accumulator: float64.
    """
    if out_h < 1 or out_w < 1:
        raise ValueError("resample: step must be > 0 and the output at least 1x1")
    out = np.empty((out_h, out_w, image.shape[2]), np.float32)
    resample_into(image, origin_x, origin_y, step, out)
    return out


@njit(parallel=True, cache=True)
def resample_into(image, origin_x, origin_y, step, out):
    """resample(image, origin_x, origin_y, step, H, W) written into out (H, W, C) float32 (every output is
    written: its previous contents do not matter)."""
    H, W, C = image.shape
    out_h, out_w = out.shape[0], out.shape[1]
    if out.shape[2] != C:
        raise ValueError("resample: the output needs the image's channels")
    fx, wx, fy, wy, c_lo, n = _resample_setup(H, W, C, origin_x, origin_y, step, out_h, out_w)
    flat = out.reshape(out_h, out_w * C)
    if n == 0:                                       # no source column under the output: all zeros
        flat[:, :] = 0.0
        return
    rows = np.ascontiguousarray(image).reshape(H, W * C)
    for tile in prange((out_h + RESAMPLE_ROWS - 1) // RESAMPLE_ROWS):
        _resample_tile(rows, 0, 0, C, fx, wx, fy, wy, c_lo, n, flat, tile)


@njit(cache=True)
def _slot(data, offset, h, w, c):
    """The (h, w, c) array at data[offset:] (a view); ValueError if it does not fit in data."""
    if offset < 0 or h < 0 or w < 0 or c < 0 or offset + h * w * c > data.shape[0]:
        raise ValueError("an image slot (offset, shape) lies outside its buffer")
    return data[offset:offset + h * w * c].reshape((h, w, c))


@njit(parallel=True, cache=True)
def resample_many(image, window, origins_x, origins_y, steps, data, offsets, shapes):
    """Many resamplings of one image at once, one per thread at a time, into slots of one flat float32 buffer
    data (every value of a slot is written): data[offsets[i]:] holds output i as (shapes[i, 0],
    shapes[i, 1], C) = resample(full image, origins_x[i], origins_y[i], steps[i], shapes[i, 0],
    shapes[i, 1]), bit for bit (the same tiles in the same order). offsets (J,) and shapes (J, 2) int64.

    window (top, left, H, W) int64: `image` (h, w, C) holds rows top .. top + h - 1 and columns left ..
    left + w - 1 of the full H x W image (all of it: (0, 0, h, w)), which must include every pixel an
    output takes (resample_span gives them; ValueError otherwise). So a caller can convert only a face's
    region of a large image, with the same result bit for bit."""
    h, w, C = image.shape
    top, left, H, W = window[0], window[1], window[2], window[3]
    if top < 0 or left < 0 or top + h > H or left + w > W:
        raise ValueError("resample_many: the window (top, left, H, W) does not fit its image")
    rows = np.ascontiguousarray(image).reshape(h, w * C)
    J = offsets.shape[0]
    if origins_x.shape[0] != J or origins_y.shape[0] != J or steps.shape[0] != J or shapes.shape[0] != J \
            or shapes.shape[1] != 2:
        raise ValueError("resample_many: one origin, step, offset and (h, w) per output")
    for i in range(J):
        _slot(data, offsets[i], shapes[i, 0], shapes[i, 1], C)          # raises if it does not fit
        if not steps[i] > 0.0 or shapes[i, 0] < 1 or shapes[i, 1] < 1:
            raise ValueError("resample: step must be > 0 and the output at least 1x1")
        r_lo, r_hi = resample_span(origins_y[i], steps[i], shapes[i, 0], H)
        c_lo, c_hi = resample_span(origins_x[i], steps[i], shapes[i, 1], W)
        if r_lo <= r_hi and c_lo <= c_hi and (r_lo < top or r_hi >= top + h or c_lo < left or c_hi >= left + w):
            raise ValueError("resample_many: the image window does not hold every pixel an output takes")
    nxt = np.zeros(1, np.int64)
    for _ in prange(J):                                  # the resamplings taken in turn (_take)
        i = _take(nxt)
        while i < J:
            out_h, out_w = shapes[i, 0], shapes[i, 1]
            fx, wx, fy, wy, c_lo, n = _resample_setup(H, W, C, origins_x[i], origins_y[i], steps[i], out_h, out_w)
            flat = data[offsets[i]:offsets[i] + out_h * out_w * C].reshape((out_h, out_w * C))
            if n == 0:                               # no source column under the output: all zeros
                flat[:, :] = 0.0
            else:
                for tile in range((out_h + RESAMPLE_ROWS - 1) // RESAMPLE_ROWS):
                    _resample_tile(rows, top, left, C, fx, wx, fy, wy, c_lo, n, flat, tile)
            i = _take(nxt)


# mean_std sums in this many interleaved partial sums (fixes results: part of the numerical contract)
MEAN_STD_LANES = 8


@njit(cache=True)
def mean_std(x):
    """Mean and population standard deviation of a flat array, in float64, two passes. Each pass sums in
    MEAN_STD_LANES interleaved partial sums (value i goes to sum i % MEAN_STD_LANES; they vectorise), added
    up in lane order at the end: a fixed order, whatever the machine."""
    n = x.size
    V = MEAN_STD_LANES
    m = n - n % V
    part = np.zeros(V, np.float64)
    for i in range(0, m, V):
        for v in range(V):
            part[v] += x[i + v]
    for i in range(m, n):
        part[i - m] += x[i]
    total = 0.0
    for v in range(V):
        total += part[v]
    mean = total / n
    part[:] = 0.0
    for i in range(0, m, V):
        for v in range(V):
            d = x[i + v] - mean
            part[v] += d * d
    for i in range(m, n):
        d = x[i] - mean
        part[i - m] += d * d
    ss = 0.0
    for v in range(V):
        ss += part[v]
    return mean, math.sqrt(ss / n)


@njit(cache=True)
def _level0_stats(level0):
    """mean_std of a flat level 0, a deviation of 0 (a constant level) replaced by 1, so the levels normalise
    to zeros instead of NaN."""
    mean, std = mean_std(level0)
    return mean, (std if std > 0.0 else 1.0)


@njit(cache=True)
def _normalise(x, mean, std):
    """x = float32((x - mean) / std) in place, computed in float64."""
    for i in range(x.size):
        x[i] = np.float32((x[i] - mean) / std)


@njit(cache=True)
def normalise_pyramid(level0, level1, level2):
    """Normalise one face's three flat float32 levels in place by the mean and deviation of level 0
    (_level0_stats)."""
    mean, std = _level0_stats(level0)
    _normalise(level0, mean, std)
    _normalise(level1, mean, std)
    _normalise(level2, mean, std)


@njit(parallel=True, cache=True)
def normalise_pyramids(data, offsets, sizes):
    """normalise_pyramid for many faces in place, one face per thread at a time: face f's level L is the
    sizes[f, L] values at data[offsets[f, L]:], level 0 first. offsets, sizes (F, n_levels) int64."""
    F, n_levels = offsets.shape
    if sizes.shape[0] != F or sizes.shape[1] != n_levels or n_levels < 1:
        raise ValueError("normalise_pyramids: one offset and size per face and level")
    for f in range(F):
        for L in range(n_levels):
            if offsets[f, L] < 0 or sizes[f, L] < 1 or offsets[f, L] + sizes[f, L] > data.shape[0]:
                raise ValueError("normalise_pyramids: a level lies outside the buffer")
    nxt = np.zeros(1, np.int64)
    for _ in prange(F):                                  # the faces taken in turn (_take)
        f = _take(nxt)
        while f < F:
            o0 = offsets[f, 0]
            mean, std = _level0_stats(data[o0:o0 + sizes[f, 0]])
            for L in range(n_levels):
                o = offsets[f, L]
                _normalise(data[o:o + sizes[f, L]], mean, std)
            f = _take(nxt)


# --- patches --------------------------------------------------------------------------------------------------

@njit(cache=True)
def extract_patches(level, corners, size):
    """Nearest-pixel patches, zeros outside the image.

    level (H, W, C) float32; corners (P, 2) int64 top-left (col, row) -> (P, size, size, C) float32.
    """
    H, W, C = level.shape
    P = corners.shape[0]
    if corners.shape[1] != 2:
        raise ValueError("extract_patches: corners must be (P, 2)")
    out = np.zeros((P, size, size, C), np.float32)
    for p in range(P):                     # serial: a face's patches are too little work to share out
        c0, r0 = corners[p, 0], corners[p, 1]
        for i in range(size):
            r = r0 + i
            if r < 0 or r >= H:
                continue
            for j in range(size):
                c = c0 + j
                if 0 <= c < W:
                    for ch in range(C):
                        out[p, i, j, ch] = level[r, c, ch]
    return out


# --- the network's layers ------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def conv3x3(x, weight, bias, relu):
    """Valid 3x3 cross-correlation + bias (+ ReLU if relu), stride 1, over many patches at once.

    x (B, H, W, Cin) float32; weight (3, 3, Cin, Cout); bias (Cout,) -> (B, H-2, W-2, Cout) float32.
    Accumulator: float32, starting at the bias, summed over (c, di, dj) in that order, each term a fused
    multiply-add.
    """
    B, H, W, Cin = x.shape
    Cout = weight.shape[3]
    if weight.shape[0] != 3 or weight.shape[1] != 3 or weight.shape[2] != Cin or bias.shape[0] != Cout:
        raise ValueError("conv3x3: weight must be (3, 3, Cin, Cout) and bias (Cout,) for x (B, H, W, Cin)")
    if H < 3 or W < 3:
        raise ValueError("conv3x3: x must be at least 3x3")
    OH, OW = H - 2, W - 2
    out = np.empty((B, OH, OW, Cout), np.float32)
    for b in prange(B):
        acc = np.empty(Cout, np.float32)
        for i in range(OH):
            for j in range(OW):
                for o in range(Cout):
                    acc[o] = bias[o]
                for c in range(Cin):
                    for di in range(3):
                        for dj in range(3):
                            xv = x[b, i + di, j + dj, c]
                            for o in range(Cout):
                                acc[o] = madd(acc[o], xv, weight[di, dj, c, o])
                for o in range(Cout):
                    v = acc[o]
                    out[b, i, j, o] = v if (not relu or v > 0) else np.float32(0.0)
    return out


@njit(parallel=True, cache=True)
def maxpool2x2(x):
    """2x2 max-pool, stride 2. x (B, H, W, C) float32 -> (B, H//2, W//2, C) float32."""
    B, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    out = np.empty((B, OH, OW, C), np.float32)
    for b in prange(B):
        for i in range(OH):
            for j in range(OW):
                for c in range(C):
                    m = x[b, 2 * i, 2 * j, c]
                    m = max(m, x[b, 2 * i, 2 * j + 1, c])
                    m = max(m, x[b, 2 * i + 1, 2 * j, c])
                    m = max(m, x[b, 2 * i + 1, 2 * j + 1, c])
                    out[b, i, j, c] = m
    return out


@njit(parallel=True, cache=True)
def crop_concat(conv2, pool2):
    """Channels [centre 2x2 of conv2, pool2], flattened (row, col, channel), channel-fastest.

    conv2 (B, 4, 4, C); pool2 (B, 2, 2, C) -> (B, 8C) float32.
    """
    B, _, _, C = conv2.shape
    if conv2.shape[1] != 4 or conv2.shape[2] != 4 or pool2.shape[0] != B or pool2.shape[1] != 2 \
            or pool2.shape[2] != 2 or pool2.shape[3] != C:
        raise ValueError("crop_concat: conv2 must be (B, 4, 4, C) and pool2 (B, 2, 2, C)")
    out = np.empty((B, 2 * 2 * 2 * C), np.float32)
    for b in prange(B):
        for r in range(2):
            for c in range(2):
                base = (r * 2 + c) * 2 * C
                for ch in range(C):
                    out[b, base + ch] = conv2[b, r + 1, c + 1, ch]
                    out[b, base + C + ch] = pool2[b, r, c, ch]
    return out


@njit(cache=True)
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


@njit(cache=True)
def _fc_chunk_blocks(x, weight, c, part, ks, xs):
    """Chunk c's partial sums of every block of FC_ROWS inputs into part[c] (_fc_chunk)."""
    B = x.shape[0]
    for r0 in range(0, B, FC_ROWS):
        _fc_chunk(x, weight, r0, min(B, r0 + FC_ROWS) - r0, c, part[c, r0:], ks, xs)


@njit(cache=True)
def _fc_sum_chunks(start, part, out, b):
    """out[b] = start + part[0, b] + part[1, b] + ..., in chunk order."""
    M = out.shape[1]
    for j in range(M):
        out[b, j] = start[j]
    for c in range(part.shape[0]):
        for j in range(M):
            out[b, j] += part[c, b, j]


@njit(parallel=True, cache=True)
def _fc_groups(x, weight, start, out):
    """out = start + x @ weight for two or more groups of FC_GROUP_BLOCKS blocks of FC_ROWS inputs: the groups
    in parallel; a group runs its blocks chunk by chunk (each chunk's weights come from memory once per group
    and from the cache for its other blocks), adding the chunks in order."""
    B, K = x.shape
    M = weight.shape[1]
    n_rb = (B + FC_ROWS - 1) // FC_ROWS
    n_kc = (K + FC_KCHUNK - 1) // FC_KCHUNK
    n_groups = (n_rb + FC_GROUP_BLOCKS - 1) // FC_GROUP_BLOCKS
    acc = np.empty((n_rb, FC_ROWS, M), np.float32)
    for g in prange(n_groups):
        ks, xs = np.empty(FC_KCHUNK, np.int64), np.empty(FC_KCHUNK, np.float32)
        for b in range(g * FC_GROUP_BLOCKS * FC_ROWS, min(B, (g + 1) * FC_GROUP_BLOCKS * FC_ROWS)):
            for j in range(M):
                out[b, j] = start[j]
        for c in range(n_kc):
            for rb in range(g * FC_GROUP_BLOCKS, min(n_rb, (g + 1) * FC_GROUP_BLOCKS)):
                r0 = rb * FC_ROWS
                nr = min(B, r0 + FC_ROWS) - r0
                _fc_chunk(x, weight, r0, nr, c, acc[rb], ks, xs)
                for r in range(nr):
                    for j in range(M):
                        out[r0 + r, j] += acc[rb, r, j]


@njit(parallel=True, cache=True)
def _fc_chunks(x, weight, start, out):
    """out = start + x @ weight for up to FC_GROUP_BLOCKS blocks of FC_ROWS inputs: the chunks in parallel
    (taken in turn by the threads, each for every block, so its weights come from memory once and from the
    cache after), their partial sums added after in chunk order."""
    B, K = x.shape
    n_kc = (K + FC_KCHUNK - 1) // FC_KCHUNK
    part = np.empty((n_kc, B, weight.shape[1]), np.float32)
    nxt = np.zeros(1, np.int64)
    for _ in prange(n_kc):
        c = _take(nxt)
        if c < n_kc:
            ks, xs = np.empty(FC_KCHUNK, np.int64), np.empty(FC_KCHUNK, np.float32)
            while c < n_kc:
                _fc_chunk_blocks(x, weight, c, part, ks, xs)
                c = _take(nxt)
    if B > FC_ROWS:
        for b in prange(B):
            _fc_sum_chunks(start, part, out, b)
    else:                                       # a few rows: on this thread
        for b in range(B):
            _fc_sum_chunks(start, part, out, b)


@njit(cache=True)
def _fc_serial(x, weight, start, out):
    """_fc_chunks on the calling thread only: for a small layer, where waking another thread costs more
    than the layer's work."""
    B, K = x.shape
    n_kc = (K + FC_KCHUNK - 1) // FC_KCHUNK
    part = np.empty((n_kc, B, weight.shape[1]), np.float32)
    ks, xs = np.empty(FC_KCHUNK, np.int64), np.empty(FC_KCHUNK, np.float32)
    for c in range(n_kc):
        _fc_chunk_blocks(x, weight, c, part, ks, xs)
    for b in range(B):
        _fc_sum_chunks(start, part, out, b)


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
    start = bias if scale is None else np.zeros(M, np.float32)       # the sum of the chunks starts here
    n_rb = (B + FC_ROWS - 1) // FC_ROWS
    if n_rb > FC_GROUP_BLOCKS:
        _fc_groups(x, weight, start, out)
    elif K * M <= FC_SERIAL_WEIGHTS:
        _fc_serial(x, weight, start, out)
    else:
        _fc_chunks(x, weight, start, out)
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
    a layer of at most FC_SERIAL_WEIGHTS weights on the calling thread, _fc_serial), and the chunks' partial
    sums are added after; from two groups of FC_GROUP_BLOCKS blocks up, the groups run in parallel, each
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


@njit(cache=True)
def relu(x):
    """max(x, 0), elementwise over a 1-D float32 array -> new array."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = x[i] if x[i] > 0 else np.float32(0.0)
    return out


@njit(cache=True)
def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise over a 1-D float32 array -> new array. Saturates to 0 or 1."""
    out = np.empty_like(x)
    one = np.float32(1.0)
    for i in range(x.size):
        out[i] = one / (one + np.exp(-x[i]))
    return out


@njit(cache=True)
def tanh(x):
    """tanh(x), elementwise over a 1-D float32 array -> new array."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = np.tanh(x[i])
    return out


@njit(cache=True)
def gate(features, attention):
    """features * attention, elementwise. Both (B, F) float32 -> (B, F) float32."""
    if features.shape != attention.shape:
        raise ValueError("gate: features and attention must have the same shape")
    out = np.empty_like(features)
    B, F = features.shape
    for b in range(B):
        for f in range(F):
            out[b, f] = features[b, f] * attention[b, f]
    return out


# --- the feature extractor, fused ----------------------------------------------------------------------------

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


@njit(cache=True)
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


@njit(cache=True)
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
GROUP_POOL_W = FEATURE_ITEM * 7


@njit(cache=True)
def _pool1_group(c1, n, p1g):
    """ReLU + 2x2 max-pool of a whole group's conv1 (rows GROUP_W wide, the n patches side by side, see
    GROUP_W) into p1g (C, 6 * GROUP_POOL_W): patch k's output (i, jj) at p1g[o, i * GROUP_POOL_W + k * 7 + jj].
    Each output is ReLU(max of its 4 inputs), as in _pool1; the 7th column of each patch pools its two
    conv1 columns that no patch uses and is never read. One loop over the group's row pair per output row
    (long enough to vectorise)."""
    zero = np.float32(0.0)
    for o in range(p1g.shape[0]):
        for i in range(6):
            r0 = uint64(2 * i * GROUP_W)
            r1 = r0 + uint64(GROUP_W)
            q = uint64(i * GROUP_POOL_W)
            for m in range(uint64(n * 7)):
                a = max(c1[o, r0 + 2 * m], c1[o, r0 + 2 * m + 1])
                b = max(c1[o, r1 + 2 * m], c1[o, r1 + 2 * m + 1])
                v = max(a, b)
                p1g[o, q + m] = v if v > zero else zero


@njit(cache=True)
def _add_row4(s0, s1, s2, s3, x0, x1, x2, x3, w):
    """One tap of conv2 for a row of 4 outputs: (s0 + x0 w, s1 + x1 w, s2 + x2 w, s3 + x3 w), each a fused
    multiply-add (inlined by LLVM; 4 independent sums)."""
    return madd(s0, x0, w), madd(s1, x1, w), madd(s2, x2, w), madd(s3, x3, w)


@njit(cache=True)
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


@njit(cache=True)
def _gated_from_pool1(p1, base, Q1, w2f, b2, wa, ba, c2, feat, part, ks, xs, out):
    """The rest of one patch after pool1 (its 6x6 per channel at p1[c, base:], rows Q1 apart): conv2 + ReLU
    -> maxpool2x2 -> crop_concat -> attention -> sigmoid -> gate, into out (8C,). c2, feat, part, ks, xs are
    scratch (_tail_scratch)."""
    C = b2.shape[0]
    F = 8 * C
    S2 = 4                                         # conv2 output side
    _conv2(p1, base, Q1, w2f, b2, c2, S2)
    # features = [centre 2x2 of conv2, pool2], (row, col, channel)
    for r in range(2):
        for cc in range(2):
            base = (r * 2 + cc) * 2 * C
            q0 = 2 * r * S2 + 2 * cc
            for o in range(C):
                feat[base + o] = c2[((r + 1) * S2 + cc + 1) * C + o]
                feat[base + C + o] = max(max(max(c2[q0 * C + o], c2[(q0 + 1) * C + o]),
                                             c2[(q0 + S2) * C + o]), c2[(q0 + S2 + 1) * C + o])
    # attention = sigmoid(bias + partial): the partial is the fully connected kernel's own chunk sum (F = 8C
    # <= FC_KCHUNK inputs make one chunk, summed from 0 over the non-zero features); gate (a feature of 0
    # gives 0 whatever its attention, so its sigmoid is not computed)
    one = np.float32(1.0)
    zero, one_row = np.int64(0), np.int64(1)      # not literal constants: the version _fc_chunk_blocks uses
    n = _fc_chunk(feat.reshape((1, F)), wa, zero, one_row, zero, part.reshape((1, F)), ks, xs)
    for j in range(F):
        out[j] = 0.0                               # 0 * sigmoid (finite, > 0) is +0 exactly: no exp needed
    for t in range(n):                             # the non-zero features, listed by _fc_chunk
        j = ks[t]
        s = ba[j] + part[j]
        out[j] = xs[t] * (one / (one + np.exp(-s)))


@njit(cache=True)
def _feature_shapes_ok(Cin, S, w1t, b1p, w2f, b2, wa, ba):
    """Whether the feature extractor's weights, in the layouts of feature_weights, fit Cin-channel SxS
    patches."""
    C = b2.shape[0]
    F = 8 * C
    return not (Cin != CONV1_IN or S != 14 or C < 1 or w1t.shape != (_conv1_rows(C), 9 * Cin)
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
GROUP_W = FEATURE_ITEM * 14
GROUP_L = 14 * GROUP_W + 2


@njit(cache=True)
def _tail_scratch(C):
    """Scratch of one patch after conv1, reused patch after patch: (p1, c2, feat, part, rowmax, ks, xs)."""
    return (np.empty((C, 36), np.float32), np.empty(16 * C, np.float32), np.empty(8 * C, np.float32),
            np.empty(8 * C, np.float32), np.empty(4 * 36, np.float32), np.empty(FC_KCHUNK, np.int64),
            np.empty(FC_KCHUNK, np.float32))


@njit(cache=True)
def _group_scratch(C):
    """Scratch of one work item of FEATURE_ITEM patches: (xt, c1, p1g, tail scratch)."""
    return (np.zeros(CONV1_IN * GROUP_L, np.float32), np.empty((_conv1_rows(C), 12 * GROUP_W), np.float32),
            np.empty((C, 6 * GROUP_POOL_W), np.float32), _tail_scratch(C))


@njit(cache=True)
def _group_features(n, w1t, b1, w2f, b2, wa, ba, scratch, out, p0):
    """n <= FEATURE_ITEM 14x14 patches, side by side in the scratch's xt (see GROUP_W), through the whole
    feature extractor into out[p0 + k]. conv1 runs as one span over the 12 output rows of the group: output
    i * GROUP_W + j reads input (i + di) * GROUP_W + j + dj of each channel (the 2 last columns of each
    patch are computed and not read), so each block of 4 channels is a few long vector loops, not n short
    ones."""
    xt, c1, p1g, tail = scratch
    p1, c2, feat, part, rowmax, ks, xs = tail
    for o in range(0, w1t.shape[0], CONV1_OUT_BLOCK):
        _conv1_span(xt, w1t, b1, o, c1, uint64(GROUP_W), uint64(GROUP_L), uint64(0),
                    uint64(11 * GROUP_W + (n - 1) * 14 + 12))
    _pool1_group(c1, n, p1g)
    for k in range(n):
        _gated_from_pool1(p1g, k * 7, np.int64(GROUP_POOL_W), w2f, b2, wa, ba, c2, feat, part, ks, xs, out[p0 + k])


@njit(cache=True)
def _patch_input_from_level(level, c0, r0, xt, k):
    """The 14x14 patch of level (H, W, Cin) with top-left (col c0, row r0) into slot k of a group's input xt
    (see GROUP_W), zeros outside the level: what extract_patches gives."""
    H, W, Cin = level.shape
    S = 14
    for r in range(S):
        y = r0 + r
        for cc in range(S):
            x = c0 + cc
            inside = 0 <= y < H and 0 <= x < W
            for c in range(Cin):
                xt[c * GROUP_L + r * GROUP_W + k * S + cc] = level[y, x, c] if inside else np.float32(0.0)


@njit(parallel=True, cache=True)
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
    BP, S, S_, Cin = patches.shape
    C = b2.shape[0]
    F = 8 * C
    if S_ != S or not _feature_shapes_ok(Cin, S, w1t, b1p, w2f, b2, wa, ba):
        raise ValueError("patch_features: patches must be (BP, 14, 14, 3) and the weights as feature_weights "
                         "gives them: conv1 (3, 3, 3, C), conv2 (3, 3, C, C), attention (8C, 8C), biases to match")
    gated = np.empty((BP, F), np.float32)
    G = (BP + FEATURE_ITEM - 1) // FEATURE_ITEM
    nxt = np.zeros(1, np.int64)
    for _ in prange(G):                            # the work items taken in turn (_take); a thread allocates
        t = _take(nxt)                             # its scratch once (an allocation), not once per item
        if t < G:
            scratch = _group_scratch(C)
            xt = scratch[0]
            while t < G:
                p0 = t * FEATURE_ITEM
                n = min(BP, p0 + FEATURE_ITEM) - p0
                for k in range(n):
                    for r in range(S):
                        for cc in range(S):
                            for c in range(Cin):
                                xt[c * GROUP_L + r * GROUP_W + k * S + cc] = patches[p0 + k, r, cc, c]
                _group_features(n, w1t, b1p, w2f, b2, wa, ba, scratch, gated, p0)
                t = _take(nxt)
    return gated


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


@njit(cache=True)
def _conv1_map_plan(corners):
    """Where conv1 runs for the 14x14 patches with top-left corners (P, 2) (col, row), when shared:
    (ylo, xlo, Hm, Wm, run0, run1): the box of conv1 positions (Hm x Wm from level row ylo, column xlo) and
    the spans [run0[k], run1[k]) of flat map indices y * (Wm + 2) + x to compute: the needed positions in
    row-major order, gaps of at most SPAN_GAP (or a row end) bridged so the spans run as long vectors (the
    extra outputs are never read). No spans when sharing does not pay (SHARED_MAP_LIMIT, SHARED_SPAN_RATIO)."""
    P = corners.shape[0]
    S1, S = 12, 14
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
        need[y0:y0 + S1, x0:x0 + S1] = True
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


@njit(cache=True)
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
def _level_group(level, corners, p0, n, w1t, b1, w2f, b2, wa, ba, scratch, out, out0):
    """Patches p0 .. p0 + n - 1 (n <= FEATURE_ITEM) at `corners` of the level, one by one (no sharing), into
    out[out0 + p]."""
    for k in range(n):
        _patch_input_from_level(level, corners[p0 + k, 0], corners[p0 + k, 1], scratch[0], k)
    _group_features(n, w1t, b1, w2f, b2, wa, ba, scratch, out, out0 + p0)


@njit(cache=True)
def _map_channels(xin, Lr, Wr, run0, run1, w1t, b1, c1, o):
    """Output channels o .. o + CONV1_OUT_BLOCK - 1 of the shared conv1 map c1 (rows of width Wr) over its
    spans."""
    for k in range(run0.shape[0]):
        _conv1_span(xin, w1t, b1, o, c1, uint64(Wr), uint64(Lr), run0[k], run1[k])


@njit(cache=True)
def _map_patches(c1, Wr, ylo, xlo, corners, p_lo, p_hi, w2f, b2, wa, ba, tail, out, out0):
    """Patches p_lo .. p_hi - 1 from their 12x12 blocks of the shared conv1 map into out[out0 + p]."""
    p1, c2, feat, part, rowmax, ks, xs = tail
    for p in range(p_lo, p_hi):
        _pool1(c1, (corners[p, 1] - ylo) * Wr + corners[p, 0] - xlo, Wr, p1, 6, rowmax)
        _gated_from_pool1(p1, np.int64(0), np.int64(6), w2f, b2, wa, ba, c2, feat, part, ks, xs, out[out0 + p])


@njit(parallel=True, cache=True)
def level_patch_features(level, corners, w1t, b1p, w2f, b2, wa, ba, out):
    """patch_features(extract_patches(level, corners, 14), ...) of one face written into out (P, 8C), bit for
    bit, with conv1 shared between the overlapping patches (see above); the work is split between threads
    by output channel (conv1 map) and by patch.

    level (H, W, 3) float32; corners (P, 2) int64 top-left (col, row); weights as patch_features;
    out (P, 8C) float32, written. Returns whether conv1 was shared.
    """
    H, W, Cin = level.shape
    P = corners.shape[0]
    C = b2.shape[0]
    if not _feature_shapes_ok(Cin, 14, w1t, b1p, w2f, b2, wa, ba) or corners.shape[1] != 2 or P < 1 \
            or out.shape[0] != P or out.shape[1] != 8 * C:
        raise ValueError("level_patch_features: level must be (H, W, 3), corners (P, 2) with P >= 1, out "
                         "(P, 8C), and the weights as for patch_features")
    ylo, xlo, Hm, Wm, run0, run1 = _conv1_map_plan(corners)
    G = (P + FEATURE_ITEM - 1) // FEATURE_ITEM
    next_item = np.zeros(1, np.int64)                    # the next work item of the patches (_take)
    if run0.shape[0] == 0:                               # one by one
        for _ in prange(G):
            t = _take(next_item)
            if t < G:
                scratch = _group_scratch(C)
                while t < G:
                    p0 = t * FEATURE_ITEM
                    _level_group(level, corners, p0, min(P, p0 + FEATURE_ITEM) - p0, w1t, b1p, w2f, b2, wa, ba,
                                 scratch, out, 0)
                    t = _take(next_item)
        return False
    xin, Lr = _conv1_map_input(level, ylo, xlo, Hm, Wm)
    Wr = Wm + 2
    c1 = np.empty((_conv1_rows(C), Hm * Wr), np.float32)  # conv1 map, rows of width Wr; only the spans written
    ng = w1t.shape[0] // CONV1_OUT_BLOCK
    next_group = np.zeros(1, np.int64)                   # the next block of conv1 channels (_take)
    for _ in prange(ng):
        g = _take(next_group)
        while g < ng:
            _map_channels(xin, Lr, Wr, run0, run1, w1t, b1p, c1, g * CONV1_OUT_BLOCK)
            g = _take(next_group)
    for _ in prange(G):
        t = _take(next_item)
        if t < G:
            tail = _tail_scratch(C)
            while t < G:
                p0 = t * FEATURE_ITEM
                _map_patches(c1, Wr, ylo, xlo, corners, p0, min(P, p0 + FEATURE_ITEM), w2f, b2, wa, ba, tail,
                             out, 0)
                t = _take(next_item)
    return True


@njit(parallel=True, cache=True)
def levels_patch_features(data, offsets, shapes, corners, w1t, b1p, w2f, b2, wa, ba, out):
    """level_patch_features for many faces at once, the faces split between threads (each face on one):
    face b's level is the (shapes[b, 0], shapes[b, 1], shapes[b, 2]) float32 array at data[offsets[b]:]
    (data flat float32, offsets (B,), shapes (B, 3) int64), corners (B, P, 2) int64, out (B*P, 8C)
    float32, written; face b's patches go to rows b * P .. (b + 1) * P - 1. Bit-identical to
    level_patch_features face by face. Returns how many faces shared conv1."""
    B, P = corners.shape[0], corners.shape[1]
    C = b2.shape[0]
    if offsets.shape[0] != B or shapes.shape[0] != B or shapes.shape[1] != 3 or corners.shape[2] != 2 or P < 1 \
            or out.shape[0] != B * P or out.shape[1] != 8 * C:
        raise ValueError("levels_patch_features: one offset and (H, W, 3) shape per face, corners (B, P, 2) "
                         "with P >= 1, out (B * P, 8C)")
    for b in range(B):
        _slot(data, offsets[b], shapes[b, 0], shapes[b, 1], shapes[b, 2])      # raises if it does not fit
        if not _feature_shapes_ok(shapes[b, 2], 14, w1t, b1p, w2f, b2, wa, ba):
            raise ValueError("levels_patch_features: levels must be (H, W, 3) and the weights as for "
                             "patch_features")
    shared = np.zeros(B, np.int64)
    nxt = np.zeros(1, np.int64)
    for _ in prange(B):                                  # the faces taken in turn (_take)
        b = _take(nxt)
        if b < B:
            scratch = _group_scratch(C)
            while b < B:
                shared[b] = _face_patch_features(data, offsets[b], shapes[b], corners[b], w1t, b1p, w2f, b2, wa,
                                                 ba, scratch, out, b * P)
                b = _take(nxt)
    return shared.sum()


@njit(cache=True)
def _face_patch_features(data, offset, shape, corners, w1t, b1p, w2f, b2, wa, ba, scratch, out, out0):
    """One face of levels_patch_features on one thread, into out[out0:]: its level (shape (H, W, 3)) at
    data[offset:], its patches' corners (P, 2). Returns whether conv1 was shared."""
    P = corners.shape[0]
    level = data[offset:offset + shape[0] * shape[1] * shape[2]].reshape((shape[0], shape[1], shape[2]))
    ylo, xlo, Hm, Wm, run0, run1 = _conv1_map_plan(corners)
    if run0.shape[0] == 0:                               # one by one, FEATURE_ITEM at a time
        for p0 in range(0, P, FEATURE_ITEM):
            _level_group(level, corners, p0, min(P, p0 + FEATURE_ITEM) - p0, w1t, b1p, w2f, b2, wa, ba, scratch,
                         out, out0)
        return False
    xin, Lr = _conv1_map_input(level, ylo, xlo, Hm, Wm)
    Wr = Wm + 2
    c1 = np.empty((w1t.shape[0], Hm * Wr), np.float32)     # w1t's rows: C padded (_conv1_rows)
    for o in range(0, w1t.shape[0], CONV1_OUT_BLOCK):
        _map_channels(xin, Lr, Wr, run0, run1, w1t, b1p, c1, o)
    _map_patches(c1, Wr, ylo, xlo, corners, 0, P, w2f, b2, wa, ba, scratch[3], out, out0)
    return True
