"""Compile the Direct I/O hot path with mypyc into ``.native/`` (``make native``).

The compiled modules are the very ``src/dioscope`` sources, turned into C by mypyc (part of
mypy) and built by setuptools; nothing is rewritten by hand. ``dioscope._native`` loads them
at import time, and only while ``.native/manifest.json`` still matches every model source
byte for byte; otherwise, or with ``DIOSCOPE_PURE=1``, the interpreter runs the ``.py`` files.
ARCHITECTURE.md ("Compiled hot path") says why and what it changes.

Run from the repository root: ``python tools/build_native.py``.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
OUT = ROOT / ".native"
WORK = ROOT / "build" / "native"
GROUP = "dioscope_native"

# The modules one O_DIRECT syscall runs through, and those whose objects it reads on every
# call (ARCHITECTURE.md, "Compiled hot path", says what stays out and why: the syscall layer,
# block/devices.py, the harness).
NATIVE_MODULES = (
    "block/bio.py",
    "block/bio_completion.py",
    "block/blk_core.py",
    "block/blk_merge.py",
    "block/blk_mq.py",
    "block/blk_types.py",
    "block/bvec.py",
    "fs/filemap_rw.py",
    "fs/fs_types.py",
    "fs/iomap/direct_io.py",
    "fs/modelfs/extents.py",
    "fs/modelfs/file.py",
    "fs/modelfs/inode.py",
    "fs/read_write.py",
    "kernel/config.py",
    "kernel/events.py",
    "kernel/hooks.py",
    "kernel/task.py",
    "kernel/xarray.py",
    "lib/iov_iter.py",
    "lib/iov_iter_pages.py",
    "mm/gup.py",
    "mm/gup_core.py",
    "mm/mm_types.py",
    "mm/page.py",
    "mm/page_alloc.py",
    "mm/page_writeback.py",
    "mm/truncate.py",
    "mm/vmstat.py",
)


def _native_module() -> ModuleType:
    """``src/dioscope/_native.py`` on its own (importing ``dioscope`` would consult the very
    build this script replaces): how a build's sources are hashed."""
    spec = importlib.util.spec_from_file_location("_dioscope_native", SRC / "dioscope" /
                                                  "_native.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    from mypyc.build import mypycify  # build-time only: mypy is in the [native] extra
    from setuptools import setup

    t0 = time.monotonic()
    pkg = SRC / "dioscope"
    paths = [str((pkg / m).relative_to(ROOT)) for m in NATIVE_MODULES]
    # Every model source: a change to any of them (a Final constant mypyc folded in, a class
    # it compiled against) makes the build stale, so the manifest hashes them all.
    hashes = _native_module().source_digests(SRC)
    shutil.rmtree(OUT, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exts = mypycify(paths, opt_level="3", group_name=GROUP, target_dir=str(WORK / "c"))
    report = out.getvalue()
    sys.stdout.write(report)
    if "warning:" in report:
        # Each mypyc warning is a behaviour change (a class default it leaves unset, a
        # generator it turns into a list): fix the source rather than ship it.
        print("build_native: mypyc warned; nothing built", file=sys.stderr)
        return 1
    os.chdir(WORK)  # away from pyproject.toml: this setup() builds extensions and nothing else
    setup(
        name="dioscope-native",
        ext_modules=exts,
        script_args=["-q", "build_ext", "--build-lib", str(OUT), "--build-temp",
                     str(WORK / "tmp"), "--parallel", str(os.cpu_count() or 1)],
    )
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    modules = {}
    for m in NATIVE_MODULES:
        name = "dioscope." + m.removesuffix(".py").replace("/", ".")
        so = Path(*name.split(".")).with_name(name.rsplit(".", 1)[1] + suffix)
        if not (OUT / so).exists():
            print(f"build_native: {so} was not built", file=sys.stderr)
            return 1
        modules[name] = str(so)
    group = f"{GROUP}__mypyc"
    if not (OUT / (group + suffix)).exists():
        print(f"build_native: {group}{suffix} was not built", file=sys.stderr)
        return 1
    manifest = {"abi": suffix, "group": group, "modules": modules, "sources": hashes}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"build_native: {len(modules)} modules compiled with mypyc into {OUT.name}/ "
          f"in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
