"""Numba's disk cache for the tests and tools, in a folder keyed by a hash of the kernel sources.

Numba checks a cached function against the time stamp of its own source file only, so a kernel that calls a
function defined in another module keeps its stale compiled code when only the callee changes. The tests
(tests/conftest.py) and the timing tools therefore keep the cache in a folder named by a hash of every kernel
source file: any change to any of them starts an empty cache. A NUMBA_CACHE_DIR set by the user wins.
"""
import hashlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def kernel_sources() -> list[Path]:
    """The files that define Numba kernels (musica_ref/kernels*.py and a musica_ref/kernels/ package)."""
    pkg = ROOT / "musica_ref"
    return sorted(pkg.glob("kernels*.py")) + sorted((pkg / "kernels").glob("**/*.py"))


def keyed_cache_dir() -> Path:
    """<temporary folder>/musica-ref-numba/<first 16 hex digits of the SHA-256 of the kernel sources>."""
    h = hashlib.sha256()
    for p in kernel_sources():
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return Path(tempfile.gettempdir()) / "musica-ref-numba" / h.hexdigest()[:16]


def use_keyed_cache() -> str:
    """Point Numba's cache at keyed_cache_dir() unless NUMBA_CACHE_DIR is set; returns the folder in use.
    Call it before musica_ref is imported (child processes inherit it through the environment)."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(keyed_cache_dir()))
    if "numba" in sys.modules:                      # imported already: its configuration read the old value
        import numba
        numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
    return os.environ["NUMBA_CACHE_DIR"]
