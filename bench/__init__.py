"""Benchmarks of fedmoe's engine against the systems users would otherwise pick (issue 4).

Run ``python bench/run.py --quick``; see ``docs/benchmarks.md``.
"""
