"""fedmoe: personalised federated learning with a federated mixture of experts.

The Python API (:mod:`fedmoe.api`; loaded on first use, so ``import fedmoe`` stays
light): :func:`config`, :func:`run`, :func:`resume`, :func:`load_results`, :func:`table`;
:class:`Method` and :func:`register` to add a method; :func:`register_model` to name a
model factory. See docs/python-api.md.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "config": "fedmoe.api",
    "run": "fedmoe.api",
    "resume": "fedmoe.api",
    "load_results": "fedmoe.api",
    "table": "fedmoe.api",
    "Method": "fedmoe.methods",
    "register": "fedmoe.methods",
    "register_model": "fedmoe.models",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fedmoe' has no attribute {name!r}")
