"""What the host and model scenario runners share: resolving mapping names, hex addresses,
iovec lists and fd names of a step, and the dispatch of the vector ops onto the back end's
``_vec`` (the LKMM pattern: one scenario, two back ends)."""

from __future__ import annotations

from typing import Any

from dioscope.difftest.hostmem import prot_bits
from dioscope.scenarios.format import RWF_WORDS, VECTOR_OPS, Step

__all__ = ["StepAddressing"]


class StepAddressing:
    """A mixin: ``self.maps`` (name → mapping with ``.addr``) and ``self.fds`` (name → fd
    record) are the runner's; ``run_error`` is the exception it raises when a step names
    something an earlier step failed to make."""

    maps: dict[str, Any]
    fds: dict[str, Any]
    run_error: type[Exception] = RuntimeError

    def _mapping(self, name: str) -> Any:
        if name not in self.maps:
            raise self.run_error(f'mapping "{name}" does not exist (its mmap step failed)')
        return self.maps[name]

    def _addr(self, base: str | int, off: int) -> int:
        if isinstance(base, int):
            return base + off
        return int(self._mapping(base).addr) + off

    def _segments(self, step: Step) -> list[tuple[int, int]]:
        a = step.args
        if step.op in VECTOR_OPS:
            return [(self._addr(s.base, s.offset), s.length) for s in a["iov"]]
        return [(self._addr(a["buf"], a["at"]), a["length"])]

    def _fd(self, name: str) -> Any:
        if name not in self.fds:
            raise self.run_error(f'fd "{name}" does not exist (its open step failed)')
        return self.fds[name]

    def _mem_range(self, step: Step) -> tuple[Any, int, int]:
        return self._mapping(step.args["buf"]), step.args["at"], step.args["length"]

    def _check_access(self, step: Step) -> None:
        """Refuse a fill/touch step whose bytes are not all mapped with the access it needs
        (the runner's own loads and stores would crash, not report an errno)."""
        m = self._mapping(step.args["buf"])
        at, length = step.args["at"], step.args["length"]
        write = step.op == "fill" or step.args.get("mode") == "write"
        need = prot_bits("rw" if write else "r")
        if not m.allows(at, length, need):
            what = "writable" if write else "readable"
            raise self.run_error(
                f'bytes [{at}, {at + length}) of mapping "{m.name}" are not all '
                f"mapped {what}, so the runner would crash"
            )

    def _set_prot(self, addr: int, length: int, r: tuple[int, int], prot: int) -> tuple[int, int]:
        """After a munmap (``prot`` UNMAPPED) or mprotect that returned ``r`` (ret, errno):
        if it succeeded, record the new protection of ``[addr, addr + length)`` in every
        mapping that covers it. Return: ``r``."""
        if r[1] == 0:
            for other in self.maps.values():
                other.set_range(addr, length, prot)
        return r

    @staticmethod
    def _rwf(step: Step) -> int:
        """The step's ``rwf`` words as RWF_* bits."""
        flags = 0
        for w in step.args["rwf"]:
            flags |= RWF_WORDS[w]
        return flags

    def _vec(self, step: Step, write: bool, v2: bool) -> tuple[int, int]:
        """The back end's preadv/pwritev(2): (ret, errno)."""
        raise TypeError(f"{type(self).__name__} must implement _vec")

    def _op_preadv(self, step: Step) -> tuple[int, int]:
        return self._vec(step, False, False)

    def _op_pwritev(self, step: Step) -> tuple[int, int]:
        return self._vec(step, True, False)

    def _op_preadv2(self, step: Step) -> tuple[int, int]:
        return self._vec(step, False, True)

    def _op_pwritev2(self, step: Step) -> tuple[int, int]:
        return self._vec(step, True, True)
