"""The model filesystem: an ext4-like filesystem on a model block device (``fs/ext4``).

Mount with ``ModelFs(bdev, dio_engine="iomap" | "legacy")``; see :mod:`.super` for the seams
(``open``, ``statx``, ``create_file``) and :mod:`.file` for the file operations and the
Direct I/O engine seam.
"""

from .extents import ExtentMap, ext4_map_blocks
from .file import ModelFsFile, ext4_fallocate, ext4_punch_hole
from .inode import ModelFsInode, ModelFsIomapOps, ext4_get_block, ext4_setattr_size
from .super import EXT4_MAXBYTES, MODELFS_BLOCKSIZE, ModelFs, file_pattern

__all__ = [
    "EXT4_MAXBYTES",
    "MODELFS_BLOCKSIZE",
    "ExtentMap",
    "ModelFs",
    "ModelFsFile",
    "ModelFsInode",
    "ModelFsIomapOps",
    "ext4_fallocate",
    "ext4_get_block",
    "ext4_map_blocks",
    "ext4_punch_hole",
    "ext4_setattr_size",
    "file_pattern",
]
