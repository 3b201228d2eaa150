"""Sweeps: a grid of config values x seeds (:mod:`fedmoe.sweep.runner`), the sweep.csv
contract (:mod:`fedmoe.sweep.format`) and the reader of sweep directories
(:mod:`fedmoe.sweep.reader`, light: no torch, for the report)."""
