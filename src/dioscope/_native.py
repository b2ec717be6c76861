"""Load the mypyc-compiled hot path from ``.native/`` when it matches the sources.

``tools/build_native.py`` (``make native``, run by ``make test``/``demo``/``bench``) compiles
the modules one O_DIRECT syscall runs through into C extensions and writes
``.native/manifest.json``: the extension of each module, and the SHA-256 of every model
source it was built from. :func:`install` puts a finder first on ``sys.meta_path`` that
imports those modules from their extensions, but only if

- ``DIOSCOPE_PURE`` is unset or ``0`` (``DIOSCOPE_PURE=1`` runs every ``.py`` file, for a
  debugger or a line profiler);
- the manifest was built for this interpreter's extension ABI;
- every model source still hashes as it did when built. One edited file anywhere in the model
  falls back to pure Python for all modules, since compiled modules call each other directly
  and may have folded in constants from modules that are not compiled; a note on stderr says
  so and how to rebuild.

:data:`ACTIVE` tells which way it went, and :data:`REASON` why not, for reports.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
NATIVE_DIR = ROOT / ".native"

MODEL_PACKAGES = ("kernel", "mm", "lib", "block", "fs", "syscalls")
"""The packages whose every source a build is checked against (with ``__init__.py``)."""

ACTIVE = False
"""True when the compiled modules are the ones imported."""
REASON = "not loaded yet"
"""Why the model runs as pure Python (empty when :data:`ACTIVE`)."""
MODULES: tuple[str, ...] = ()
"""The modules imported from their compiled extensions."""


class _NativeFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled extension of a module the manifest lists, and nothing else."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        so = self.paths.get(fullname)
        if so is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(so))
        return importlib.util.spec_from_file_location(fullname, so, loader=loader)


def source_digests(src: Path = ROOT / "src") -> dict[str, str]:
    """SHA-256 of every model source under ``src`` (``dioscope/__init__.py`` and the
    :data:`MODEL_PACKAGES`), by path relative to ``src``: what a build records and what
    :func:`why_not` compares it with."""
    pkg = src / "dioscope"
    files = [pkg / "__init__.py"]
    for sub in MODEL_PACKAGES:
        files += sorted((pkg / sub).rglob("*.py"))
    return {str(p.relative_to(src)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def why_not(manifest: dict[str, object], src: Path = ROOT / "src") -> str:
    """Empty if the build that ``manifest`` describes can run the sources under ``src``,
    else the reason it cannot."""
    if manifest.get("abi") != importlib.machinery.EXTENSION_SUFFIXES[0]:
        return f"built for {manifest.get('abi')}, this interpreter is " \
               f"{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    sources = manifest.get("sources")
    if not isinstance(sources, dict):
        return "manifest lists no sources"
    now = source_digests(src)
    for rel, digest in sources.items():
        if rel not in now:
            return f"{rel} is gone"
        if now[rel] != digest:
            return f"{rel} changed since the build"
    new = sorted(set(now) - set(sources))
    return f"{new[0]} is new since the build" if new else ""


def install() -> None:
    """Decide once per process; called by ``dioscope/__init__.py`` before any model import."""
    global ACTIVE, REASON, MODULES
    if any(isinstance(f, _NativeFinder) for f in sys.meta_path):
        return
    if os.environ.get("DIOSCOPE_PURE", "0") not in ("", "0"):
        REASON = "DIOSCOPE_PURE is set"
        return
    try:
        manifest = json.loads((NATIVE_DIR / "manifest.json").read_text())
    except FileNotFoundError:
        REASON = "no compiled build (make native)"
        return
    except (OSError, ValueError) as e:
        manifest = f"unreadable manifest ({e})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("modules"), dict) \
            or not isinstance(manifest.get("group"), str):
        REASON = manifest if isinstance(manifest, str) else "malformed manifest"
    else:
        REASON = why_not(manifest)
    if REASON:
        print(f"dioscope: running pure Python: {REASON}; `make native` rebuilds the "
              f"compiled hot path", file=sys.stderr)
        return
    assert isinstance(manifest, dict)
    modules: dict[str, str] = manifest["modules"]
    paths = {name: NATIVE_DIR / rel for name, rel in modules.items()}
    paths[manifest["group"]] = NATIVE_DIR / (manifest["group"] + manifest["abi"])
    sys.meta_path.insert(0, _NativeFinder(paths))
    ACTIVE = True
    MODULES = tuple(sorted(modules))
