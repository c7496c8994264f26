"""The backend registry: which :class:`~.base.Backend` class serves which array library.

Each library's class registers itself with :func:`register`. Two lookups read the table:
:func:`~.selection.get_backend` asks the classes which one a device string names, and
:func:`~.base.to_numpy` finds the class of an array's library to copy it to the host, without
making a backend. A library no class is registered for is served by the generic
:class:`~.base.Backend`.

This module imports nothing, not even :mod:`.base` (whose ``to_numpy`` reads the table).
"""

from __future__ import annotations

__all__ = ["register", "registered_class", "registered_classes"]

_BY_LIBRARY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` the backend of ``cls.library`` (its ``parse`` tells which
    device strings select it)."""
    _BY_LIBRARY[cls.library] = cls
    return cls


def registered_class(library: str) -> type | None:
    """The class registered for ``library`` (:func:`~portacnn.namespace.library_name`'s
    ``"numpy"``, ``"cupy"``...), or None."""
    return _BY_LIBRARY.get(library)


def registered_classes() -> list[type]:
    """Every registered class, in the order they registered."""
    return list(_BY_LIBRARY.values())
