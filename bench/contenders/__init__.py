"""One module per contender; each runs one job in its own process (``python -m``) and
prints one result line (see :mod:`bench.harness`)."""
