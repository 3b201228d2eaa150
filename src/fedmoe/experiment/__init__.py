"""Experiments: typed configuration, the paper's protocol, results."""
