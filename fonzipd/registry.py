"""Sink discovery: built-in sinks, installed packages' entry points, and the plugins folder.

A sink type comes from one of three places:

* built in: ``sqlite``, ``csv``, ``http`` (:data:`fonzipd.sinks.BUILTIN_SINKS`);
* an installed package declaring an entry point in the group ``fonzipd.sinks``
  (``myname = "mypkg.module:MySink"``);
* a single ``.py`` file in ``plugins_dir`` defining one or more ``Sink`` subclasses.
  The file is found by its source (``name = "..."`` as a string literal in the class
  body, read with ``ast``, never executed) and imported only when the configuration
  uses one of its types. Files whose name starts with ``_`` or ``.`` are skipped.

Only the types the configuration names are imported; ``fonzipd sinks`` imports none.
The same name in two places is an error naming both, and so is a plugin that fails to
import or has bad options.

A plugin file runs with the daemon's privileges: it reads the API secret and every
donor's data. So the plugins folder, and each plugin file before it is imported, must
be owned by the user fonzipd runs as (or root) and writable by no one else: anything
else is refused with an error saying what to change.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import stat
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pydantic
import structlog
from pydantic import SecretStr

from fonzipd.clock import SYSTEM_CLOCK, Clock
from fonzipd.config import Settings, SinkSettings
from fonzipd.sink import Sink, SinkConfigError, SinkContext, SinkOptions
from fonzipd.sinks import BUILTIN_SINKS
from fonzipd.suggestions import did_you_mean

__all__ = [
    "ENTRY_POINT_GROUP",
    "AvailableType",
    "ConfiguredSink",
    "SinkConfigError",
    "SinkType",
    "build_sinks",
    "check_plugin_path",
    "describe",
    "discover",
]

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "fonzipd.sinks"
# A dsn may carry a password (the database sinks refuse one, and must not echo it).
_SENSITIVE = re.compile(r"secret|token|password|passwd|key|auth|header|credential|dsn", re.I)


@dataclass(frozen=True)
class SinkType:
    """A sink class and where it came from."""

    name: str
    """Its ``type`` in the configuration."""
    cls: type[Sink]
    origin: str
    """``built-in``, ``entry point <dist> <version> (<module:Class>)``, or the plugin file."""


@dataclass(frozen=True)
class AvailableType:
    """A sink type that could be loaded, by name and origin, without importing it."""

    name: str
    origin: str


@dataclass(frozen=True)
class ConfiguredSink:
    """One enabled ``[sinks.<id>]``: the sink instance (not opened), its settings, its type."""

    sink: Sink
    settings: SinkSettings
    type: SinkType

    @property
    def batch_size(self) -> int:
        """Records per ``write``: the configured ``batch_size``, else the sink's default."""
        return self.settings.batch_size or self.sink.preferred_batch_size()


@dataclass(frozen=True)
class _Candidate:
    origin: str
    load: Callable[[], type[Sink]]


def _describe_class(cls: object) -> str:
    return getattr(cls, "__qualname__", repr(cls))


def _checked(obj: object, name: str, origin: str) -> type[Sink]:
    """``obj`` if it is a usable sink class named ``name``, else SinkConfigError."""
    where = f"sink type {name!r} from {origin}"
    if not (isinstance(obj, type) and issubclass(obj, Sink)):
        raise SinkConfigError(f"{where}: {_describe_class(obj)} is not a fonzipd.sink.Sink")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise SinkConfigError(f"{where}: {obj.__qualname__} does not implement {missing}")
    if getattr(obj, "name", None) != name:
        raise SinkConfigError(
            f"{where}: {obj.__qualname__}.name is {getattr(obj, 'name', None)!r}, not {name!r}"
        )
    if not (isinstance(obj.Options, type) and issubclass(obj.Options, SinkOptions)):
        raise SinkConfigError(f"{where}: {obj.__qualname__}.Options is not a SinkOptions")
    if not isinstance(obj.batch_size, int) or obj.batch_size < 1:
        raise SinkConfigError(f"{where}: {obj.__qualname__}.batch_size must be an int >= 1")
    return obj


def _import_target(target: str, name: str, origin: str) -> type[Sink]:
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise SinkConfigError(
            f"sink type {name!r} from {origin}: cannot import {target}: {type(exc).__name__}: {exc}"
        ) from exc
    return _checked(obj, name, origin)


