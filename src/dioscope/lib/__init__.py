"""Library code: iov_iter (``lib/iov_iter.c``)."""
