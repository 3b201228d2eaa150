"""The registry of methods: name -> method value. Nothing outside ``methods/`` names a
method; everything else asks the registry. Importing :mod:`fedmoe.methods` registers
the built-in methods (:mod:`fedmoe.methods.builtin`)."""

from __future__ import annotations

from typing import TypeVar

from fedmoe.errors import ConfigError
from fedmoe.methods.base import Method

_METHODS: dict[str, Method] = {}

M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator: register an instance of the method ``cls`` under its name (a
    method defined outside fedmoe registers the same way, before the run)."""
    method = cls()
    if method.name in _METHODS and type(_METHODS[method.name]) is not cls:
        existing = type(_METHODS[method.name]).__qualname__
        raise ValueError(f"method {method.name!r} is already registered (by {existing})")
    _METHODS[method.name] = method
    return cls


def unregister(name: str) -> None:
    """Remove a method (tests that define their own)."""
    _METHODS.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_METHODS)


def get(name: str) -> Method:
    """The method ``name``; a one-line ConfigError listing the known ones otherwise."""
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(_METHODS)}")
    return _METHODS[name]


def check_order(listed: tuple[str, ...]) -> None:
    """Raise a one-line ConfigError unless every method in ``listed`` is known, listed
    once, and comes after the methods it needs."""
    seen: set[str] = set()
    for name in listed:
        method = get(name)
        if name in seen:
            raise ConfigError(f"methods lists {name!r} twice")
        missing = [n for n in method.needs if n not in seen]
        if missing:
            raise ConfigError(
                f"method {name!r} needs {', '.join(repr(n) for n in missing)}: list "
                f"{'it' if len(missing) == 1 else 'them'} before {name!r} in methods"
            )
        seen.add(name)
