"""Memory management: physical memory, struct page state, the buddy allocator, address
spaces, faults, fork and GUP (``mm/``)."""
