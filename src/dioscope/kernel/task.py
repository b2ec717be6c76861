"""The running task, ``current`` (``include/linux/sched.h`` ``struct task_struct``).

Only the fields the block layer and tracing read: ``comm``, ``pid``, the task's block plug
(``current->plug``), the bio list that flattens recursive ``submit_bio`` calls
(``current->bio_list``), and the I/O priority new bios inherit. A scheduler switches tasks
with :func:`set_current` (or :func:`running`); without one, every call runs as the default
task.

``context`` says what kind of CPU context runs the code: ``"task"`` (process context) or
``"softirq"`` (the block completion context, which the kernel runs in interrupt or softirq
context). Tracing prints it in the ftrace flags column.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = [
    "IOPRIO_CLASS",
    "IOPRIO_DEFAULT",
    "TaskStruct",
    "current",
    "ioprio_prio_value",
    "running",
    "set_current",
]


class IOPRIO_CLASS:
    """``enum`` of I/O priority classes (``include/uapi/linux/ioprio.h``)."""

    IOPRIO_CLASS_NONE: Final = 0
    IOPRIO_CLASS_RT: Final = 1
    IOPRIO_CLASS_BE: Final = 2
    IOPRIO_CLASS_IDLE: Final = 3
    IOPRIO_CLASS_INVALID: Final = 7


IOPRIO_CLASS_SHIFT: Final = 13


def ioprio_prio_value(klass: int, level: int, hint: int = 0) -> int:
    """``IOPRIO_PRIO_VALUE_HINT()``: class in bits 13-15, hint in bits 3-12, level in 0-2."""
    return (klass << IOPRIO_CLASS_SHIFT) | (hint << 3) | level


IOPRIO_DEFAULT: Final = ioprio_prio_value(IOPRIO_CLASS.IOPRIO_CLASS_BE, 4)
"""What ``get_current_ioprio()`` gives a task that never called ioprio_set(): best effort,
level ``(nice + 20) / 5`` = 4 at nice 0. Traced as ``be,0,4``."""


class TaskStruct:
    """``struct task_struct``: the fields the model reads."""

    __slots__ = ("bio_list", "comm", "context", "ioprio", "pid", "plug")

    def __init__(self, comm: str = "dioscope", pid: int = 1, ioprio: int = IOPRIO_DEFAULT,
                 context: str = "task") -> None:
        self.comm = comm[:15]  # TASK_COMM_LEN is 16 with the NUL
        self.pid = pid
        self.ioprio = ioprio
        self.context = context
        self.plug: Any = None
        """``current->plug``: the task's ``struct blk_plug`` or None."""
        self.bio_list: list[Any] | None = None
        """``current->bio_list``: set while ``submit_bio`` runs, so a bio submitted from
        inside it (a split remainder) is queued instead of recursing."""

    def __repr__(self) -> str:
        return f"TaskStruct({self.comm}-{self.pid})"


_current: list[TaskStruct] = [TaskStruct()]


def current() -> TaskStruct:
    """``current``: the task running now."""
    return _current[0]


def set_current(task: TaskStruct) -> TaskStruct:
    """Switch to ``task`` (a context switch). Return: the task that was running."""
    prev = _current[0]
    _current[0] = task
    return prev


@contextmanager
def running(task: TaskStruct) -> Iterator[TaskStruct]:
    """Run a block of code as ``task``, then switch back."""
    prev = set_current(task)
    try:
        yield task
    finally:
        set_current(prev)
