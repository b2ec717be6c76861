"""WARN/BUG events: the model's ``WARN_ON_ONCE()`` and ``BUG()``.

The kernel prints a warning and carries on (WARN) or stops (BUG). The model records both as
events on the machine's :class:`EventLog` and carries on, so a test or the sanitizer can assert
on them; a BUG additionally means "the kernel would have crashed here" and the sanitizer reports
it as a failure. Models ``include/asm-generic/bug.h``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EventLog", "KernelEvent"]


@dataclass(frozen=True)
class KernelEvent:
    """One WARN or BUG: its kind, the kernel function that raised it and a message."""

    kind: str  # "WARN" or "BUG"
    site: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} at {self.site}: {self.message}"


@dataclass
class EventLog:
    """All WARN/BUG events of one machine, in order, with WARN_ONCE de-duplication."""

    events: list[KernelEvent] = field(default_factory=list)
    _once: set[tuple[str, str]] = field(default_factory=set)
    listeners: list[Callable[[KernelEvent], None]] = field(default_factory=list)

    def warn(self, site: str, message: str) -> None:
        """``WARN_ON()``: record a warning every time."""
        self._emit(KernelEvent("WARN", site, message))

    def warn_once(self, site: str, message: str) -> None:
        """``WARN_ON_ONCE()``: record a warning the first time this site/message is hit."""
        key = (site, message)
        if key in self._once:
            return
        self._once.add(key)
        self._emit(KernelEvent("WARN", site, message))

    def bug(self, site: str, message: str) -> None:
        """``BUG()``: the kernel would stop here; the model records it and carries on."""
        self._emit(KernelEvent("BUG", site, message))

    def _emit(self, ev: KernelEvent) -> None:
        self.events.append(ev)
        for fn in self.listeners:
            fn(ev)

    def of_kind(self, kind: str) -> list[KernelEvent]:
        return [e for e in self.events if e.kind == kind]

    def clear(self) -> None:
        self.events.clear()
        self._once.clear()