def _entry_point_candidate(ep: importlib.metadata.EntryPoint) -> _Candidate:
    dist = ep.dist
    where = f"{dist.name} {dist.version} " if dist is not None else ""
    origin = f"entry point {where}({ep.value})"

    def load() -> type[Sink]:
        try:
            obj = ep.load()
        except Exception as exc:
            raise SinkConfigError(
                f"sink type {ep.name!r} from {origin}: cannot import: {type(exc).__name__}: {exc}"
            ) from exc
        return _checked(obj, ep.name, origin)

    return _Candidate(origin, load)


def declared_names(path: Path) -> list[str]:
    """The ``name = "..."`` literals of the top-level classes of a plugin file."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise SinkConfigError(f"sink plugin {path}: cannot read it: {exc}") from exc
    names: list[str] = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                target, value = stmt.target, stmt.value
            else:
                continue
            if (
                isinstance(target, ast.Name)
                and target.id == "name"
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                names.append(value.value)
    return names


def check_plugin_path(path: Path, what: str) -> None:
    """Refuse a plugin file or folder that someone other than fonzipd's user could change.

    Whoever can write it runs code as fonzipd. Allowed: owned by the effective user or
    root, and not writable by group or others. Symbolic links are judged by their target.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise SinkConfigError(f"{what} {path}: cannot read it: {exc}") from exc
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise SinkConfigError(
            f"{what} {path} is owned by uid {st.st_uid}, not by the user fonzipd runs as "
            f"(uid {me}) or root; plugins run with fonzipd's privileges, so refused: "
            f"chown it to root or to uid {me}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(
            w
            for w, bit in (("its group", stat.S_IWGRP), ("every user", stat.S_IWOTH))
            if st.st_mode & bit
        )
        raise SinkConfigError(
            f"{what} {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"plugins run with fonzipd's privileges, so refused: chmod go-w {path}"
        )


