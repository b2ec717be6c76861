"""The model filesystem's one directory (``fs/ext4/namei.c``, ``fs/namei.c``).

SIMPLIFIED: the root directory is the only directory; it maps names to inode numbers in
memory (no directory blocks on the device). A path is a name in it: ``"data"`` (the VFS
strips the leading ``/``); ``""`` is the root itself. A longer path fails as the kernel's
walk would: ENOTDIR when its first component is a regular file, ENOENT otherwise.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..fs_types import S_IFREG
from .inode import ModelFsInode

if TYPE_CHECKING:
    from .super import ModelFs

__all__ = ["EXT4_NAME_LEN", "ext4_create", "ext4_lookup", "ext4_unlink", "path_lookup"]

EXT4_NAME_LEN = 255


def ext4_lookup(fs: ModelFs, name: str) -> ModelFsInode | None:
    """``ext4_lookup()``: the inode ``name`` refers to in the root directory, or None."""
    if name == "":
        return fs.root
    ino = fs.dentries.get(name)
    return fs.inodes[ino] if ino is not None else None


def path_lookup(fs: ModelFs, path: str) -> tuple[int, str]:
    """``path_openat()``'s walk to the last component: (0 or -errno, the name in the root
    directory). -ENOENT / -ENOTDIR for paths through something that is not a directory,
    -ENAMETOOLONG for a component longer than 255 bytes."""
    parts = path.split("/")
    for part in parts:
        if len(part.encode()) > EXT4_NAME_LEN:
            return -errno.ENAMETOOLONG, ""
    if len(parts) == 1:
        return 0, path
    first = ext4_lookup(fs, parts[0])
    if first is not None and not first.is_dir():
        return -errno.ENOTDIR, ""
    if first is fs.root and all(p == "" for p in parts[1:]):
        return 0, ""
    return -errno.ENOENT, ""


def ext4_create(fs: ModelFs, name: str, mode: int) -> ModelFsInode | int:
    """``ext4_create()``: a new empty regular file ``name`` with permission bits ``mode``.

    Return: the inode, or -EEXIST / -ENAMETOOLONG / -ENOENT (empty name).
    """
    if not name:
        return -errno.ENOENT
    if len(name.encode()) > EXT4_NAME_LEN:
        return -errno.ENAMETOOLONG
    if name in fs.dentries:
        return -errno.EEXIST
    inode = ModelFsInode(fs, fs.next_ino, S_IFREG | (mode & 0o7777))
    fs.next_ino += 1
    fs.inodes[inode.i_ino] = inode
    fs.dentries[name] = inode.i_ino
    inode.mark_metadata_dirty()
    return inode


def ext4_unlink(fs: ModelFs, name: str) -> int:
    """``ext4_unlink()``: remove ``name``; the inode goes when nothing uses it any more
    (open files and mappings keep it). Return: 0, -ENOENT, or -EISDIR for the root."""
    inode = ext4_lookup(fs, name)
    if inode is None:
        return -errno.ENOENT
    if inode.is_dir():
        return -errno.EISDIR
    del fs.dentries[name]
    inode.i_nlink = 0
    if inode.i_count <= 0:
        inode.i_count = 1
        inode.iput()
    return 0
