"""dioscope: an executable model of the Linux Direct I/O page-pinning path.

The model mirrors the kernel tree (``dioscope/mm/gup.py`` models ``mm/gup.c``); see
ARCHITECTURE.md for the codemap and DESIGN.md (shared) for the architecture.
"""

from dioscope import _native

__version__ = "0.1.0"

__all__ = ["__version__"]

_native.install()
