"""VFS structures the Direct I/O engines and the syscall layer share
(``include/linux/fs.h``, ``include/linux/iomap.h``, ``include/linux/buffer_head.h``).

These are the contracts between the filesystem (``fs/modelfs``), the page cache
(``mm/filemap.py``), the Direct I/O engines (``fs/iomap/direct_io.py``, ``fs/direct_io.py``,
``fs/block_dev.py``) and the syscall layer (``fs/read_write.py``, ``syscalls/``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from ..block.devices import BlockDevice
    from ..lib.iov_iter import IovIter
    from ..mm.page_alloc import PgData

__all__ = [
    "DIO_ENGINES",
    "FALLOC",
    "FMODE",
    "IOCB",
    "IOMAP_FLAGS",
    "IOMAP_NULL_ADDR",
    "IOMAP_OP",
    "IOMAP_TYPE",
    "OFLAG",
    "RWF",
    "STATX",
    "S_IFBLK",
    "S_IFDIR",
    "S_IFREG",
    "BufferHead",
    "File",
    "FileOperations",
    "Inode",
    "IoMap",
    "Kiocb",
    "SuperBlock",
    "register_dio_engine",
]

S_IFREG: Final = 0o100000
S_IFDIR: Final = 0o040000
S_IFBLK: Final = 0o060000


class OFLAG(enum.IntFlag):
    """``open(2)`` flags (x86-64 values, ``include/uapi/asm-generic/fcntl.h``)."""

    O_RDONLY = 0
    O_WRONLY = 0o1
    O_RDWR = 0o2
    O_CREAT = 0o100
    O_EXCL = 0o200
    O_TRUNC = 0o1000
    O_APPEND = 0o2000
    O_NONBLOCK = 0o4000
    O_DSYNC = 0o10000
    O_DIRECT = 0o40000
    O_LARGEFILE = 0o100000
    O_DIRECTORY = 0o200000
    O_SYNC = 0o4010000  # __O_SYNC | O_DSYNC


O_ACCMODE: Final = 0o3


class FMODE(enum.IntFlag):
    """``file->f_mode`` bits the model uses."""

    FMODE_READ = 0x1
    FMODE_WRITE = 0x2
    FMODE_LSEEK = 0x4
    FMODE_PREAD = 0x8
    FMODE_PWRITE = 0x10
    FMODE_CAN_ODIRECT = 0x400000  # [6.x] (v5.x: a_ops->direct_IO != NULL)


class RWF(enum.IntFlag):
    """``preadv2``/``pwritev2`` flags (``include/uapi/linux/fs.h``)."""

    RWF_HIPRI = 0x01
    RWF_DSYNC = 0x02
    RWF_SYNC = 0x04
    RWF_NOWAIT = 0x08
    RWF_APPEND = 0x10
    RWF_NOAPPEND = 0x20  # [6.9+]
    RWF_ATOMIC = 0x40  # [6.11+]
    RWF_DONTCACHE = 0x80  # [6.14+]


class IOCB(enum.IntFlag):
    """``kiocb->ki_flags`` (``include/linux/fs.h``)."""

    IOCB_HIPRI = 1 << 0
    IOCB_DSYNC = 1 << 1
    IOCB_SYNC = 1 << 2
    IOCB_NOWAIT = 1 << 3
    IOCB_APPEND = 1 << 4
    IOCB_ATOMIC = 1 << 5
    IOCB_DIRECT = 1 << 17
    IOCB_WRITE = 1 << 18
    IOCB_WAITQ = 1 << 19
    IOCB_NOIO = 1 << 20


class IOMAP_TYPE(enum.IntEnum):
    """``iomap->type``."""

    IOMAP_HOLE = 0
    IOMAP_DELALLOC = 1
    IOMAP_MAPPED = 2
    IOMAP_UNWRITTEN = 3
    IOMAP_INLINE = 4


class IOMAP_FLAGS(enum.IntFlag):
    """``iomap->flags``."""

    IOMAP_F_NEW = 1 << 0
    IOMAP_F_DIRTY = 1 << 1
    IOMAP_F_SHARED = 1 << 2
    IOMAP_F_MERGED = 1 << 3


class IOMAP_OP(enum.IntFlag):
    """Flags an ``iomap_begin`` is called with (``IOMAP_WRITE`` etc.)."""

    IOMAP_WRITE = 1 << 0
    IOMAP_ZERO = 1 << 1
    IOMAP_REPORT = 1 << 2
    IOMAP_FAULT = 1 << 3
    IOMAP_DIRECT = 1 << 4
    IOMAP_NOWAIT = 1 << 5
    IOMAP_OVERWRITE_ONLY = 1 << 6


class FALLOC(enum.IntFlag):
    """``fallocate(2)`` modes (``include/uapi/linux/falloc.h``)."""

    FALLOC_FL_KEEP_SIZE = 0x01
    FALLOC_FL_PUNCH_HOLE = 0x02
    FALLOC_FL_NO_HIDE_STALE = 0x04
    FALLOC_FL_COLLAPSE_RANGE = 0x08
    FALLOC_FL_ZERO_RANGE = 0x10
    FALLOC_FL_INSERT_RANGE = 0x20
    FALLOC_FL_UNSHARE_RANGE = 0x40
    FALLOC_FL_WRITE_ZEROES = 0x80  # [6.17+]


class STATX(enum.IntFlag):
    """``statx(2)`` mask bits (``include/uapi/linux/stat.h``)."""

    STATX_TYPE = 0x1
    STATX_MODE = 0x2
    STATX_NLINK = 0x4
    STATX_UID = 0x8
    STATX_GID = 0x10
    STATX_ATIME = 0x20
    STATX_MTIME = 0x40
    STATX_CTIME = 0x80
    STATX_INO = 0x100
    STATX_SIZE = 0x200
    STATX_BLOCKS = 0x400
    STATX_BASIC_STATS = 0x7FF
    STATX_BTIME = 0x800
    STATX_MNT_ID = 0x1000  # [5.8+]
    STATX_DIOALIGN = 0x2000  # [6.1+]


IOMAP_NULL_ADDR: Final = -1


class IoMap:
    """``struct iomap``: one mapping of a file range onto the disk (a plain class, as
    :class:`Kiocb`)."""

    def __init__(self, offset: int, length: int, type: IOMAP_TYPE,
                 addr: int = IOMAP_NULL_ADDR, flags: int = 0,
                 bdev: BlockDevice | None = None) -> None:
        self.offset = offset
        """File offset (bytes) where the mapping starts."""
        self.length = length
        self.type = type
        self.addr = addr
        """Disk address (bytes) of ``offset``, or IOMAP_NULL_ADDR for holes."""
        self.flags = flags
        self.bdev = bdev

    def __repr__(self) -> str:
        return (f"IoMap(offset={self.offset}, length={self.length}, type={self.type!r}, "
                f"addr={self.addr}, flags={self.flags:#x})")


@dataclass
class BufferHead:
    """``struct buffer_head`` as a ``get_block_t`` callback fills it (legacy DIO)."""

    b_size: int
    """In: bytes wanted; out: bytes mapped contiguously from ``b_blocknr``."""
    b_blocknr: int = -1
    mapped: bool = False
    new: bool = False
    boundary: bool = False
    unwritten: bool = False
    b_bdev: BlockDevice | None = None


class SuperBlock:
    """``struct super_block``: a mounted filesystem on a block device."""

    def __init__(self, bdev: BlockDevice, blocksize: int, dio_engine: str) -> None:
        self.s_bdev = bdev
        self.s_blocksize = blocksize
        self.s_blocksize_bits = blocksize.bit_length() - 1
        self.dio_engine = dio_engine
        """``"iomap"`` (ext4/xfs style, default) or ``"legacy"`` (``fs/direct-io.c``)."""
        self.fs: Any = None
        self.s_maxbytes = (1 << 63) - 1
        """Largest file size (``MAX_LFS_FILESIZE`` unless the filesystem says less)."""
        self.dio_ops: dict[str, Callable[..., int]] = {}
        """Direct I/O engines for this mount, by name; a name missing here is looked up in
        :data:`DIO_ENGINES` (see :func:`register_dio_engine`)."""

    def dio_engine_fn(self, name: str) -> Callable[..., int]:
        """The Direct I/O engine ``name`` for this mount.

        Raises RuntimeError when no engine of that name was registered: that is a model
        set-up error (the engine module was not imported), never a user error.
        """
        fn = self.dio_ops.get(name) or DIO_ENGINES.get(name)
        if fn is None:
            raise RuntimeError(
                f"no {name!r} Direct I/O engine is registered: import the engine module "
                f"(it calls fs_types.register_dio_engine) or pass dio_ops= at mount")
        return fn


DIO_ENGINES: dict[str, Callable[..., int]] = {}
"""The model's Direct I/O engines, registered by the engine modules at import.

