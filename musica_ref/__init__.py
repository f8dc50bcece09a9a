"""musica_ref: the reference implementation of MuSiCa face alignment (MM'21) in NumPy + Numba.

    import musica_ref
    model = musica_ref.MuSiCa.load("musica68")            # a model by name, or a weights file path
    for face in model.predict_image("photo.jpg"):         # every face the detector finds (extra "detect")
        face.box, face.landmarks                          # landmarks: (N, 2) float64, (x, y), 0-based pixels
    result = model.predict(image, box=(x0, y0, x1, y1))   # or your own box; image: (H, W, 3) uint8 RGB

Importing defines things and does nothing else; the command line lives in `musica_ref.cli`.
Data flow, one module per step: io (image) -> detect (face boxes) -> geometry (frame) -> pyramid -> kernels
(patches, network layers) -> network (one iteration) -> model (cascade, early exit) -> geometry (back to the
image). models names the installed weights files; draw makes the overlay; track follows faces through video
frames (video reads them); data, metrics and evaluate measure a model on annotated faces.
"""
from .detect import DetectorUnavailable, Face, detect_faces
from .errors import InputError, MusicaError, WeightsError
from .io import as_rgb, load_image, read_pts, write_pts
from .model import MuSiCa, Result
from .models import DEFAULT_MODEL, MODELS
from .opcount import iteration_macs, total_macs, total_parameters
from .track import FaceSmoother, OneEuroFilter, Tracker
from .variants import VARIANTS, Variant, custom_variant, get_variant
from .weights import FORMAT_NAME, FORMAT_VERSION, Weights, load_weights, random_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    # running the model
    "MuSiCa", "Result", "MODELS", "DEFAULT_MODEL", "detect_faces", "Face", "Tracker", "FaceSmoother", "OneEuroFilter",
    # images and point files
    "load_image", "as_rgb", "read_pts", "write_pts",
    # weights files and variants
    "Weights", "load_weights", "save_weights", "random_weights", "FORMAT_NAME", "FORMAT_VERSION",
    "Variant", "VARIANTS", "get_variant", "custom_variant",
    # operation counts
    "iteration_macs", "total_macs", "total_parameters",
    # errors: every problem with an input is an InputError, with a weights file a WeightsError; both are
    # MusicaError, as is DetectorUnavailable (the detect extra is missing)
    "MusicaError", "InputError", "WeightsError", "DetectorUnavailable",
]
# Everything else (musica_ref.kernels, network, pyramid, geometry, ...) is internal: documented for porters
# and contributors (docs/engine.md, docs/porting.md), not a stable interface.
