"""Runtime layer: profile switches, errno, types, WARN/BUG events and hooks.

Nothing in this package imports any other dioscope package.
"""
