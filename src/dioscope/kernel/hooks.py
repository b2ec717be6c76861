"""The one seam between the model and the harness.

Model code reports reference and pin traffic here; the sanitizer (and tracing) subscribe.
Model code never imports the harness: it only calls :class:`Hooks` methods, and only when
``hooks.active`` is true, so a run without observers pays one attribute test per call site.

Every acquisition carries its *holder* (who owns the reference: a bio, a dio, a test, a pipe
buffer) and *site* (the kernel function that took it). Page arrays are numpy int64 pfn arrays;
an entry of -1 is a NULL page pointer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["Hooks", "PageObserver"]


class PageObserver(Protocol):
    """What a subscriber implements (all optional at runtime; see :class:`Hooks`)."""

    def on_acquire(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None: ...

    def on_release(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None: ...

    def on_free(self, pfns: np.ndarray, order: int, site: str) -> None: ...


class Hooks:
    """Fan-out of model events to observers.

    ``kind`` is ``"get"`` (FOLL_GET / get_page: refcount +1 per entry) or ``"pin"``
    (FOLL_PIN: pin accounting per entry). Entries are *subpages*; several may belong to one
    folio, and the same pfn may appear more than once (each counts).
    """

    def __init__(self) -> None:
        self.observers: list[Any] = []
        self.active = False
        self.tracepoints: list[Callable[[str, dict[str, object]], None]] = []

    def subscribe(self, observer: Any) -> None:
        self.observers.append(observer)
        self.active = True

    def unsubscribe(self, observer: Any) -> None:
        self.observers.remove(observer)
        self.active = bool(self.observers) or bool(self.tracepoints)

    def acquire(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
        for o in self.observers:
            o.on_acquire(kind, pfns, holder, site)

    def release(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
        for o in self.observers:
            o.on_release(kind, pfns, holder, site)

    def free(self, pfns: np.ndarray, order: int, site: str) -> None:
        for o in self.observers:
            fn = getattr(o, "on_free", None)
            if fn is not None:
                fn(pfns, order, site)
