"""Experiments: typed configuration, presets, preparation, the one driver, results."""
