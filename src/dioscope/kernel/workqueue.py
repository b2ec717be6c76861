"""Deferred work: ``schedule_work()`` on the system workqueue (``kernel/workqueue.c``).

Work items run later in process context. The model runs them when someone flushes the queue
(``flush_scheduled_work``), which the completion context and the syscall layer do at their
quiescence points; a scheduler may run them at any other point it chooses.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["WorkQueue"]


class WorkQueue:
    """A FIFO of pending work items; an item queued twice before it runs runs once."""

    def __init__(self, name: str = "events") -> None:
        self.name = name
        self.pending: list[Callable[[], None]] = []
        self.executed = 0

    def schedule_work(self, fn: Callable[[], None]) -> bool:
        """``schedule_work()``. Return: False if the item was already pending."""
        if fn in self.pending:
            return False
        self.pending.append(fn)
        return True

    def flush(self) -> int:
        """``flush_workqueue()``: run everything pending (and what it queues). Return: items
        run."""
        ran = 0
        while self.pending:
            fn = self.pending.pop(0)
            fn()
            ran += 1
        self.executed += ran
        return ran
