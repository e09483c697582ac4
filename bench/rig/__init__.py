"""The benches' shared parts: bench/e2e.py's capture, processes and relay, and
the registry set-up of the in-process benches (``registry``).

Not a benchmark itself (``./dev bench`` runs only ``bench/*.py``).
"""
