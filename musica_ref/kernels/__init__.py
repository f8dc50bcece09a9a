"""Numba kernels: the fast, explicit-loop versions of `kernels_ref.py` (their readable NumPy twins), one
module per stage of the pipeline:

    contract         the numerical contract (FC_KCHUNK, MEAN_STD_LANES), fused multiply-add (madd), float16
                     widening (widen), work taken in turn by the threads (_take) and the LLVM code they need
    parallel         a worker run on every thread (run_parallel), without a prange loop around its code
    precompile       a first run's largest kernel compiled in a helper process, on another core
    resampling       each pyramid level, one resampling of the source image          docs/model.md §4.3
    normalise        the levels by level 0's mean and population deviation           §4.4
    layers           patches and the network's layers one at a time                  §5, §6
    dense            the fully connected layers (attention, recurrent, output)       §6
    features         the feature extractor fused per patch, from patches or a level  §6

Rules for every kernel here:
- no `fastmath` (results must not depend on reassociation, and NaN/inf keep their meaning);
- every multiply-add of the network's layers is one fused multiply-add (`madd`: acc + x * w rounded once),
  never a multiply and an add, so vectorised and scalar loops give the same bits on every machine;
- `cache=True`, so a second process loads the compiled code from disk instead of compiling again;
- `@disjoint` (LLVM noalias arguments) only for a leaf whose arrays never overlap and whose written elements
  no other thread touches while it runs (contract.py);
- float32 activations in and out; the accumulator type is stated in each docstring;
- the summation order of every output element is fixed by the loop nest and does not depend on the batch
  size or on how the work is split between threads, so results are bit-identical whether a face is
  run alone or in a batch, on one thread or many.

Every public kernel has its twin in kernels_ref (tests/test_kernels.py walks kernels_ref.TWINS).
"""
from . import contract, dense, features, layers, normalise, parallel, precompile, resampling
# the contract's constants and helpers (the tests reach the helpers through this package too)
from .contract import (FC_KCHUNK, FMA_IN_HARDWARE, HALF_IN_HARDWARE, MEAN_STD_LANES,  # noqa: F401
                       _fma_emulated, _fma_in_hardware, _half_bits_integer, _half_in_hardware, _take, llvm,
                       madd, widen)
from .dense import fully_connected, fully_connected_scaled
from .features import feature_weights, level_patch_features, levels_patch_features, patch_features
from .layers import conv3x3, crop_concat, extract_patches, gate, maxpool2x2, relu, sigmoid, tanh
from .normalise import mean_std, normalise_pyramid, normalise_pyramids
from .resampling import resample, resample_into, resample_many, resample_span

# the modules that hold kernels, in pipeline order (musica_ref.warmup looks for compiled kernels in them)
MODULES = (contract, parallel, resampling, normalise, layers, dense, features)

# the public kernels; each has its NumPy twin in kernels_ref (kernels_ref.TWINS). feature_weights, the fused
# extractor's weight layouts (made once per model), is a NumPy helper, not a kernel.
__all__ = ["madd", "widen", "resample", "resample_into", "resample_many", "resample_span", "mean_std",
           "normalise_pyramid", "normalise_pyramids", "extract_patches", "conv3x3", "maxpool2x2", "crop_concat",
           "relu", "sigmoid", "tanh", "gate", "fully_connected", "fully_connected_scaled",
           "patch_features", "level_patch_features", "levels_patch_features"]
