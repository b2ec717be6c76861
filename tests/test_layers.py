"""The layer rule, checked on the import graph (DESIGN.md §2, STYLE.md rule 4).

Model code (kernel, mm, lib, block, fs, syscalls and machine.py) never imports the harness
(sanitizer, sched, scenarios, difftest, cli, demo, explore, bench), not even for type hints,
and depends downwards only: kernel < mm < lib < block < fs < syscalls. A module of layer L may
import layers <= L; an upward import is allowed only inside ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "dioscope"

LAYERS = ("kernel", "mm", "lib", "block", "fs", "syscalls")
LAYER_RANK = {name: rank for rank, name in enumerate(LAYERS)}
# machine.py assembles the whole model: above every layer, still below the harness.
TOP_RANK = len(LAYERS)

HARNESS = tuple(
    f"dioscope.{name}"
    for name in ("sanitizer", "sched", "scenarios", "difftest", "cli", "demo", "explore")
)


@dataclass(frozen=True)
class Violation:
    module: str
    lineno: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.module}:{self.lineno}: imports {self.imported} ({self.why})"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_harness(name: str) -> bool:
    top = name.split(".", 1)[0]
    if top == "bench" or top.startswith("bench_"):
        return True
    return any(_within(name, h) for h in HARNESS)


def layer_rank(name: str) -> int | None:
    """The rank of the model layer ``name`` belongs to, or None if it is not in a layer."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "dioscope":
        if parts[1] in LAYER_RANK:
            return LAYER_RANK[parts[1]]
        if parts[1] == "machine":
            return TOP_RANK
    return None


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _resolve_relative(module: str | None, level: int, package: str) -> str:
    """Absolute name of ``from {'.' * level}{module} import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    base = package.split(".")
    if level > len(base):
        return "." * level + (module or "")  # beyond the top: cannot resolve, report as is
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imports(tree: ast.Module, package: str) -> list[tuple[int, str, bool]]:
    """Every (line, imported module, inside TYPE_CHECKING) of a module.

    ``from X import y`` yields X and X.y, since y may be a submodule; a literal
    ``importlib.import_module("...")`` or ``__import__("...")`` counts as an import too.
    """
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                visit(stmt, True)
            for stmt in node.orelse:
                visit(stmt, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, package)
            found.append((node.lineno, base, guarded))
            found.extend(
                (node.lineno, f"{base}.{alias.name}", guarded)
                for alias in node.names
                if alias.name != "*"
            )
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((node.lineno, arg.value, guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def check_source(source: str, module: str, is_package: bool = False) -> list[Violation]:
    """Layer-rule violations of one module's source, ``module`` being its dotted name."""
    package = module if is_package else module.rpartition(".")[0]
    own_rank = layer_rank(module)
    violations: list[Violation] = []
    for lineno, imported, guarded in _imports(ast.parse(source), package):
        if is_harness(imported):
            violations.append(Violation(module, lineno, imported, "model code imports harness"))
            continue
        rank = layer_rank(imported)
        if own_rank is not None and rank is not None and rank > own_rank and not guarded:
            why = f"upward: {LAYERS[own_rank] if own_rank < TOP_RANK else 'machine'} -> "
            why += LAYERS[rank] if rank < TOP_RANK else "machine"
            violations.append(Violation(module, lineno, imported, why))
    return violations


def model_files() -> list[Path]:
    files = [f for layer in LAYERS for f in sorted((PKG / layer).rglob("*.py"))]
    if (PKG / "machine.py").exists():
        files.append(PKG / "machine.py")
    return files


def module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def test_model_never_imports_harness_or_upward() -> None:
    files = model_files()
    assert files, f"no model files found under {PKG}: the layer check would be vacuous"
    violations: list[Violation] = []
    for path in files:
        name, is_package = module_name(path)
        violations += check_source(path.read_text(), name, is_package)
    assert not violations, "layer rule broken:\n" + "\n".join(map(str, violations))


# --- self-test: the checker reports what it must, and nothing else ------------------------

BAD = """\
from __future__ import annotations
import dioscope.sanitizer.rules
from ..sched import strategies
from .. import difftest
from dioscope import cli
import bench.run
from dioscope.fs import direct_io
from .. import syscalls as sc
import importlib
importlib.import_module("dioscope.explore")
def f():
    from dioscope.block.bio import Bio
    return Bio
"""

GOOD = """\
from __future__ import annotations
from typing import TYPE_CHECKING
import numpy as np
from dioscope.kernel import errno
from . import gup
from ..kernel.hooks import hook
from dioscope import __version__
if TYPE_CHECKING:
    from dioscope.fs.inode import Inode
    from ..block.bio import Bio
"""


def test_checker_reports_violations() -> None:
    found = {(v.lineno, v.imported) for v in check_source(BAD, "dioscope.mm.gup")}
    expected_lines = {2, 3, 4, 5, 6, 7, 8, 10, 12}
    assert {line for line, _ in found} == expected_lines, sorted(found)
    assert (3, "dioscope.sched.strategies") in found
    assert (4, "dioscope.difftest") in found
    assert (5, "dioscope.cli") in found
    assert (7, "dioscope.fs") in found
    assert (8, "dioscope.syscalls") in found
    assert (10, "dioscope.explore") in found
    assert (12, "dioscope.block.bio") in found


def test_checker_accepts_downward_and_type_checking_imports() -> None:
    assert check_source(GOOD, "dioscope.mm.gup") == []


def test_harness_is_forbidden_even_for_type_hints() -> None:
    src = "if TYPE_CHECKING:\n    from dioscope.sched import Task\n"
    assert [v.imported for v in check_source(src, "dioscope.kernel.sched_point")] == [
        "dioscope.sched",
        "dioscope.sched.Task",
    ]


@pytest.mark.parametrize(
    ("module", "is_package", "source", "imported"),
    [
        ("dioscope.kernel", True, "from .. import mm", "dioscope.mm"),
        ("dioscope.lib.iov_iter", False, "from ..fs import read_write", "dioscope.fs"),
        ("dioscope.fs.iomap.direct_io", False, "from ...syscalls import x", "dioscope.syscalls"),
        ("dioscope.machine", False, "from .scenarios import load", "dioscope.scenarios"),
        ("dioscope.syscalls.api", False, "from ..demo import main", "dioscope.demo"),
    ],
)
def test_checker_resolves_relative_imports(
    module: str, is_package: bool, source: str, imported: str
) -> None:
    reported = [v.imported for v in check_source(source, module, is_package)]
    assert imported in reported, reported


def test_machine_may_import_every_layer() -> None:
    src = "\n".join(f"from dioscope.{layer} import x" for layer in LAYERS)
    assert check_source(src, "dioscope.machine") == []
