"""Packages whose names load on first use (PEP 562)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """A package's ``__getattr__`` and ``__dir__``: ``exports`` maps each name to the
    module of ``package`` defining it (a name that is its own module is the module)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = import_module(f".{exports[name]}", package)
        if exports[name] != name:
            value = getattr(value, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
