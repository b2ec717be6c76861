"""bio_endio, chaining, splitting into clones, bio_put and status → errno."""

from __future__ import annotations

import errno
import itertools
from typing import Any

import pytest

from dioscope.block.bio_completion import (
    bio_chain,
    bio_endio,
    bio_put,
    bio_split,
    blk_status_to_errno,
    errno_to_blk_status,
)
from dioscope.block.blk_types import BIO_FLAG, BLK_STS, Bio
from dioscope.kernel.trace import TraceBuffer
from dioscope.machine import Kernel

READ = 0


@pytest.mark.parametrize(("status", "err"), [
    (BLK_STS.BLK_STS_OK, 0),
    (BLK_STS.BLK_STS_NOTSUPP, -errno.EOPNOTSUPP),
    (BLK_STS.BLK_STS_TIMEOUT, -errno.ETIMEDOUT),
    (BLK_STS.BLK_STS_NOSPC, -errno.ENOSPC),
    (BLK_STS.BLK_STS_TRANSPORT, -errno.ENOLINK),
    (BLK_STS.BLK_STS_TARGET, -errno.EREMOTEIO),
    (BLK_STS.BLK_STS_MEDIUM, -errno.ENODATA),
    (BLK_STS.BLK_STS_PROTECTION, -errno.EILSEQ),
    (BLK_STS.BLK_STS_RESOURCE, -errno.ENOMEM),
    (BLK_STS.BLK_STS_IOERR, -errno.EIO),
    (BLK_STS.BLK_STS_AGAIN, -errno.EAGAIN),
    (99, -errno.EIO),  # unknown: -EIO (the kernel WARNs)
])
def test_status_to_errno(status: int, err: int) -> None:
    assert blk_status_to_errno(status) == err
    if status != 99:
        assert errno_to_blk_status(err) == status


def test_errno_to_status_unknown() -> None:
    assert errno_to_blk_status(-errno.EPERM) == BLK_STS.BLK_STS_IOERR


def _bio(k: Kernel, n: int = 1) -> Bio:
    bio = Bio(None, n, READ, k.pgdat)
    bio.bi_iter.bi_size = 512 * n
    return bio


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_chain_parent_completes_once_last(k: Kernel, kit: Any, order: tuple[int, ...]) -> None:
    parent = _bio(k)
    end = kit.EndIO()
    end.attach(parent)
    children = [_bio(k), _bio(k)]
    for c in children:
        bio_chain(c, parent)
    assert parent.bi_remaining == 3 and parent.bio_flagged(BIO_FLAG.BIO_CHAIN)
    ends = [children[0], children[1], parent]
    for step, i in enumerate(order):
        bio_endio(ends[i])
        assert len(end.calls) == (1 if step == 2 else 0)
    assert not parent.bio_flagged(BIO_FLAG.BIO_CHAIN)
    assert [c.bi_cnt for c in children] == [0, 0]  # chained children are put


@pytest.mark.parametrize(("child_sts", "parent_sts", "want"), [
    ((0, 0), 0, 0),
    ((BLK_STS.BLK_STS_IOERR, 0), 0, BLK_STS.BLK_STS_IOERR),
    ((0, BLK_STS.BLK_STS_MEDIUM), 0, BLK_STS.BLK_STS_MEDIUM),
    ((BLK_STS.BLK_STS_IOERR, BLK_STS.BLK_STS_MEDIUM), 0, BLK_STS.BLK_STS_IOERR),  # first wins
    ((BLK_STS.BLK_STS_IOERR, 0), BLK_STS.BLK_STS_AGAIN, BLK_STS.BLK_STS_AGAIN),   # kept
])
def test_chain_status(k: Kernel, kit: Any, child_sts: tuple[int, int], parent_sts: int,
                      want: int) -> None:
    parent = _bio(k)
    end = kit.EndIO()
    end.attach(parent)
    parent.bi_status = parent_sts
    kids = [_bio(k), _bio(k)]
    for c, sts in zip(kids, child_sts):
        bio_chain(c, parent)
        c.bi_status = sts
    for c in kids:
        bio_endio(c)
    bio_endio(parent)
    assert end.statuses == [want]


