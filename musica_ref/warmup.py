"""Compiling the Numba kernels ahead of use.

The kernels are compiled for the CPU they run on the first time each is called, and cached on disk
(`cache=True`), so only a new environment pays: `musica-ref warmup` (e.g. in a container build) runs every
path the model has, so that no later call compiles.
"""
from __future__ import annotations

import time

import numpy as np
from numba.core import event


def _dispatchers():
    from numba.core.registry import CPUDispatcher

    from . import kernels
    return [f for mod in kernels.MODULES for f in vars(mod).values() if isinstance(f, CPUDispatcher)]


class CompileNotice(event.Listener):
    """Calls say() once, when a kernel of this package starts to compile: the first call of a new
    environment, and any later first use of another path (another image type, int8 layers); a call that
    finds every kernel it needs in Numba's disk cache says nothing. Numba reports a compile only when
    one happens, never for a kernel loaded from the cache."""

    def __init__(self, say):
        self.say, self.said = say, False

    def on_start(self, ev):
        func = getattr(ev.data.get("dispatcher"), "py_func", None)
        if not self.said and getattr(func, "__module__", "").startswith(__package__ + ".kernels"):
            self.said = True
            self.say()

    def on_end(self, ev):
        pass


def compile_notice(say):
    """A context manager: while it is open, say() is called once if one of the package's kernels starts
    to compile."""
    return event.install_listener("numba:compile", CompileNotice(say))


def compile_all(progress=print) -> float:
    """Run every path of the model once on a small synthetic face (each recurrent storage, one face and a
    batch, early exit): every kernel compiled or loaded from the cache. Returns the seconds it took."""
    from .model import MuSiCa
    from .variants import get_variant
    from .weights import random_weights
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    boxes = [(20, 20, 70, 76), (10, 14, 80, 84)]
    weights = random_weights(get_variant("musica19"))
    f16 = weights.__class__(weights.variant, weights.mean_shape,
                            [{k: (v.astype(np.float16) if k == "recurrent/weight" else v) for k, v in it.items()}
                             for it in weights.iterations], weights.provenance)
    for name, model in (("float32", MuSiCa(weights, "float32")), ("float16", MuSiCa(f16, "stored")),
                        ("int8", MuSiCa(weights, "int8"))):
        progress(f"compiling: recurrent layers {name}")
        model.predict(image, boxes[0])
        model.predict_batch(image, boxes, ts=0.05)
        model.predict_batch([image, image.astype(np.float32)], boxes)
    model.trace(image, boxes[0])                           # the layer-by-layer path (porting, golden files)
    return time.perf_counter() - t0
