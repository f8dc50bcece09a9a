"""The numerical contract of the kernels and the code generation it needs (docs/porting.md §3).

- The constants that fix results: a bit-exact port copies them (the speed-only constants live beside the
  code they tune, in the other modules, marked as such).
- `madd`: every multiply-add of the network's layers is one fused multiply-add (LLVM's llvm.fma where the
  CPU has FMA; elsewhere a correctly rounded float64 emulation with the same bits).
- `widen`: float16 weights (held as uint16 bit patterns) widened to float32 exactly as they are read.
- `_take`: work items taken in turn by the threads, from an atomic counter (which thread computes an item
  never changes its result); `_finish` and `_wait_for`, a count of finished items that later items wait
  on; `_slot`, one output's place in a flat buffer.
"""
from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.compiler import Compiler
from numba.extending import intrinsic, overload

# A helper decorated @inline is inlined by Numba into each kernel that calls it, before it is compiled: it is
# not compiled on its own, and no copy of its code is linked into its callers and optimised again (each
# function Numba compiles links the code of everything it calls and LLVM optimises it once more, so a call
# chain N deep is optimised N times; docs/engine.md). The kernels' helpers that hold the loops are @inline,
# the tiny ones (one fused multiply-add, a few of them) stay functions of their own, which LLVM inlines.
inline = njit(cache=True, inline="always")


class _DisjointArguments(Compiler):
    """Numba's compiler with its `noalias` flag set (as in the functions Numba generates for a prange loop):
    every pointer argument (an array's data) is marked noalias for LLVM, which may then assume that while
    the function runs, the memory it reaches through one argument is reached through no other pointer, by
    no other thread. So a loop that reads one array and writes another needs no runtime overlap check to
    vectorise, and values loaded from one stay in registers across stores to the other."""

    def define_pipelines(self):
        self.state.flags.noalias = True
        return super().define_pipelines()


# A kernel decorated @disjoint is compiled so (above): only for the leaves that the workers call, whose
# arrays never overlap one another and whose written elements no other thread reads or writes while they run
# (each call has its own scratch, its own rows or channels of an output): _conv1_span, _conv2, _fc_chunk,
# _resample_tile. Never a worker: its counters are changed by the other threads.
disjoint = njit(cache=True, pipeline_class=_DisjointArguments)

# --- constants that fix results (part of the numerical contract: a bit-exact port copies them) ---------------
# The fully connected kernel sums its K inputs in fixed chunks of FC_KCHUNK, each from 0, then bias + chunk 0 +
# chunk 1 + ...
FC_KCHUNK = 256
# mean_std sums in this many interleaved partial sums (value i goes to sum i % MEAN_STD_LANES)
MEAN_STD_LANES = 8


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
# others wait for it at the end. The kernels' workers (parallel.run_parallel) instead let every thread take
# the next work item as soon as it is done with one, from a shared counter (_take):
#
#     @njit(nogil=True, cache=True)
#     def _worker(counter, n, ...):      # called on every thread with the same counter
#         t = _take(counter)
#         if t < n:
#             ... scratch for this thread ...
#             while t < n:
#                 ... work item t ...
#                 t = _take(counter)
#
# Which thread computes an item never changes its result (each item's arithmetic is fixed), so this keeps
# every result bit for bit.
#
# Work in two phases (the second reads what the first wrote) runs as one list of items, in one parallel
# region: the items of the first phase come first, each counted when it is finished (_finish), and an item of
# the second phase first waits until they all are (_wait_for). Items are handed out in order, so it waits
# only for first-phase items that other threads are running.

def _counter_op(counter, ordering):
    """The signature and code generation of an atomic operation on counter[0] (an int64 array): with
    "acquire", a load; otherwise an add of 1 (LLVM's atomicrmw add) with that memory order, returning the
    value before. None (no match) for any other argument type."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, value=args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [context.get_constant(types.intp, 0)],
                                       wraparound=False)
        if ordering == "acquire":
            return builder.load_atomic(ptr, "acquire", 8)
        return builder.atomic_rmw("add", ptr, context.get_constant(types.int64, 1), ordering)
    return types.int64(counter), codegen


@intrinsic
def _take(typingctx, counter):
    """counter[0] += 1 as one atomic operation, returning the value before: the number of the next work item,
    each number handed out once whatever the threads do. counter: int64 array."""
    return _counter_op(counter, "monotonic")


@intrinsic
def _finish(typingctx, counter):
    """counter[0] += 1 as one atomic operation with release order: everything this thread wrote before is
    seen by a thread that then reads the new count (_wait_for). Counts finished work items. counter: int64
    array."""
    return _counter_op(counter, "release")


@intrinsic
def _count(typingctx, counter):
    """counter[0], read as one atomic operation with acquire order (it pairs with _finish). counter: int64
    array."""
    return _counter_op(counter, "acquire")


@njit(cache=True)
def _wait_for(counter, n):
    """Spin until n work items are finished (_finish on counter): a thread waits so only for items that other
    threads are running (they took them), so it never waits for ever; the waits are short."""
    while _count(counter) < n:
        pass


SLOT_OUTSIDE = "an image slot (offset, shape) lies outside its buffer"


@inline
def _slot_fits(size, offset, h, w, c):
    """Whether an (h, w, c) array at offset lies inside a flat buffer of `size` values (_slot's check; its
    Python twin, _slot_fits.py_func, checks slots from Python without making a view)."""
    return offset >= 0 and h >= 0 and w >= 0 and c >= 0 and offset + h * w * c <= size


@njit(cache=True)
def _slot(data, offset, h, w, c):
    """The (h, w, c) array at data[offset:] (a view); ValueError if it does not fit in data."""
    if not _slot_fits(data.shape[0], offset, h, w, c):
        raise ValueError(SLOT_OUTSIDE)
    return data[offset:offset + h * w * c].reshape((h, w, c))
