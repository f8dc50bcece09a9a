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

and one small launcher, `_launch`, calls the worker on every thread through its address: the worker's code
is not copied into the launcher (which is compiled once per worker signature, in a fraction of a second, and
cached like every kernel). A thread's call takes items until none is left, so the items are shared out as
they are finished (contract._take), and which thread computes an item never changes its result.
`run_alone(worker, n_items, ...)` runs every item on the calling thread (the small layers do, where waking
another thread costs more than the work; so does a run of one item).

Workers must not raise: a worker's exception cannot cross the threads, so it is reported as a RuntimeError
naming the worker. The kernels check their inputs before they launch.

The launcher is a plain `@njit` function, not a `prange` loop (whose parallel-loop passes and wrappers cost
over a second per signature to compile): `_call_on_threads` hands Numba's threading layer the same call a
`prange` loop makes (`numba_parallel_for`, with a small function in the loop's "gufunc" form), so the
threads, their number (`numba.set_num_threads`) and the threading layer are Numba's own. The worker's
address comes from Numba's compile result (`library.get_pointer_to_function` of its
`fndesc.llvm_func_name`, what Numba's own dispatcher calls), and it is called with Numba's calling
convention (`context.call_conv.call_function`), as a call between two compiled functions would be.
"""
from __future__ import annotations

import hashlib
import subprocess
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads

try:        # Numba's own fast key of an argument's type (what its dispatcher uses); typeof where it is missing
    from numba._dispatcher import compute_fingerprint
except ImportError:                                                  # pragma: no cover
    compute_fingerprint = numba.typeof


def _worker_call(context, builder, address, counter_type, counter, args_type, args):
    """Emit worker(counter, *args) for the compiled worker at `address` (an i64: its native entry point, Numba's
    calling convention, returning None); returns the i1 "it raised"."""
    argtys = (counter_type,) + tuple(args_type.types)
    values = [counter] + [builder.extract_value(args, i) for i in range(len(argtys) - 1)]
    fnty = context.call_conv.get_function_type(types.none, argtys)
    status, _ = context.call_conv.call_function(builder, builder.inttoptr(address, fnty.as_pointer()),
                                                types.none, argtys, values)
    return status.is_error


@intrinsic
def _call_on_threads(typingctx, address, n_items, counter, args):
    """worker(counter, *args) for the compiled worker at `address`, called once on each of min(n_items,
    numba.get_num_threads()) threads of Numba's threading layer (numba_parallel_for, what a prange loop calls),
    the calling thread waiting for all; returns how many calls raised.

    The threading layer calls a function of the "gufunc" form fn(char **args, intp *dims, intp *steps, void
    *data) on each thread, dims[0] times. Here that function (the trampoline, emitted into this module) finds
    in args[0] a frame on the caller's stack with the worker's address, the counter and the arguments, and
    calls the worker dims[0] times: one call per thread (its first call takes items until none is left)."""
    if not (isinstance(address, types.Integer) and isinstance(n_items, types.Integer)
            and isinstance(args, types.BaseTuple)):
        return None

    def codegen(context, builder, signature, llargs):
        addr, n, cnt, tup = llargs
        i8p, intp = ir.IntType(8).as_pointer(), context.get_value_type(types.intp)
        i64 = ir.IntType(64)
        frame_ty = ir.LiteralStructType([i64, cnt.type, tup.type, i64])
        module = builder.module
        # the trampoline (one per argument types, private to this module)
        tramp_ty = ir.FunctionType(ir.VoidType(), [i8p.as_pointer(), intp.as_pointer(), intp.as_pointer(), i8p])
        tramp = cgutils.get_or_insert_function(module, tramp_ty, f"musica_ref.run_parallel.{_types_token(args.types)}")
        if tramp.is_declaration:
            tramp.linkage = "internal"
            tb = ir.IRBuilder(tramp.append_basic_block())
            fp = tb.bitcast(tb.load(tramp.args[0]), frame_ty.as_pointer())
            zero = ir.Constant(ir.IntType(32), 0)
            with cgutils.for_range(tb, tb.load(tramp.args[1])):
                raised = _worker_call(context, tb, tb.load(tb.gep(fp, [zero, zero])), counter,
                                      tb.load(tb.gep(fp, [zero, ir.Constant(ir.IntType(32), 1)])), args,
                                      tb.load(tb.gep(fp, [zero, ir.Constant(ir.IntType(32), 2)])))
                with tb.if_then(raised):
                    tb.atomic_rmw("add", tb.gep(fp, [zero, ir.Constant(ir.IntType(32), 3)]), i64(1), "monotonic")
            tb.ret_void()
        # the frame, and the threading layer's arguments: one array (the frame, the same for every call)
        frame = cgutils.alloca_once(builder, frame_ty)
        value = ir.Constant(frame_ty, None)                              # all zeros: no call has raised
        value = builder.insert_value(value, builder.sext(addr, i64) if addr.type.width < 64 else addr, 0)
        builder.store(builder.insert_value(builder.insert_value(value, cnt, 1), tup, 2), frame)
        threads = builder.call(cgutils.get_or_insert_function(module, ir.FunctionType(intp, []),
                                                              "get_num_threads"), [])
        n = context.cast(builder, n, n_items, types.intp)
        calls = builder.select(builder.icmp_signed("<", n, threads), n, threads)
        arrays = cgutils.alloca_once(builder, i8p)
        builder.store(builder.bitcast(frame, i8p), arrays)
        dims = cgutils.alloca_once(builder, intp, size=2)
        builder.store(calls, dims)
        builder.store(intp(1), builder.gep(dims, [intp(1)]))
        steps = cgutils.alloca_once(builder, intp, size=2)
        builder.store(intp(0), steps)
        builder.store(intp(0), builder.gep(steps, [intp(1)]))
        parallel_for = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [i8p] * 5 + [intp] * 3), "numba_parallel_for")
        builder.call(parallel_for, [builder.bitcast(tramp, i8p), builder.bitcast(arrays, i8p),
                                    builder.bitcast(dims, i8p), builder.bitcast(steps, i8p),
                                    ir.Constant(i8p, None), intp(1), intp(1), calls])
        return builder.load(builder.gep(frame, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3)]))
    return types.int64(address, n_items, counter, args), codegen


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


@njit(nogil=True, cache=True)
def _launch(address, token, n_items, *args):
    """The worker at `address` called on min(n_items, threads) threads with one shared counter (a thread's
    call takes items until none is left). Returns how many calls raised, or -1, calling nothing, when `token`
    is not the token of these arguments' types (the address was found for other types)."""
    if token != _token_of(args):
        return -1
    return _call_on_threads(address, n_items, np.zeros(1, np.int64), args)


# Numba's workqueue threading layer (where neither OpenMP nor TBB is there) runs one parallel region at a
# time: a second one started meanwhile, from another Python thread, aborts the process. With it, the runs
# take turns (this lock); the other layers run regions from several threads at once.
_one_region_at_a_time = None

_addresses = {}      # (worker, argument fingerprints) -> (the compiled worker's entry point, its types' token)
_last = {}           # worker -> (entry point, token) of its last run
_elsewhere = {}      # worker -> the helper process compiling it into the disk cache (precompile.py)

# how long a run waits for a helper process to compile its worker before it compiles the worker itself
HELPER_WAIT_S = 600


def compiled_elsewhere(worker, process):
    """Note that `process` (a subprocess.Popen) is compiling `worker` into Numba's disk cache: its first run
    waits for the process to end, then loads the worker from the cache (or compiles it, if the process
    failed)."""
    _elsewhere[worker] = process


def _wait_for_helper(worker):
    """Wait for the helper process compiling `worker`, if there is one (at most HELPER_WAIT_S, then stop it:
    this process compiles the worker itself)."""
    process = _elsewhere.pop(worker, None)
    if process is not None:
        try:
            process.wait(HELPER_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _address(worker, args):
    """The native entry point of `worker` compiled for (counter, *args), compiling it (or loading it from the
    cache) the first time, and the token of the types of args."""
    key = (worker,) + tuple(map(compute_fingerprint, args))
    found = _addresses.get(key)
    if found is None:
        global _one_region_at_a_time
        _launch_threads()        # the threading layer's functions, which _launch calls, known to the linker
        if _one_region_at_a_time is None:
            _one_region_at_a_time = threading.Lock() if numba.threading_layer() == "workqueue" else False
        _wait_for_helper(worker)
        sig = tuple(numba.typeof(a) for a in (np.zeros(1, np.int64),) + args)
        worker.compile(sig)
        cres = worker.overloads[sig]
        found = _addresses[key] = (cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name),
                                   _types_token(sig[1:]))
    return found


def _worker_raised(worker) -> RuntimeError:
    """The error for a worker that raised (workers must not: its exception cannot cross the threads)."""
    return RuntimeError(f"{worker.__name__}: a worker raised an exception (workers must not raise: the kernel "
                        "should have refused its inputs before it started)")


def run_alone(worker, *args):
    """worker(counter, *args) on the calling thread alone, with a new counter: every item runs here (a small
    job, where waking another thread costs more than it saves). A worker's exception is reported as by
    run_parallel."""
    if _elsewhere:
        _wait_for_helper(worker)
    try:
        worker(np.zeros(1, np.int64), *args)
    except Exception as e:
        raise _worker_raised(worker) from e


def _launch_for(worker, last, n_items, args):
    failed = _launch(*last, n_items, *args)
    if failed < 0:                                   # other argument types than its last run
        last = _last[worker] = _address(worker, args)
        failed = _launch(*last, n_items, *args)
    return failed


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
    last = _last.get(worker)
    if last is None:                                 # its first run
        last = _last[worker] = _address(worker, args)
    if _one_region_at_a_time:
        with _one_region_at_a_time:
            failed = _launch_for(worker, last, n_items, args)
    else:
        failed = _launch_for(worker, last, n_items, args)
    if failed:
        raise _worker_raised(worker)
