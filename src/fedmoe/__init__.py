"""fedmoe: personalised federated learning with a federated mixture of experts."""

__version__ = "0.1.0"
