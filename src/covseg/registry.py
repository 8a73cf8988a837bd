"""One registry mechanism for every pluggable part (models, encoders, heads, losses, layouts,
trainers, inferers, input adapters, samplers, optimisers, learning-rate schedules, file formats), as segmentation_models_pytorch names its models.

A new capability is a new registry entry, not a new subclass. Built-ins are listed in one place,
:mod:`covseg.builtins`, and imported lazily per kind the first time a registry is read, so
``covseg data check`` never imports torch and no lower layer imports a higher one to register.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from covseg.errors import ConfigError

T = TypeVar("T")


class UnknownName(ConfigError, KeyError):
    """A name no registry entry has (a ``ConfigError`` for users, a ``KeyError`` for old callers)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return ConfigError.__str__(self)


_LOAD_LOCK = threading.RLock()  # one for all registries: loading one kind's built-ins may read another


class Registry(Generic[T]):
    """Named entries of one kind, in registration order; ``register`` also works as a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._builtins_loaded = False
        self._loading = False  # this thread is importing the built-ins (re-entry returns)

    # -- writing ------------------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None, *, help: str = "", before: str | None = None) -> Any:
        """Add ``obj`` under ``name`` (or decorate: ``@REG.register("name")``).

        ``before`` inserts the entry ahead of an existing one (order matters where entries are
        tried in turn, as dataset layouts are during detection).
        """

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (getattr(item, "__doc__", None) or "").strip().splitlines()
            described = help or getattr(item, "description", None) or (doc[0] if doc else "")
            if before is None:
                self._items[name] = item
            else:
                if before not in self._items:
                    raise ValueError(f"no {self.kind} {before!r} to insert before (known: {', '.join(self._items)})")
                items = list(self._items.items())
                at = [n for n, _ in items].index(before)
                items.insert(at, (name, item))
                self._items = dict(items)
            self._help[name] = str(described)
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugins that replace a built-in)."""
        self._items.pop(name, None)
        self._help.pop(name, None)

    # -- reading ------------------------------------------------------------------------------
    def _load(self) -> None:
        """Import the built-ins of this kind once. Thread-safe: a second thread waits until the first
        has registered them (it used to see the flag set before the imports ran and read an empty
        registry: "unknown optimiser 'adamw'; known: " when two benchmark folds loaded configs at once).
        Re-entry from the same thread during the imports returns at once, as before."""
        if self._builtins_loaded:
            return
        with _LOAD_LOCK:
            if self._builtins_loaded or self._loading:
                return
            self._loading = True
            try:
                from covseg import builtins

                builtins.load(self.kind)
                self._builtins_loaded = True
            finally:
                self._loading = False

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            known = ", ".join(self._items) or "none"
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the entry's factory with ``kwargs``."""
        factory: Callable[..., Any] = self.get(name)  # type: ignore[assignment]
        return factory(**kwargs)

    def names(self) -> list[str]:
        """Entry names, sorted."""
        self._load()
        return sorted(self._items)

    def ordered(self) -> list[str]:
        """Entry names in registration order."""
        self._load()
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._items.items())

    def values(self) -> list[T]:
        self._load()
        return list(self._items.values())

    def describe(self) -> dict[str, str]:
        """Name → one-line description, sorted by name."""
        return {n: self._help[n] for n in self.names()}

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.ordered())

    def __len__(self) -> int:
        self._load()
        return len(self._items)


MODELS: Registry = Registry("model")
ENCODERS: Registry = Registry("encoder")
HEADS: Registry = Registry("head")
LOSSES: Registry = Registry("loss")
LAYOUTS: Registry = Registry("layout")
TRAINERS: Registry = Registry("trainer")
INFERERS: Registry = Registry("inferer")
INPUT_ADAPTERS: Registry = Registry("input adapter")
SAMPLERS: Registry = Registry("sampler")
CHECKPOINT_FORMATS: Registry = Registry("checkpoint format")
OPTIMISERS: Registry = Registry("optimiser")
SCHEDULES: Registry = Registry("schedule")
FILE_FORMATS: Registry = Registry("file format")

REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (MODELS, ENCODERS, HEADS, LOSSES, LAYOUTS, TRAINERS, INFERERS, INPUT_ADAPTERS, SAMPLERS, OPTIMISERS, SCHEDULES, CHECKPOINT_FORMATS, FILE_FORMATS)
}
