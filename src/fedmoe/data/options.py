"""How the user's own files are read: :class:`ReadOptions` (the ``[data]`` config
section, as the data layer sees it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReadOptions:
    """Options of the readers of the user's own files (:mod:`fedmoe.data.userdata`).

    ``label``: the CSV column holding the labels. ``client``: the CSV column holding
    each row's client id (``""``: none). ``test_fraction``: the share of examples held
    out as the test split where the files have none (a CSV without a ``split`` column,
    an image folder without ``train/`` and ``test/``, a client file without ``x_test``),
    drawn per client when the data names clients; at least one example is held out and
    at least one kept. ``seed``: seeds those draws (the dataset's split, so it stays
    the same whatever the run's seed). ``vocab_size``: how many of the most frequent
    training tokens a text vocabulary keeps (besides padding and unknown);
    ``max_length``: tokens per text (truncated or padded).
    """

    label: str = "label"
    client: str = ""
    test_fraction: float = 0.2
    seed: int = 0
    vocab_size: int = 20_000
    max_length: int = 64
