"""Optional TensorBoard logging of a run (``tensorboard = true`` in the config).

Writes the federated phase's validation loss and accuracy per round as they happen, and
each method's final client-mean accuracies, to ``<run dir>/tensorboard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmoe.errors import ConfigError
from fedmoe.federation import RoundRecord


class TensorBoardLog:
    """A TensorBoard event writer for one run."""

    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard = true needs the tensorboard package: "
                "pip install 'fedmoe[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(directory))

    def round(self, record: RoundRecord) -> None:
        """Log one federated round's validation of the global model (check rounds only)."""
        if record.val_loss is None or record.val_accuracy is None:
            return
        self.writer.add_scalar("federated/val_loss", record.val_loss, record.round)
        self.writer.add_scalar("federated/val_accuracy", record.val_accuracy, record.round)
        self.writer.flush()

    def results(self, results: dict[str, Any]) -> None:
        """Log every method's client-mean accuracy on local and global test."""
        for method, entry in results["methods"].items():
            for split in ("local_test", "global_test"):
                self.writer.add_scalar(f"{method}/{split}_accuracy", entry[split]["mean"], 0)
        self.writer.close()
