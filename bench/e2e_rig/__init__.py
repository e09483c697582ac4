"""The parts of bench/e2e.py: the capture, the processes and what they hold, the relay.

Not a benchmark itself (``./dev bench`` runs only ``bench/*.py``).
"""
