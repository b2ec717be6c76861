"""Filesystems and Direct I/O engines (``fs/``)."""
