"""Differential testing: run scenarios on the host kernel and compare with expectations.

Harness code: the model never imports this package.  ``host`` runs a scenario with real
syscalls, ``results`` normalises results and turns every mismatch into one sentence.
"""
