"""Running a kernel on every thread: `run_parallel(worker, n_items, *args)`.

A `prange` loop costs a first run seconds of compiling: Numba builds three wrapper functions around the loop's
body (the parallel "gufunc" and two wrappers of it), each a separate LLVM module with its own copy of the
body and of everything the body calls, and LLVM optimises and generates machine code for every copy; the
kernel around the loop holds one more. With the feature extractor in the body that was most of a first
`predict`'s compile time (docs/benchmarks.md).

So the kernels' parallel work is written as workers, ordinary `@njit(nogil=True, cache=True)` functions
compiled once:

    @njit(nogil=True, cache=True)
    def _worker(counter, n_items, ...):      # counter: int64[1], the next work item
        t = _take(counter)
        while t < n_items:
            ... work item t ...
            t = _take(counter)

and one small parallel loop, `_launch`, calls the worker on every thread through its address: the worker's
code is not copied into the loop's wrappers (the loop is compiled once per worker signature, in well under
a second, and cached like every kernel). A thread's call takes items until none is left, so the items are
shared out as they are finished (contract._take), and which thread computes an item never changes its
result. `run_alone(worker, n_items, ...)` runs every item on the calling thread (the small layers do, where
waking another thread costs more than the work; so does a run of one item).

Workers must not raise: a worker's exception cannot cross the threads, so it is reported as a RuntimeError
naming the worker. The kernels check their inputs before they launch.

The worker's address comes from Numba's compile result (`library.get_pointer_to_function` of its
`fndesc.llvm_func_name`, what Numba's own dispatcher calls), and `_call_at` calls it with Numba's calling
convention (`context.call_conv.call_function`), as a call between two compiled functions would.
"""
from __future__ import annotations

import hashlib

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

try:        # Numba's own fast key of an argument's type (what its dispatcher uses); typeof where it is missing
    from numba._dispatcher import compute_fingerprint
except ImportError:                                                  # pragma: no cover
    compute_fingerprint = numba.typeof


@intrinsic
def _call_at(typingctx, address, counter, args):
    """worker(counter, *args) for the compiled worker at `address` (an int: its native entry point, Numba's
    calling convention, returning None); True if it raised."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    argtys = (counter,) + tuple(args.types)

    def codegen(context, builder, signature, llargs):
        addr, cnt, tup = llargs
        values = [cnt] + [builder.extract_value(tup, i) for i in range(len(argtys) - 1)]
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fn = builder.inttoptr(addr, fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, fn, types.none, argtys, values)
        return status.is_error
    return types.boolean(address, counter, args), codegen


def _types_token(argtypes) -> int:
    """A number that names a tuple of Numba types, the same in every process (a hash of their names, not
    Python's hash(), which changes from process to process), below 2**56."""
    return int.from_bytes(hashlib.blake2b(repr(tuple(argtypes)).encode(), digest_size=7).digest(), "little")


@intrinsic
def _token_of(typingctx, args):
    """_types_token of the types of `args` (a tuple), as a constant of the compiled code."""
    if not isinstance(args, types.BaseTuple):
        return None
    token = _types_token(args.types)

    def codegen(context, builder, signature, llargs):
        return context.get_constant(types.int64, token)
    return types.int64(args), codegen


@njit(parallel=True, cache=True)
def _launch(address, token, n_items, *args):
    """The worker at `address` called on every thread with one shared counter: n_items calls in all (a
    thread's first call takes items until none is left, its other calls find none). Returns how many calls
    raised, or -1, calling nothing, when `token` is not the token of these arguments' types (the address
    was found for other types)."""
    if token != _token_of(args):
        return -1
    counter = np.zeros(1, np.int64)
    failed = 0
    for _ in prange(n_items):
        failed += _call_at(address, counter, args)
    return failed


_addresses = {}      # (worker, argument fingerprints) -> (the compiled worker's entry point, its types' token)
_last = {}           # worker -> (entry point, token) of its last run


def _address(worker, args):
    """The native entry point of `worker` compiled for (counter, *args), compiling it (or loading it from the
    cache) the first time, and the token of the types of args."""
    key = (worker,) + tuple(map(compute_fingerprint, args))
    found = _addresses.get(key)
    if found is None:
        sig = tuple(numba.typeof(a) for a in (np.zeros(1, np.int64),) + args)
        worker.compile(sig)
        cres = worker.overloads[sig]
        found = _addresses[key] = (cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name),
                                   _types_token(sig[1:]))
    return found


def run_alone(worker, *args):
    """worker(counter, *args) on the calling thread alone, with a new counter: every item runs here (a small
    job, where waking another thread costs more than it saves). A worker's exception is reported as by
    run_parallel."""
    try:
        worker(np.zeros(1, np.int64), *args)
    except Exception as e:
        raise RuntimeError(f"{worker.__name__}: a worker raised an exception (workers must not raise: "
                           "the kernel should have refused its inputs before it started)") from e


def run_parallel(worker, n_items, *args):
    """worker(counter, *args) on every thread (at most n_items of them) with one counter from 0: the work
    items 0 .. n_items - 1 shared out as they are finished. args are what the worker takes after its
    counter (usually n_items first).

    The worker's entry point for these argument types is looked up only when they differ from its last
    run's: _launch checks the token of the types it was given against its own (its code is compiled for
    one tuple of types), so a run with the types of the last one costs one call."""
    if n_items <= 0:
        return
    if n_items == 1:                                 # nothing to share
        return run_alone(worker, *args)
    address, token = _last.get(worker, (0, -1))
    failed = _launch(address, token, n_items, *args)
    if failed < 0:                                   # other argument types than its last run
        address, token = _last[worker] = _address(worker, args)
        failed = _launch(address, token, n_items, *args)
    if failed:
        raise RuntimeError(f"{worker.__name__}: a worker raised an exception (workers must not raise: "
                           "the kernel should have refused its inputs before it started)")
