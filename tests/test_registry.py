"""Sink discovery: built-ins, the plugins folder, real entry points, and every error case."""

from __future__ import annotations

import base64
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fonzipd.config import Settings, settings_from_dict
from fonzipd.registry import SinkConfigError, build_sinks, describe, discover
from fonzipd.sinks.csv import CSVSink
from fonzipd.sinks.http import HTTPSink
from fonzipd.sinks.sqlite import SQLiteSink

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
SECRET = "whsec_" + base64.b64encode(b"registry test secret, 32 bytes!!").decode()

FOO_PLUGIN = """
from typing import ClassVar
from fonzipd.sink import Record, Sink, SinkOptions

class FooOptions(SinkOptions):
    level: int = 1

class FooSink(Sink):
    name: ClassVar[str] = "{name}"
    Options: ClassVar[type[SinkOptions]] = FooOptions

    async def write(self, batch: object) -> None:
        pass
"""


def _plugin(folder: Path, filename: str, code: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / filename
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def _settings(tmp_path: Path, **data: Any) -> Settings:
    return settings_from_dict(data, base_dir=tmp_path, origin=str(tmp_path / "config.toml"))


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real installed distribution, fonzipd-foo 1.2, with a `foo` sink entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fonzipd_foo_mod.py").write_text(FOO_PLUGIN.format(name="foo"), encoding="utf-8")
    info = site / "fonzipd_foo-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fonzipd-foo\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(
        "[fonzipd.sinks]\nfoo = fonzipd_foo_mod:FooSink\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(site))
    yield info
    sys.modules.pop("fonzipd_foo_mod", None)


def test_built_ins_are_found_by_name() -> None:
    found = discover(["sqlite", "csv", "http"], None)
    assert {n: (t.cls, t.origin) for n, t in found.items()} == {
        "sqlite": (SQLiteSink, "built-in"),
        "csv": (CSVSink, "built-in"),
        "http": (HTTPSink, "built-in"),
    }


def test_a_folder_plugin_is_loaded_by_path(tmp_path: Path) -> None:
    path = _plugin(tmp_path / "p", "foo.py", FOO_PLUGIN.format(name="foo"))
    found = discover(["foo"], path.parent)
    assert found["foo"].origin == str(path)
    assert found["foo"].cls.__name__ == "FooSink"
    assert found["foo"].cls.__module__.startswith("_fonzipd_plugin_foo_")


def test_only_wanted_types_are_imported(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    path = _plugin(
        folder, "broken.py", FOO_PLUGIN.format(name="broken") + "\nraise OSError('boom')\n"
    )
    assert set(discover(["csv"], folder)) == {"csv"}  # broken.py not imported
    with pytest.raises(SinkConfigError) as caught:
        discover(["broken"], folder)
    message = str(caught.value)
    assert "'broken'" in message
    assert str(path) in message
    assert "OSError: boom" in message


def test_an_installed_entry_point_is_found(installed: Path) -> None:
    found = discover(["foo"], None)
    assert found["foo"].origin == "entry point fonzipd-foo 1.2 (fonzipd_foo_mod:FooSink)"
    assert found["foo"].cls.__module__ == "fonzipd_foo_mod"


def test_an_entry_point_that_fails_to_import_names_it(installed: Path) -> None:
    (installed.parent / "fonzipd_foo_mod.py").write_text("import no_such_module_xyz\n")
    with pytest.raises(SinkConfigError, match=r"fonzipd-foo 1\.2.*No module named"):
        discover(["foo"], None)


def test_the_same_name_twice_names_both_origins(tmp_path: Path, installed: Path) -> None:
    folder = tmp_path / "p"
    path = _plugin(folder, "mine.py", FOO_PLUGIN.format(name="foo"))
    with pytest.raises(SinkConfigError, match="defined twice") as caught:
        discover(["foo"], folder)
    assert "entry point fonzipd-foo 1.2" in str(caught.value)
    assert str(path) in str(caught.value)

    _plugin(folder, "sqlite_clash.py", FOO_PLUGIN.format(name="sqlite"))
    with pytest.raises(SinkConfigError, match=r"'sqlite' is defined twice: by built-in and"):
        discover(["sqlite"], folder)


def test_an_unknown_type_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(SinkConfigError, match=r"unknown sink type.*'nope'.*csv \(built-in\)"):
        discover(["nope"], None)
    settings = _settings(tmp_path, sinks={"out": {"type": "nope"}})
    with pytest.raises(SinkConfigError, match=r"sinks\.out\.type = 'nope'.*available: csv"):
        build_sinks(settings, state_dir=tmp_path)


def test_describe_lists_every_type_with_its_origin(tmp_path: Path) -> None:
    types = describe(PLUGINS)
    assert [t.name for t in types] == [
        "csv",
        "http",
        "jsonl",
        "mysql",
        "nats",
        "postgresql",
        "sqlite",
    ]
    assert {t.name: t.origin for t in types}["jsonl"] == str(PLUGINS / "jsonl.py")


def test_build_sinks_builds_the_enabled_ones_with_their_context(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        fonzip={"timezone": "Europe/Berlin"},
        plugins_dir=str(PLUGINS),
        sinks={
            "db": {"type": "sqlite", "path": "out.db"},
            "files": {"type": "csv", "directory": "csv", "batch_size": 7},
            "lines": {"type": "jsonl", "path": "x.jsonl"},
            "off": {"type": "http", "enabled": False, "url": "http://x", "secret": "s"},
            "hook": {
                "type": "http",
                "url": "http://127.0.0.1/h",
                "secret": SECRET,
                "concurrency": 4,
            },
        },
    )
    built = build_sinks(settings, state_dir=tmp_path / "state")
    assert sorted(built) == ["db", "files", "hook", "lines"]
    assert isinstance(built["db"].sink, SQLiteSink)
    assert built["db"].sink.context.sink_id == "db"
    assert built["db"].sink.context.state_dir == tmp_path / "state"
    assert str(built["db"].sink.context.timezone) == "Europe/Berlin"
    assert built["db"].batch_size == 500
    assert built["files"].batch_size == 7
    assert built["hook"].batch_size == 4  # single mode: one batch fills the concurrency
    assert built["lines"].type.origin == str(PLUGINS / "jsonl.py")


def test_bad_options_name_the_key_the_sink_and_its_origin(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        plugins_dir=str(PLUGINS),
        sinks={
            "files": {"type": "csv", "directry": "csv"},
            "lines": {"type": "jsonl"},
            "hook": {"type": "http", "url": "not a url", "secret": "whsec_top-secret!"},
        },
    )
    with pytest.raises(SinkConfigError) as caught:
        build_sinks(settings, state_dir=tmp_path)
    message = str(caught.value)
    assert "sinks.files (type 'csv' from built-in): invalid options:" in message
    assert "sinks.files.directry: unknown key" in message
    assert "FONZIPD_SINKS__FILES__DIRECTRY" in message
    assert "sinks.files.directory: Field required" in message
    assert f"sinks.lines (type 'jsonl' from {PLUGINS / 'jsonl.py'})" in message
    assert "sinks.lines.path: Field required" in message
    assert "sinks.hook.url:" in message
    assert "sinks.hook.secret:" in message
    assert "top-secret" not in message


# -- plugins run code: who may change them, and listing without running them ------------


def test_sinks_lists_plugin_types_without_importing_any(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    marker = tmp_path / "imported"
    _plugin(
        folder,
        "noisy.py",
        FOO_PLUGIN.format(name="noisy") + f"\nopen({str(marker)!r}, 'w').close()\n",
    )
    _plugin(folder, "broken.py", FOO_PLUGIN.format(name="broken") + "\nraise OSError('boom')\n")
    listed = {(t.name, t.origin) for t in describe(folder)}
    assert ("noisy", str(folder / "noisy.py")) in listed
    assert ("broken", str(folder / "broken.py")) in listed
    assert ("sqlite", "built-in") in listed
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "mode"), [("folder", 0o775), ("folder", 0o757), ("file", 0o666)]
)
def test_a_plugin_others_can_write_is_refused(tmp_path: Path, target: str, mode: int) -> None:
    folder = tmp_path / "p"
    marker = tmp_path / "imported"
    path = _plugin(
        folder, "foo.py", FOO_PLUGIN.format(name="foo") + f"\nopen({str(marker)!r}, 'w').close()\n"
    )
    os.chmod(folder if target == "folder" else path, mode)
    with pytest.raises(SinkConfigError, match="writable by") as caught:
        discover(["foo"], folder)
    message = str(caught.value)
    assert str(folder if target == "folder" else path) in message
    assert "chmod go-w" in message
    assert not marker.exists()
    settings = _settings(tmp_path, plugins_dir=str(folder), sinks={"x": {"type": "foo"}})
    with pytest.raises(SinkConfigError, match="writable by"):
        build_sinks(settings, state_dir=tmp_path)
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("target", ["folder", "file"])
def test_a_plugin_owned_by_another_user_is_refused(tmp_path: Path, target: str) -> None:
    folder = tmp_path / "p"
    path = _plugin(folder, "foo.py", FOO_PLUGIN.format(name="foo"))
    os.chown(folder if target == "folder" else path, 4321, 4321)
    with pytest.raises(SinkConfigError, match="owned by uid 4321") as caught:
        discover(["foo"], folder)
    assert "chown" in str(caught.value)


def test_the_example_plugins_folder_passes_the_checks() -> None:
    assert discover(["jsonl"], PLUGINS)["jsonl"].origin == str(PLUGINS / "jsonl.py")


def test_a_missing_driver_names_the_extra_that_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail, as on a machine without it.
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    settings = _settings(
        tmp_path, sinks={"pg": {"type": "postgresql", "dsn": "postgresql://u@localhost/db"}}
    )
    with pytest.raises(SinkConfigError) as caught:
        build_sinks(settings, state_dir=tmp_path)
    assert "sinks.pg (type 'postgresql' from built-in): cannot be created" in str(caught.value)
    assert "needs the asyncpg driver" in str(caught.value)
    assert "pip install 'fonzipd[postgresql]'" in str(caught.value)
