"""Registries that units add themselves to, with the metadata every check derives from.

One :class:`Registry` per kind of unit: aggregation rules, strategies, tasks, metrics
sinks, checkpoint stores, launch backends, attacks. A unit registers in its own file::

    from strategies.registry import STRATEGIES

    @STRATEGIES.register("my-rule", family="robust", section=MyRuleSection,
                         compatible={"secagg": False, "central-dp": False, "topk": False})
    def my_rule(cfg): ...

and is found in three ways, in this order, the first time a registry is read:

1. the built-in modules the registry was created with (for a *package*, every module in
   it, so a new file in that folder registers without editing a list);
2. the Python entry points of the registry's group (``fedsilo.strategies``,
   ``fedsilo.tasks``, …), so a separate package adds units without editing this
   repository: the entry point's name is the unit's name and its value either the object
   itself (``my_pkg.rule:my_rule``, registered with the metadata the object carries in
   ``__fedsilo__``, see :func:`describe`) or a module whose import registers it;
3. explicit :meth:`Registry.add` calls.

Metadata (:class:`Entry`): ``family`` (e.g. ``"mean-based"`` or ``"robust"``), the config
``section`` the unit reads (a pydantic model defined next to it), and ``compatible``: which
cross-cutting features the unit works with (``central-dp``, ``secagg``, ``topk``, …).
Config checks ask the registry (:meth:`Registry.names` with ``family=`` or
``compatible=``) instead of keeping lists of names by hand.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType, ModuleType
from typing import Any, Generic, TypeVar

from fl_core.errors import ConfigError

__all__ = ["Entry", "Registry", "RegistryError", "describe", "uri_scheme"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Attribute under which :func:`describe` stores registration metadata on an object, so an
#: entry point naming the object itself registers it with that metadata.
META_ATTR = "__fedsilo__"


class RegistryError(KeyError):
    """An unknown name, a clashing registration or a broken plugin; the message says which."""

    def __str__(self) -> str:  # KeyError quotes its argument; ours is a sentence
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered unit and what the rest of the app needs to know about it."""

    name: str
    obj: T
    family: str = ""
    section: type | None = None
    compatible: Mapping[str, bool] = field(default_factory=dict)
    doc: str = ""
    origin: str = ""  # "builtin", "entry-point:<dist>" or "add"
    extra: Mapping[str, Any] = field(default_factory=dict)
    ref: str = ""  # "module:attr" of a lazy entry, imported on first get()

    def supports(self, feature: str) -> bool:
        """Whether the unit declared itself compatible with ``feature`` (default: no)."""
        return bool(self.compatible.get(feature, False))


def describe(
    *,
    family: str = "",
    section: type | None = None,
    compatible: Mapping[str, bool] | None = None,
    **extra: Any,
) -> Callable[[T], T]:
    """Attach registration metadata to an object without registering it (for entry points
    that name the object: the registry reads it when it loads the entry point)."""

    def mark(obj: T) -> T:
        setattr(
            obj,
            META_ATTR,
            {"family": family, "section": section, "compatible": dict(compatible or {}), **extra},
        )
        return obj

    return mark