The seam between a filesystem and the engines (``fs/modelfs`` calls them):

* ``"iomap"``: ``iomap_dio_rw(iocb, iter, ops, dio_flags) -> int`` (``fs/iomap/direct-io.c``):
  ``ops`` has ``iomap_begin(inode, pos, length, flags) -> (errno, IoMap)``,
  ``iomap_end(inode, pos, length, written, flags, iomap) -> errno`` and
  ``end_io(iocb, size, error, dio_flags) -> errno``; the engine advances ``ki_pos``.
* ``"legacy"``: ``blockdev_direct_IO(iocb, inode, iter, get_block) -> int``
  (``fs/direct-io.c``, DIO_LOCKING | DIO_SKIP_HOLES): ``get_block(inode, iblock, bh, create)
  -> errno``; the engine does not move ``ki_pos`` (``generic_file_read_iter`` and
  ``generic_file_direct_write`` do).
"""


def register_dio_engine(name: str, fn: Callable[..., int]) -> None:
    """Make ``fn`` the Direct I/O engine ``name`` (``"iomap"`` or ``"legacy"``) of every
    mount that does not name its own in ``SuperBlock.dio_ops``."""
    DIO_ENGINES[name] = fn


@mypyc_attr(allow_interpreted_subclasses=True)  # PipeInode is not compiled (dioscope._native)
class Inode:
    """``struct inode`` fields the model uses; a filesystem subclasses or fills it."""

    def __init__(self, sb: SuperBlock | None, ino: int, mode: int, pgdat: PgData) -> None:
        self.i_sb = sb
        self.i_ino = ino
        self.i_mode = mode
        self.i_size = 0
        self.i_blkbits = sb.s_blocksize_bits if sb else 12
        self.i_nlink = 1
        self.i_dio_count = 0
        self.i_mapping: Any = None
        """The page cache (``mm.filemap.AddressSpace``)."""
        self.i_bdev: BlockDevice | None = None
        """For a block-device inode: the device itself."""
        self.pgdat = pgdat

    def is_reg(self) -> bool:
        return (self.i_mode & 0o170000) == S_IFREG

    def is_dir(self) -> bool:
        return (self.i_mode & 0o170000) == S_IFDIR

    def is_blk(self) -> bool:
        return (self.i_mode & 0o170000) == S_IFBLK


class FileOperations(Protocol):
    """``struct file_operations``: what the syscall layer calls on an open file."""

    def read_iter(self, iocb: Kiocb, it: IovIter) -> int: ...

    def write_iter(self, iocb: Kiocb, it: IovIter) -> int: ...


@dataclass
class File:
    """``struct file``: an open file description."""

    f_inode: Inode
    f_flags: int
    f_mode: int
    f_op: Any
    f_pos: int = 0
    f_mapping: Any = None
    private: dict[str, Any] = field(default_factory=dict)
    f_wb_err: int = 0
    """``file->f_wb_err``: the writeback error sequence this file has seen (``errseq_t``)."""
    f_count: int = 1
    """``file->f_count``: descriptors (in any process) that refer to this open file; the
    last ``fput`` calls ``->release``."""


class Kiocb:
    """``struct kiocb``: one I/O on a file at a position. (A plain class, not a dataclass:
    compiled, a dataclass keeps an interpreted ``__init__``; ARCHITECTURE.md.)"""

    def __init__(self, ki_filp: File, ki_pos: int, ki_flags: int = 0,
                 ki_complete: Any = None) -> None:
        self.ki_filp = ki_filp
        self.ki_pos = ki_pos
        self.ki_flags = ki_flags
        self.ki_complete = ki_complete
        """None for a synchronous kiocb (``is_sync_kiocb``); the model's I/O is synchronous."""

    def is_sync_kiocb(self) -> bool:
        return self.ki_complete is None
