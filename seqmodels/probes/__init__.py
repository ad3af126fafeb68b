"""Probes: small synthetic or benchmark tasks that test what a mixer can do. mqar (Zoology's
multi-query associative recall sweep: grid, runs, results) and lra (Long Range Arena
classification); the entry points are recipes/mqar.py and recipes/lra.py."""
