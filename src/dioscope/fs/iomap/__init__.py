"""iomap: extent-mapping based I/O (``fs/iomap/``)."""