def test_chain_twice_is_a_bug(k: Kernel) -> None:
    parent, child = _bio(k), _bio(k)
    bio_chain(child, parent)
    bio_chain(child, _bio(k))
    assert [e.site for e in k.events.of_kind("BUG")] == ["bio_chain"]


def test_split_clone_shares_bvecs(k: Kernel, kit: Any) -> None:
    bio = kit.page_bio(None, READ, 100, kit.scattered_pages(4))
    bio.bio_set_flag(BIO_FLAG.BIO_PAGE_PINNED)
    split = bio_split(bio, 12)  # 6 KiB: a page and a half
    assert split is not None
    assert split.bi_io_vec is bio.bi_io_vec
    assert (split.bi_vcnt, split.bi_max_vecs) == (0, 0)
    assert split.bi_flags == BIO_FLAG.BIO_CLONED | BIO_FLAG.BIO_SPLIT  # not PINNED
    assert len(split.pages()) == 0  # bio_release_pages finds nothing on a clone
    it, rest = split.bi_iter, bio.bi_iter
    assert (it.bi_sector, it.bi_size, it.bi_idx, it.bi_bvec_done) == (100, 6144, 0, 0)
    assert (rest.bi_sector, rest.bi_size, rest.bi_idx, rest.bi_bvec_done) == (112, 10240, 1,
                                                                              2048)
    assert bio.bi_vcnt == 4 and len(bio.pages()) == 4


@pytest.mark.parametrize("sectors", [0, -8, 32, 40])
def test_split_bad_size(k: Kernel, kit: Any, sectors: int) -> None:
    bio = kit.page_bio(None, READ, 0, kit.scattered_pages(4))
    assert bio_split(bio, sectors) is None
    assert [e.site for e in k.events.of_kind("WARN")] == ["bio_split"]
    assert bio.bi_iter.bi_size == 16384


def test_split_clones_complete_parent_once(k: Kernel, kit: Any) -> None:
    bio = kit.page_bio(None, READ, 0, kit.scattered_pages(8))
    end = kit.EndIO()
    end.attach(bio)
    pieces = []
    for _ in range(3):  # three 8-sector pieces off the front, chained as the kernel does
        s = bio_split(bio, 8)
        assert s is not None
        bio_chain(s, bio)
        pieces.append(s)
    assert bio.bi_iter.bi_size == 5 * 4096 and bio.bi_remaining == 4
    pieces[1].bi_status = BLK_STS.BLK_STS_IOERR
    for s in reversed(pieces):
        bio_endio(s)
    assert end.calls == []
    bio_endio(bio)
    assert end.statuses == [BLK_STS.BLK_STS_IOERR]


def test_bio_put_twice_is_a_bug(k: Kernel) -> None:
    bio = _bio(k)
    bio_put(bio)
    assert bio.bi_cnt == 0 and not k.events.of_kind("BUG")
    bio_put(bio)
    assert [e.site for e in k.events.of_kind("BUG")] == ["bio_put"]


def test_bio_put_reffed(k: Kernel) -> None:
    bio = _bio(k)
    bio.bio_get()
    bio_put(bio)
    assert bio.bi_cnt == 1
    bio_put(bio)
    assert bio.bi_cnt == 0 and not k.events.of_kind("BUG")


class _Dev:
    dev = (8 << 20) | 16


def test_bio_complete_traced_only_when_queued_and_not_by_request(k: Kernel) -> None:
    tb = TraceBuffer(k.pgdat.hooks)
    bio = Bio(_Dev(), 1, READ, k.pgdat)
    bio.bi_iter.bi_sector, bio.bi_iter.bi_size = 2048, 4096
    bio_endio(bio)  # never queued: nothing
    assert tb.lines() == []
    bio.bio_set_flag(BIO_FLAG.BIO_TRACE_COMPLETION)
    bio.bi_status = BLK_STS.BLK_STS_IOERR
    bio_endio(bio)
    assert [line.split(": ", 1)[1] for line in tb.lines()] == [
        "block_bio_complete: 8,16 R 2048 + 8 [-5]"]
    assert not bio.bio_flagged(BIO_FLAG.BIO_TRACE_COMPLETION)
    tb.detach()
