from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="musica-ref",
    version="0.1.0",
    description="Reference implementation of MuSiCa face alignment (MM'21) in NumPy + Numba, CPU only",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # the trained models travel with the package: the repository's weights/ folder is installed as
    # musica_ref/models/ (musica_ref.models finds them there, or in weights/ in a source checkout)
    packages=find_packages(include=["musica_ref", "musica_ref.*"]) + ["musica_ref.models"],
    package_dir={"musica_ref.models": "weights"},
    package_data={"musica_ref.models": ["*.h5"]},
    python_requires=">=3.10",
    install_requires=["numpy>=1.24", "numba>=0.59", "scipy>=1.10", "pillow>=9.0", "h5py>=3.8"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80"],
        # the separate trainer (tools/); never imported by musica_ref. 2.13.0 is the CPU build CI installs.
        "train": ["torch>=2.3,<2.15"],
        # tools/compare_dlib.py: dlib's ERT shape predictor and its 68-point model file
        "compare": ["dlib-bin", "face-recognition-models"],
        # face detection (musica_ref.detect): dlib's HOG frontal face detector, its model inside the library
        "detect": ["dlib-bin"],
        # musica-ref track on video files (PyAV, FFmpeg inside its wheel); a folder of frames needs nothing
        "video": ["av>=12"],
        # the docs' figures (tools/plot.py: tools/evaluate.py --ced, tools/analyses.py)
        "plots": ["matplotlib>=3.7"],
        # tools/bench.py's ONNX Runtime baseline (with "train" for PyTorch, which exports the network)
        "bench": ["onnx", "onnxruntime", "onnxscript"],
    },
    entry_points={"console_scripts": ["musica-ref=musica_ref.cli:main"]},
    license="MIT",
)