class Registry(Generic[T]):
    """Name → :class:`Entry`, filled by the units' own files and by entry points."""

    def __init__(
        self,
        kind: str,
        *,
        group: str,
        builtins: Iterable[str] = (),
        lazy: bool = False,
        sort: bool = False,
    ) -> None:
        self.kind = kind
        self.lazy = lazy
        self.sort = sort  # list names alphabetically (else in registration order)
        self.group = group
        self._builtins = tuple(builtins)
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()
        self._sources: list[Callable[[Registry[T]], None]] = []
        self._in_source = False

    # ----------------------------------------------------------------- registering
    def register(
        self,
        name: str,
        *,
        family: str = "",
        section: type | None = None,
        compatible: Mapping[str, bool] | None = None,
        doc: str = "",
        **extra: Any,
    ) -> Callable[[T], T]:
        """Decorator: register the decorated object as ``name``."""

        def decorate(obj: T) -> T:
            self.add(
                name, obj, family=family, section=section, compatible=compatible, doc=doc, **extra
            )
            return obj

        return decorate

    def add(
        self,
        name: str,
        obj: T,
        *,
        family: str = "",
        section: type | None = None,
        compatible: Mapping[str, bool] | None = None,
        doc: str = "",
        origin: str = "",
        **extra: Any,
    ) -> Entry[T]:
        """Register ``obj`` as ``name``; re-registering the same object is a no-op, another
        object under a taken name is an error naming both."""
        if not name or name != name.strip():
            raise RegistryError(f"{self.kind} name {name!r} must be a non-empty word")
        entry = Entry(
            name=name,
            obj=obj,
            family=family,
            section=section,
            compatible=MappingProxyType(dict(compatible or {})),
            doc=doc or _first_line(getattr(obj, "__doc__", "") or ""),
            origin=origin or ("builtin" if self._loading else "add"),
            extra=MappingProxyType(dict(extra)),
        )
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.ref and old.obj is None:
                old = None  # a lazy placeholder: the real object registers itself
            if old is not None and old.obj is not obj:
                raise RegistryError(
                    f"{self.kind} '{name}' is registered twice: by {_where(old.obj)} and by "
                    f"{_where(obj)}; rename one of them"
                )
            self._entries[name] = entry
        return entry

    def add_lazy(self, name: str, ref: str, *, origin: str = "", **meta: Any) -> None:
        """Register ``name`` as ``"module:attr"``, imported only when :meth:`get` asks for
        it (adapters whose import is heavy: Azure, MLflow). Does not replace an entry."""
        module, _, attr = ref.partition(":")
        if not module or not attr:
            raise RegistryError(f"{self.kind} '{name}': reference {ref!r} is not 'module:attr'")
        with self._lock:
            if name not in self._entries:
                self._entries[name] = Entry(
                    name=name, obj=None, ref=ref, origin=origin or "lazy", **meta
                )

    # -------------------------------------------------------------------- reading
    def get(self, name: str) -> Entry[T]:
        """The entry registered as ``name``; an unknown name is an error listing the known
        ones and the closest match."""
        entries = self._all()
        if name in entries:
            entry = entries[name]
            return self._resolve(entry) if entry.ref and entry.obj is None else entry
        known = list(entries)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        choices = f"Choose one of: {', '.join(known)}" if known else "None is registered"
        raise RegistryError(
            f"unknown {self.kind} '{name}'.{hint} {choices} "
            f"(or register one: see docs/extending.md, entry-point group '{self.group}')"
        )

    def for_config(self, name: str, *, key: str, value: object, hint: str = "") -> T:
        """The object registered as ``name``, which the run-config ``key`` = ``value`` asks
        for; an unknown name is a :class:`~fl_core.errors.ConfigError` naming the key, the
        known names and ``hint`` (how to make one available)."""
        try:
            return self.get(name).obj
        except RegistryError as exc:
            raise ConfigError(
                f"run-config '{key}' = {value!r} needs {self.kind} '{name}': {exc}"
                + (f". {hint}" if hint else "")
            ) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name).obj

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._all()))

    def __len__(self) -> int:
        return len(self._all())

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs, in listing order (imports lazy entries)."""
        return list(self.mapping().items())

    def entries(self) -> list[Entry[T]]:
        """Every entry, in listing order (registration order, or by name with ``sort``)."""
        return list(self._all().values())

    def names(
        self,
        *,
        family: str | Iterable[str] | None = None,
        compatible: str | None = None,
        incompatible: str | None = None,
    ) -> list[str]:
        """Registered names, optionally only those of ``family`` (one or several), or that
        declared themselves compatible (incompatible) with a feature."""
        families = {family} if isinstance(family, str) else (set(family) if family else None)
        out = []
        for entry in self._all().values():
            if families is not None and entry.family not in families:
                continue
            if compatible is not None and not entry.supports(compatible):
                continue
            if incompatible is not None and entry.supports(incompatible):
                continue
            out.append(entry.name)
        return out

    def mapping(self) -> Mapping[str, T]:
        """A read-only name → object view (a snapshot; imports lazy entries)."""
        return MappingProxyType({name: self.get(name).obj for name in self._all()})

    def _resolve(self, entry: Entry[T]) -> Entry[T]:
        module, _, attr = entry.ref.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(
                f"{self.kind} '{entry.name}' is provided by {entry.ref}, which failed to "
                f"import: {type(exc).__name__}: {exc}. Install what it needs or choose "
                "another."
            ) from exc
        with self._lock:
            resolved = Entry(**{**entry.__dict__, "obj": obj})
            self._entries[entry.name] = resolved
        return resolved

    def registered(self, name: str) -> bool:
        """Whether ``name`` is registered so far (no loading; for sources)."""
        return name in self._entries

    def add_source(self, source: Callable[[Registry[T]], None]) -> None:
        """Call ``source(self)`` before every read, after loading, so it can add entries
        derived from another registry (e.g. one strategy for every aggregation rule that
        has none); it must be idempotent."""
        self._sources.append(source)

    # -------------------------------------------------------------------- loading
    def _all(self) -> dict[str, Entry[T]]:
        if not self._loaded:
            self.load()
        if not self._in_source:
            self._in_source = True
            try:
                for source in self._sources:
                    source(self)
            finally:
                self._in_source = False
        return dict(sorted(self._entries.items())) if self.sort else self._entries

    def load(self) -> None:
        """Import the built-in modules and the entry points of :attr:`group` (once)."""
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for module in self._builtins:
                    _import_all(module)
                self._loading = False
                self._load_entry_points()
                self._loaded = True
            finally:
                self._loading = False

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            if self.lazy and ":" in ep.value:
                self.add_lazy(ep.name, ep.value, origin=f"entry-point:{dist}")
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must say which one
                raise RegistryError(
                    f"entry point '{ep.name} = {ep.value}' of group '{self.group}' (package "
                    f"'{dist}') failed to import: {type(exc).__name__}: {exc}. Fix or "
                    "uninstall that package."
                ) from exc
            if isinstance(obj, ModuleType):
                if ep.name not in self._entries:
                    raise RegistryError(
                        f"entry point '{ep.name} = {ep.value}' of group '{self.group}' "
                        f"(package '{dist}') is a module that registered no {self.kind} "
                        f"named '{ep.name}'; register it in that module or point the entry "
                        "point at the object"
                    )
                continue
            if ep.name in self._entries and self._entries[ep.name].obj is obj:
                continue  # the module registered it on import
            meta = dict(getattr(obj, META_ATTR, {}) or {})
            self.add(ep.name, obj, origin=f"entry-point:{dist}", **meta)


def _import_all(module_name: str) -> None:
    """Import ``module_name`` and, for a package, every module in it (registration happens
    on import, so a new file in a registered folder needs no list)."""
    module = importlib.import_module(module_name)
    path = getattr(module, "__path__", None)
    if path is None:
        return
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{module_name}.{info.name}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def uri_scheme(uri: str) -> str:
    """The lower-case scheme of ``scheme://…``, or ``""`` for a path or a plain name (the key
    by which checkpoint stores and data sources are registered)."""
    scheme, sep, _ = uri.partition("://")
    return scheme.lower() if sep and scheme.isidentifier() else ""
