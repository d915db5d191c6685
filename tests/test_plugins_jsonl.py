"""The example plugins: plugins/jsonl.py and the README's 20-line sink, loaded by path."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from fonzipd.registry import discover
from fonzipd.sink import Sink
from fonzipd.testing import check_sink, context_for_tests, sample_records

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def _jsonl(tmp_path: Path, out: Path) -> Sink:
    sink_type = discover(["jsonl"], PLUGINS)["jsonl"]
    assert sink_type.origin == str(PLUGINS / "jsonl.py")
    return sink_type.cls(
        sink_type.cls.Options.model_validate({"path": out}), context_for_tests(tmp_path)
    )


def _keys(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [json.loads(line)["key"] for line in out.read_text(encoding="utf-8").splitlines()]


async def test_jsonl_passes_the_conformance_suite(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "records.jsonl"

    async def read_back() -> list[str]:
        return _keys(out)

    await check_sink(lambda: _jsonl(tmp_path, out), read_back)


async def test_jsonl_cuts_a_half_written_line_and_writes_each_version_once(
    tmp_path: Path,
) -> None:
    out = tmp_path / "records.jsonl"
    recs = sample_records(6)
    sink = _jsonl(tmp_path, out)
    await sink.open()
    await sink.write(recs[:3])
    await sink.close()
    with out.open("ab") as f:  # kill -9 in the middle of the next line
        f.write(b'{"key": "donation:1')
    sink = _jsonl(tmp_path, out)
    await sink.open()
    await sink.write(recs)  # the unacknowledged batch and more, again
    await sink.close()
    assert _keys(out) == [r.key for r in recs]
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [r.to_json_dict() for r in recs]


async def test_the_readme_example_works_as_printed(tmp_path: Path) -> None:
    readme = (PLUGINS / "README.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "files.py").write_text(code, encoding="utf-8")
    sink_type = discover(["files"], plugin_dir)["files"]
    out = tmp_path / "out"

    def factory() -> Sink:
        options = sink_type.cls.Options.model_validate({"directory": out})
        return sink_type.cls(options, context_for_tests(tmp_path))

    async def read_back() -> set[str]:
        return {json.loads(p.read_text())["key"] for p in out.glob("*.json")}

    await check_sink(factory, read_back)
    assert len(code.strip().splitlines()) <= 60


async def test_jsonl_file_is_0600_under_a_umask_of_022(tmp_path: Path) -> None:
    out = tmp_path / "new" / "records.jsonl"
    old = os.umask(0o022)
    try:
        sink = _jsonl(tmp_path, out)
        await sink.open()
        await sink.write(sample_records(2))
        await sink.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
