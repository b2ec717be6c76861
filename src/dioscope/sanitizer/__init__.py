"""The sanitizer: shadow pin/reference accounting, provenance and named rules (DESIGN.md §6).

Harness layer: it imports the model and observes it through ``pgdat.hooks`` and
``pgdat.events``; the model never imports it.

    with Sanitizer(k.pgdat) as san:
        ...  # run the workload
        san.check_quiescent()
        san.assert_clean()
"""

from __future__ import annotations

from .ledger import Holding, Ledger
from .rules import RULES, Rule, Violation
from .sanitizer import UNTRACKED_RELEASE_SITES, Sanitizer, SanitizerError

__all__ = [
    "RULES",
    "UNTRACKED_RELEASE_SITES",
    "Holding",
    "Ledger",
    "Rule",
    "Sanitizer",
    "SanitizerError",
    "Violation",
]
