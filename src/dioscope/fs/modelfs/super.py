"""Mounting the model filesystem, opening its files, ``statx``, and test set-up
(``fs/ext4/super.c``; ``fs/namei.c`` ``do_open`` / ``may_open``; ``fs/open.c``
``do_dentry_open``; ``fs/ext4/inode.c`` ``ext4_getattr``).

:class:`ModelFs` is an ext4-like filesystem on a :class:`~dioscope.block.devices.BlockDevice`:
4 KiB blocks (the page size) on a device of 512-byte (or up to 4 KiB) logical blocks, one flat
root directory, extent-mapped files with holes and unwritten extents, a page cache per file,
and the Direct I/O engine the mount names (``"iomap"``, ext4/xfs style, or ``"legacy"``,
``fs/direct-io.c`` with a ``get_block``; see :data:`~dioscope.fs.fs_types.DIO_ENGINES`).

The seam for the syscall layer: ``ModelFs.open(name, flags, mode)`` → ``File`` whose
``f_op`` (:class:`~dioscope.fs.modelfs.file.ModelFsFile`) has ``read_iter``,
``write_iter``, ``fsync``, ``fallocate``, ``truncate``, ``getattr`` (statx), ``vm_file``
(mmap) and ``release`` (close).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...block.bio import bio_alloc
from ...block.blk_core import submit_bio_wait
from ...block.blk_types import REQ_FLAG, REQ_OP
from ...kernel.types import PAGE_SIZE
from ...lib.iov_iter import ITER_SOURCE, iov_iter_bvec
from ...mm import filemap
from ...mm.page_alloc import alloc_pages_bulk
from ...mm.page_ref import drop_refs
from ..filemap_rw import generic_perform_write
from ..fs_types import (
    FALLOC,
    FMODE,
    O_ACCMODE,
    OFLAG,
    S_IFDIR,
    STATX,
    File,
    Kiocb,
    SuperBlock,
)
from .balloc import BlockAllocator
from .file import ModelFsFile, ext4_fallocate
from .inode import ModelFsAops, ModelFsInode, ModelFsIomapOps, ext4_setattr_size
from .namei import ext4_create, ext4_lookup, ext4_unlink, path_lookup

if TYPE_CHECKING:
    from ...block.devices import BlockDevice

__all__ = [
    "EXT4_MAXBYTES",
    "EXT4_ROOT_INO",
    "MODELFS_BLOCKSIZE",
    "ModelFs",
    "file_pattern",
]

MODELFS_BLOCKSIZE = 4096
EXT4_ROOT_INO = 2
EXT4_FIRST_FILE_INO = 12
"""The first inode a fresh ext4 gives a file (11 is ``lost+found``)."""
EXT4_MAXBYTES = ((1 << 32) - 1) << 12
"""``ext4_max_size()`` for extent-mapped files with 4 KiB blocks: 2**32 - 1 blocks."""
LLONG_MAX = (1 << 63) - 1


def file_pattern(ino: int, offset: int, length: int) -> bytes:
    """The default contents :meth:`ModelFs.create_file` gives a file: little-endian 64-bit
    words, each ``ino << 48 | (its file offset)``, so any byte names its file and place."""
    first = offset & ~7
    words = (np.arange(first, offset + length + 8, 8, dtype=np.uint64)
             | np.uint64(ino << 48))
    raw = words.astype("<u8").tobytes()
    return raw[offset - first : offset - first + length]


class ModelFs:
    """An ext4-like filesystem mounted on ``bdev``.

    Arguments: ``dio_engine`` "iomap" (default) or "legacy"; ``dio_ops`` engines for this
    mount only (by name; otherwise the registered ones); ``reserved_blocks`` blocks at the
    start of the device that hold no file data (the superblock's).
    """

    def __init__(self, bdev: BlockDevice, dio_engine: str = "iomap", *,
                 dio_ops: dict[str, object] | None = None, reserved_blocks: int = 1) -> None:
        if dio_engine not in ("iomap", "legacy"):
            raise ValueError(f"unknown Direct I/O engine {dio_engine!r}")
        lbs = int(bdev.limits.logical_block_size)
        if lbs > MODELFS_BLOCKSIZE:
            raise ValueError(f"a {lbs}-byte logical block is larger than the fs block")
        self.bdev = bdev
        self.pgdat = bdev.pgdat
        self.sb = SuperBlock(bdev, MODELFS_BLOCKSIZE, dio_engine)
        self.sb.fs = self
        self.sb.s_maxbytes = EXT4_MAXBYTES
        if dio_ops:
            self.sb.dio_ops.update(dio_ops)  # type: ignore[arg-type]
        self.balloc = BlockAllocator(bdev.capacity // MODELFS_BLOCKSIZE, reserved_blocks)
        self.aops = ModelFsAops()
        self.iomap_ops = ModelFsIomapOps()
        self.fops = ModelFsFile(self)
        self.inodes: dict[int, ModelFsInode] = {}
        self.dentries: dict[str, int] = {}
        self.next_ino = EXT4_FIRST_FILE_INO
        self.root = ModelFsInode(self, EXT4_ROOT_INO, S_IFDIR | 0o755)
        self.root.i_size = MODELFS_BLOCKSIZE
        self.root.i_nlink = 2
        self.inodes[EXT4_ROOT_INO] = self.root

    def __repr__(self) -> str:
        return (f"ModelFs({self.bdev!r}, {self.sb.dio_engine}, {len(self.dentries)} files, "
                f"{self.balloc.free_blocks} blocks free)")

    def wait_io(self) -> bool:
        """How the filesystem's tasks sleep on I/O (``io_schedule``): first flush the task's
        block plug, as ``sched_submit_work`` -> ``blk_flush_plug`` does before a task sleeps
        (``kernel/sched/core.c``) — a page-cache read submitted under a Direct I/O's plug
        (a GUP fault on a file mapping) must reach the device — then run the device's
        completion context. Return: whether anything completed."""
        from ...block.blk_mq import blk_mq_flush_plug_list
        from ...kernel.task import current

        plug = current().plug
        if plug is not None and plug.mq_list:
            blk_mq_flush_plug_list(plug)
        return self.bdev.cq.run() > 0

    # --- names ------------------------------------------------------------------------------
    def lookup(self, name: str) -> ModelFsInode | None:
        return ext4_lookup(self, name)

    def create(self, name: str, mode: int = 0o644) -> ModelFsInode | int:
        return ext4_create(self, name, mode)

    def unlink(self, name: str) -> int:
        return ext4_unlink(self, name)

    # --- open ---------------------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o644) -> File | int:
        """``do_sys_open()`` below the VFS: ``path`` relative to the root (``""`` is the
        root directory).

        Checks in the kernel's order: the walk (ENOENT, ENOTDIR, ENAMETOOLONG); O_CREAT:
        EEXIST with O_EXCL, EISDIR for a directory; ENOENT without O_CREAT; ENOTDIR for
        O_DIRECTORY on a file; ``may_open``: EISDIR for a directory opened for writing or
        with O_TRUNC; ``do_dentry_open``: EINVAL for O_DIRECT where Direct I/O is not
        supported (directories); then O_TRUNC truncates a regular file to 0.
        Return: the open File, or -errno.
        """
        err, name = path_lookup(self, path)
        if err:
            return err
        inode = ext4_lookup(self, name)
        created = False
        if flags & OFLAG.O_CREAT:
            if inode is not None:
                if flags & OFLAG.O_EXCL:
                    return -errno.EEXIST
                if inode.is_dir():
                    return -errno.EISDIR
            else:
                made = ext4_create(self, name, mode)
                if isinstance(made, int):
                    return made
                inode, created = made, True
        if inode is None:
            return -errno.ENOENT
        if flags & OFLAG.O_DIRECTORY and not inode.is_dir():
            return -errno.ENOTDIR
        acc = flags & O_ACCMODE
        if inode.is_dir() and (acc in (OFLAG.O_WRONLY, OFLAG.O_RDWR) or flags & OFLAG.O_TRUNC):
            return -errno.EISDIR
        f_mode = {0: FMODE.FMODE_READ, 1: FMODE.FMODE_WRITE,
                  2: FMODE.FMODE_READ | FMODE.FMODE_WRITE}.get(acc, 0)
        if inode.is_reg():
            f_mode |= FMODE.FMODE_CAN_ODIRECT
        if flags & OFLAG.O_DIRECT and not f_mode & FMODE.FMODE_CAN_ODIRECT:
            return -errno.EINVAL
        if flags & OFLAG.O_TRUNC and inode.is_reg() and not created:
            ret = ext4_setattr_size(inode, 0)
            if ret:
                return ret
        f_flags = (flags & ~(OFLAG.O_CREAT | OFLAG.O_EXCL | OFLAG.O_TRUNC)) | OFLAG.O_LARGEFILE
        f = File(inode, int(f_flags), int(f_mode), self.fops, 0, inode.i_mapping)
        f.f_wb_err = filemap.errseq_sample(inode.i_mapping)
        inode.iget()
        return f

    # --- statx ------------------------------------------------------------------------------
    def statx(self, inode: ModelFsInode, mask: int = int(STATX.STATX_BASIC_STATS)) -> dict[
            str, int]:
        """``vfs_getattr()`` / ``ext4_getattr()``: the statx fields of ``inode``.

        STATX_DIOALIGN (profile switch STATX_DIOALIGN, v6.1) on a regular file: the iomap
        mount reports ``dma_alignment + 1`` and the logical block size, as ext4 does; the
        legacy mount reports the logical block size for both, what ``fs/direct-io.c``
        requires of memory too (a model choice: the legacy filesystems of 6.1+ do not
        report STATX_DIOALIGN). Not reported for directories; 0/0 would mean "no Direct
        I/O". Return: a dict with ``mask`` (the result mask) and the fields.
        """
        res_mask = int(STATX.STATX_BASIC_STATS | STATX.STATX_MNT_ID)
        res = {
            "mode": inode.i_mode, "nlink": inode.i_nlink, "uid": 0, "gid": 0,
            "ino": inode.i_ino, "size": inode.i_size, "blocks": inode.i_blocks,
            "blksize": MODELFS_BLOCKSIZE, "dio_mem_align": 0, "dio_offset_align": 0,
        }
        if inode.is_dir():
            res["blocks"] = MODELFS_BLOCKSIZE >> 9
        if mask & STATX.STATX_DIOALIGN and self.pgdat.cfg.STATX_DIOALIGN and inode.is_reg():
            res_mask |= int(STATX.STATX_DIOALIGN)
            lim = self.bdev.limits
            lbs = int(lim.logical_block_size)
            res["dio_offset_align"] = lbs
            res["dio_mem_align"] = (int(lim.dma_alignment) + 1 if self.sb.dio_engine == "iomap"
                                    else lbs)
        res["mask"] = res_mask
        return res

    # --- sync ----------------------------------------------------------------------------
    def blkdev_issue_flush(self) -> int:
        """``blkdev_issue_flush()``: an empty REQ_OP_WRITE | REQ_PREFLUSH bio, waited for.
        Return: 0 or -errno."""
        bio = bio_alloc(self.bdev, 0, int(REQ_OP.REQ_OP_WRITE) | int(REQ_FLAG.REQ_PREFLUSH),
                        self.pgdat)
        assert bio is not None
        return submit_bio_wait(bio)

    def sync_fs(self) -> int:
        """``sync_filesystem()``: write back every file and flush the device. Return: 0 or
        the first -errno."""
        err = 0
        for inode in list(self.inodes.values()):
            ret = filemap.filemap_write_and_wait_range(inode.i_mapping, 0, LLONG_MAX)
            err = err or ret
            inode.datasync_dirty = False
        ret = self.blkdev_issue_flush()
        return err or ret

    # --- test set-up ------------------------------------------------------------------------
    def create_file(self, name: str, size: int, content: bytes | None = None, *,
                    holes: Sequence[tuple[int, int]] = (),
                    unwritten: Sequence[tuple[int, int]] = (),
                    mode: int = 0o644) -> ModelFsInode:
        """Make a file for a test or scenario: ``size`` bytes of ``content`` (default
        :func:`file_pattern`), except that ``holes`` stay holes and ``unwritten`` ranges are
        preallocated unwritten (``fallocate(FALLOC_FL_KEEP_SIZE)``; they may reach past
        ``size``) — both read as zeros. Ranges are (offset, length) in bytes, block-aligned
        (a length may run to ``size``). The data goes through the page cache, and the file
        is fsynced: its data pages are cached and clean afterwards.

        Raises ValueError for a bad request (a name that exists, misaligned ranges): this is
        set-up, not user input. Return: the inode.
        """
        inode = ext4_create(self, name, mode)
        if isinstance(inode, int):
            raise ValueError(f"cannot create {name!r}: errno {-inode}")
        if content is None:
            content = file_pattern(inode.i_ino, 0, size)
        if len(content) != size:
            raise ValueError(f"content is {len(content)} bytes, size is {size}")
        data = np.ones(size, bool)
        for off, length in (*holes, *unwritten):
            end = off + length
            if off < 0 or length <= 0 or off % MODELFS_BLOCKSIZE or (
                    end % MODELFS_BLOCKSIZE and end < size):
                raise ValueError(f"range ({off}, {length}) is not block-aligned")
            data[off:end] = False
        buf = np.frombuffer(content, np.uint8)
        for a, b in _true_runs(data):
            self._write_through_cache(inode, a, buf[a:b])
        if inode.i_size < size:
            ext4_setattr_size(inode, size)
        for off, length in unwritten:
            ret = ext4_fallocate(inode, int(FALLOC.FALLOC_FL_KEEP_SIZE), off, length)
            if ret:
                raise ValueError(f"fallocate({off}, {length}) failed: errno {-ret}")
        ret = filemap.filemap_write_and_wait_range(inode.i_mapping, 0, LLONG_MAX)
        if ret:
            raise ValueError(f"writeback of {name!r} failed: errno {-ret}")
        ret = self.blkdev_issue_flush()
        inode.datasync_dirty = False
        return inode

    def _write_through_cache(self, inode: ModelFsInode, pos: int, data: np.ndarray) -> None:
        """Buffered write of kernel bytes (an ITER_BVEC over scratch pages), 4 MiB a go.

        One set of scratch pages serves every chunk and is freed at the end, so the page
        cache's pages are not interleaved with freed scratch frames (which would leave
        memory fragmented for whatever is allocated next).
        """
        step = 1024 * PAGE_SIZE
        nscratch = (min(len(data), step) + PAGE_SIZE - 1) // PAGE_SIZE
        pfns = alloc_pages_bulk(self.pgdat, nscratch)
        try:
            if len(pfns) < nscratch:
                raise MemoryError("no memory for create_file's scratch pages")
            frames = self.pgdat.mem.frames
            for k in range(0, len(data), step):
                chunk = data[k : k + step]
                npages = (len(chunk) + PAGE_SIZE - 1) // PAGE_SIZE
                padded = np.zeros(npages * PAGE_SIZE, np.uint8)
                padded[: len(chunk)] = chunk
                frames[pfns[:npages]] = padded.reshape(npages, PAGE_SIZE)
                bvec = [(int(p), PAGE_SIZE, 0) for p in pfns[:npages].tolist()]
                it = iov_iter_bvec(self.pgdat, ITER_SOURCE, bvec, len(bvec), len(chunk))
                f = File(inode, int(OFLAG.O_RDWR), int(FMODE.FMODE_READ | FMODE.FMODE_WRITE),
                         self.fops, 0, inode.i_mapping)
                ret = generic_perform_write(Kiocb(f, pos + k), it)
                if ret != len(chunk):
                    raise ValueError(f"write at {pos + k} gave {ret}")
        finally:
            drop_refs(self.pgdat, pfns, "create_file")


def _true_runs(mask: np.ndarray) -> Iterable[tuple[int, int]]:
    if not len(mask) or not mask.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))
