"""The syscall layer: what a user program sees (a Process API that mirrors ``os``)."""