class _PluginFile:
    """One file of the plugins folder, imported at most once, under a private name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._module: ModuleType | None = None

    def module(self, name: str) -> ModuleType:
        if self._module is not None:
            return self._module
        check_plugin_path(self.path, f"sink plugin for type {name!r}:")
        digest = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]
        stem = re.sub(r"\W", "_", self.path.stem)
        module_name = f"_fonzipd_plugin_{stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, self.path)
        if spec is None or spec.loader is None:
            raise SinkConfigError(
                f"sink type {name!r} from {self.path}: not an importable Python file"
            )
        module = importlib.util.module_from_spec(spec)
        # In sys.modules while it runs: dataclasses and pydantic look their module up.
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(module_name, None)
            if not isinstance(exc, Exception):
                raise
            raise SinkConfigError(
                f"sink type {name!r} from plugin {self.path}: cannot import it: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._module = module
        return module

    def loader(self, name: str) -> Callable[[], type[Sink]]:
        def load() -> type[Sink]:
            module = self.module(name)
            found = [
                obj
                for obj in vars(module).values()
                if isinstance(obj, type)
                and issubclass(obj, Sink)
                and obj.__module__ == module.__name__
                and obj.__dict__.get("name") == name
            ]
            if len(found) != 1:
                raise SinkConfigError(
                    f"sink plugin {self.path}: expected one Sink subclass with "
                    f"name = {name!r}, found {len(found)}"
                )
            return _checked(found[0], name, str(self.path))

        return load


def _catalog(plugins_dir: Path | None) -> dict[str, list[_Candidate]]:
    """Every sink type that could be loaded, by name, without importing any."""
    found: dict[str, list[_Candidate]] = {}

    def add(name: str, candidate: _Candidate) -> None:
        found.setdefault(name, []).append(candidate)

    for name, target in BUILTIN_SINKS.items():
        add(
            name,
            _Candidate("built-in", functools.partial(_import_target, target, name, "built-in")),
        )
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        add(ep.name, _entry_point_candidate(ep))
    if plugins_dir is not None:
        if not plugins_dir.is_dir():
            raise SinkConfigError(f"plugins_dir {plugins_dir} is not a directory")
        check_plugin_path(plugins_dir, "plugins_dir")
        for path in sorted(plugins_dir.glob("*.py")):
            if path.name.startswith(("_", ".")):
                continue
            plugin = _PluginFile(path)
            for name in declared_names(path):
                add(name, _Candidate(str(path), plugin.loader(name)))
    return found


def _available(catalog: dict[str, list[_Candidate]]) -> str:
    return ", ".join(
        f"{name} ({' and '.join(c.origin for c in cands)})"
        for name, cands in sorted(catalog.items())
    )


def _load(catalog: dict[str, list[_Candidate]], names: Collection[str]) -> dict[str, SinkType]:
    loaded: dict[str, SinkType] = {}
    for name in sorted(set(names)):
        candidates = catalog[name]
        if len(candidates) > 1:
            origins = " and ".join(c.origin for c in candidates)
            raise SinkConfigError(
                f"sink type {name!r} is defined twice: by {origins}; remove or rename one of them"
            )
        candidate = candidates[0]
        loaded[name] = SinkType(name, candidate.load(), candidate.origin)
        log.debug("sink_type_loaded", type=name, origin=candidate.origin)
    return loaded


def discover(wanted: Collection[str] | None, plugins_dir: Path | None) -> dict[str, SinkType]:
    """Load the sink types named in ``wanted`` (``None``: all of them), by name.

    Raises :class:`SinkConfigError` for a type found nowhere (listing the available
    ones), a name defined in two places (naming both), or a plugin that fails to load.
    """
    catalog = _catalog(plugins_dir)
    names = set(catalog) if wanted is None else set(wanted)
    unknown = sorted(names - set(catalog))
    if unknown:
        raise SinkConfigError(
            f"unknown sink type(s) {', '.join(map(repr, unknown))}; "
            f"available: {_available(catalog)}"
        )
    return _load(catalog, names)


def describe(plugins_dir: Path | None) -> list[AvailableType]:
    """Every sink type available, by name, importing none: what ``fonzipd sinks`` lists.

    A name defined in two places is listed once per origin (starting fonzipd with it
    configured would be an error naming both).
    """
    catalog = _catalog(plugins_dir)
    return [
        AvailableType(name, candidate.origin)
        for name in sorted(catalog)
        for candidate in catalog[name]
    ]


def _options_problems(
    sink_id: str, options: type[SinkOptions], exc: pydantic.ValidationError
) -> list[str]:
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        key = ".".join(["sinks", sink_id, *loc])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + (did_you_mean(loc[-1], options.model_fields) if loc else "")
        given = err.get("input")
        field = options.model_fields.get(loc[0]) if loc else None
        secret = field is not None and field.annotation is SecretStr
        shown = (
            not secret
            and not _SENSITIVE.search(key)
            and err["type"] != "missing"
            and isinstance(given, str | int | float | bool)
        )
        lines.append(f"  {key}: {msg}" + (f" (got {given!r})" if shown else ""))
        env = "FONZIPD_" + "__".join(p.upper() for p in ["sinks", sink_id, *loc])
        lines.append(f"    (in the file, or the environment variable {env})")
    return lines


def build_sinks(
    settings: Settings, *, state_dir: Path, clock: Clock = SYSTEM_CLOCK
) -> dict[str, ConfiguredSink]:
    """Load, validate and instantiate every enabled sink (not opened), by sink id.

    Raises :class:`SinkConfigError` listing every problem: unknown types (with the
    sink ids using them), duplicate or broken plugins, and invalid options (each
    named ``sinks.<id>.<key>``, with the sink's type and origin).
    """
    enabled = settings.enabled_sinks
    catalog = _catalog(settings.plugins_dir)
    unknown = {sid: s.type for sid, s in enabled.items() if s.type not in catalog}
    if unknown:
        uses = ", ".join(f"sinks.{sid}.type = {t!r}" for sid, t in sorted(unknown.items()))
        raise SinkConfigError(f"unknown sink type: {uses}; available: {_available(catalog)}")
    types = _load(catalog, {s.type for s in enabled.values()})

    built: dict[str, ConfiguredSink] = {}
    problems: list[str] = []
    for sid, sink_settings in enabled.items():
        sink_type = types[sink_settings.type]
        where = f"sinks.{sid} (type {sink_type.name!r} from {sink_type.origin})"
        try:
            options = sink_type.cls.Options.model_validate(sink_settings.options)
        except pydantic.ValidationError as exc:
            problems.append(f"{where}: invalid options:")
            problems.extend(_options_problems(sid, sink_type.cls.Options, exc))
            continue
        context = SinkContext(sid, state_dir, settings.fonzip.tz, clock=clock)
        try:
            sink = sink_type.cls(options, context)
        except Exception as exc:
            problems.append(f"{where}: cannot be created: {type(exc).__name__}: {exc}")
            continue
        built[sid] = ConfiguredSink(sink, sink_settings, sink_type)
    if problems:
        raise SinkConfigError("\n".join(problems))
    return built
