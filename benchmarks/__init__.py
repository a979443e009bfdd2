"""Benchmarks of the app against reference points (not part of the installed package).

``python -m benchmarks.centralized`` compares federated runs with a centralised
baseline trained on the pooled silo data; see :mod:`benchmarks.centralized`. What the
benchmarks share (command line, process setup, probes, tables, provenance) is
:mod:`benchmarks.harness`.
"""
