"""Registry of network architectures and the factory that builds them from a spec.

A spec is a mapping ``{"type": name, "scale": τ, **keywords}`` as found in the
workflow configuration: ``type`` names a registered architecture, the other keys are
its constructor keywords.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

__all__ = ["ARCHS", "Registry", "build_network"]


class Registry:
    """Objects registered by name.

    Parameters
    ----------
    kind : str
        What the registry holds, used in error messages (e.g. ``"architecture"``).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._objects: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Return a decorator that registers its argument under ``name``.

        Parameters
        ----------
        name : str
            Name to register under.

        Returns
        -------
        callable
            Decorator returning the object unchanged.

        Raises
        ------
        ValueError
            If ``name`` is already registered (raised when the decorator is applied).
        """

        def decorator(obj: Any) -> Any:
            if name in self._objects:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {self._objects[name]!r})"
                )
            self._objects[name] = obj
            return obj

        return decorator

    def __getitem__(self, name: str) -> Any:
        """Return the object registered under ``name``.

        Raises
        ------
        KeyError
            If nothing is registered under ``name``; the message lists the known names.
        """
        try:
            return self._objects[name]
        except KeyError:
            known = ", ".join(sorted(self._objects)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def __contains__(self, name: object) -> bool:
        """Return whether ``name`` is registered."""
        return name in self._objects

    def __iter__(self) -> Iterator[str]:
        """Iterate over the registered names, sorted."""
        return iter(sorted(self._objects))

    def __len__(self) -> int:
        """Return the number of registered objects."""
        return len(self._objects)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


#: Network architectures; each maps (N, 1, h, w) LR images to (N, 1, τh, τw).
ARCHS = Registry("architecture")


def _plain(value: Any) -> Any:
    """Return ``value`` with tuples turned into lists, recursively (YAML/JSON-friendly)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def build_network(spec: Mapping[str, Any]) -> nn.Module:
    """Build a registered network from its spec.

    Parameters
    ----------
    spec : mapping
        ``{"type": name, "scale": τ, **keywords}``: ``type`` names a registered
        architecture (see :data:`ARCHS`), ``scale`` is the integer upsampling factor, and
        the other keys are the architecture's constructor keywords.

    Returns
    -------
    torch.nn.Module
        The network, with attributes ``scale`` (τ, int) and ``spec``: a plain dict with
        ``type``, ``scale`` and every constructor keyword, defaults included, from which
        :func:`build_network` rebuilds the same architecture.

    Raises
    ------
    KeyError
        If ``type`` is missing or names no registered architecture.
    TypeError
        If ``scale`` is missing or a keyword is not one of the architecture's.
    """
    kwargs = dict(spec)
    if "type" not in kwargs:
        raise KeyError(f"network spec {dict(spec)!r} has no 'type'; registered: {', '.join(ARCHS)}")
    name = kwargs.pop("type")
    cls = ARCHS[name]
    signature = inspect.signature(cls)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        known = ", ".join(signature.parameters)
        raise TypeError(f"architecture {name!r} has no keyword {unknown[0]!r}; it takes: {known}")
    if "scale" not in kwargs:
        raise TypeError(f"network spec for {name!r} needs 'scale' (the upsampling factor τ)")
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    net = cls(**bound.arguments)
    net.spec = {"type": name, **{key: _plain(value) for key, value in bound.arguments.items()}}
    net.spec["scale"] = net.scale  # a plain int, even if given as a NumPy integer
    return net
