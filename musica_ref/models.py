"""The trained models by name: the weights files installed with the package.

A plain `pip install .` copies the repository's `weights/*.h5` into the package as `musica_ref/models/`
(setup.py maps the folder); in a source checkout they are read from `weights/` beside the package.
`MuSiCa.load(name)` and the command line's `--model` take these names; anything else is a file path.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import WeightsError

# name -> what to use it for (README "Choosing a model" has the measured accuracy and cost)
MODELS = {
    "musica68": "68 patches, the most accurate (about 97 M multiply-adds a face)",
    "musica34": "34 patches, half the network of musica68",
    "musica19": "19 patches, the fastest (about a quarter of musica68's multiply-adds)",
}
DEFAULT_MODEL = "musica68"
# the environment variable that names the default weights file (or model name) for the command line
WEIGHTS_ENV = "MUSICA_REF_WEIGHTS"

_HERE = Path(__file__).resolve().parent


def model_folders() -> list[Path]:
    """Where named models are looked for, in order: the installed package's models/ folder, then the
    source checkout's weights/ folder."""
    return [_HERE / "models", _HERE.parent / "weights"]


def model_path(name: str) -> Path:
    """The weights file of a named model; WeightsError if it is not installed."""
    if name not in MODELS:
        raise WeightsError(f"unknown model {name!r}; the models are {', '.join(MODELS)}, or give a weights "
                           f"file path")
    for folder in model_folders():
        p = folder / f"{name}.h5"
        if p.is_file():
            return p
    raise WeightsError(f"model {name!r} is not installed (looked in {', '.join(map(str, model_folders()))}); "
                       f"reinstall the package, or give a weights file path")


def resolve_model(model) -> str:
    """A model name or a weights file path -> the path to load. A name wins unless a file of that exact
    name exists in the working folder."""
    if isinstance(model, str) and model in MODELS and not os.path.exists(model):
        return str(model_path(model))
    if not isinstance(model, (str, os.PathLike)):
        raise WeightsError(f"expected a model name ({', '.join(MODELS)}) or a weights file path, got "
                           f"{type(model).__name__}")
    return os.fspath(model)
