"""Methods, each a value in one file (see :mod:`fedmoe.methods.base`), listed by
:mod:`fedmoe.methods.registry`."""

from fedmoe.methods import builtin  # noqa: F401 (registers the built-in methods)
from fedmoe.methods.base import Evaluated, GateValues, Method, Output, RunSpec
from fedmoe.methods.registry import get, names, register

__all__ = [
    "Evaluated",
    "GateValues",
    "Method",
    "Output",
    "RunSpec",
    "get",
    "names",
    "register",
]
