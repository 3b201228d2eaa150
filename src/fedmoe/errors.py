"""The project's error types.

Every error a user can cause (bad files, configs, arguments, client updates) is raised
as a subclass of :class:`FedmoeError` with a one-line message that names the thing at
fault and what to change. The CLI prints that line and exits non-zero.
"""


class FedmoeError(Exception):
    """Base class: a user-facing, one-line error."""


class DataError(FedmoeError):
    """A dataset file is missing, malformed, truncated or fails its checksum."""


class PartitionError(FedmoeError):
    """A client partition cannot be built as requested."""


class ConfigError(FedmoeError):
    """A configuration value is unknown, of the wrong type or out of range."""
