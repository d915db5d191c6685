"""Test tooling: the mutation score of each module of the spine, from mutmut's results.

``./dev.sh mutate`` runs mutmut (configured under ``[tool.mutmut]`` in pyproject.toml)
and then this: killed / total per module (timeouts and type-check catches count as
killed; "no tests" counts as survived; mutants a stopped run never checked are left
out and counted), and every survivor with its diff in ``mutants/survivors.txt``, so
that each one is either killed by a new test or listed in TESTING.md with why it is
equivalent. Survivors that only change the letter case of an SQL string (SQL keywords
are case-insensitive, so the statement is the same) are counted apart as equivalent.
"""

from __future__ import annotations

import ast
import collections
import difflib
import json
import re
import sys
from pathlib import Path

KILLED = {1, 3, 36, 37, -24, 24, 152, 255}
SKIPPED = {34}
_MUTANT = re.compile(r"^(?P<func>.+)__mutmut_(?P<n>\d+)$")


def _functions(source: Path) -> dict[str, list[str]]:
    """Every function (and method) of a mutated file by name, as source lines."""
    text = source.read_text()
    lines = text.splitlines()
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            body = lines[node.lineno - 1 : node.end_lineno]
            out[node.name] = body[1:]  # without the def line, whose name differs
    return out


def _original(functions: dict[str, list[str]], key: str) -> list[str]:
    match = _MUTANT.match(key.rsplit(".", 1)[-1])
    return [] if match is None else functions.get(f"{match['func']}__mutmut_orig", [])


def _diff(functions: dict[str, list[str]], key: str) -> list[str]:
    name = key.rsplit(".", 1)[-1]
    if _MUTANT.match(name) is None:
        return []
    mutant = functions.get(name, [])
    return [
        line
        for line in difflib.unified_diff(_original(functions, key), mutant, lineterm="", n=0)
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]


_SQL = re.compile(
    r"\b(select|insert|update|delete|create|drop|alter|from|join|where|values|set|excluded"
    r"|group by|order by)\b",
    re.I,
)


_QUOTED = re.compile(r"'[^']*'")


def _sql_folded(line: str) -> str:
    """``line`` with its SQL keywords and identifiers in lower case: what SQLite reads
    alike. Quoted SQL strings keep their case: ``'pending'`` is not ``'PENDING'``, nor
    is the JSON path ``'$.data.refund_date'`` the same as ``'$.DATA.REFUND_DATE'``."""
    out, end = [], 0
    for quoted in _QUOTED.finditer(line):
        out += [line[end : quoted.start()].lower(), quoted.group()]
        end = quoted.end()
    return "".join([*out, line[end:].lower()])


_STRING_LINE = re.compile(r"""^\s*[rbfu]*["']""", re.I)


def _in_sql(line: str, original: list[str]) -> bool:
    """``line`` is SQL: it names a keyword, or it is a string literal continuing one that
    does (``"INSERT INTO t (a,"`` then ``" b, c)"``), as found in the function's code."""
    if _SQL.search(line):
        return True
    if not _STRING_LINE.match(line) or line not in original:
        return False
    at = original.index(line)
    while at > 0 and _STRING_LINE.match(original[at - 1]):
        at -= 1
        if _SQL.search(original[at]):
            return True
    return False


def sql_case_only(diff: list[str], original: list[str] | None = None) -> bool:
    """A mutant that only changed the letter case of SQL keywords and identifiers: the
    same SQL. ``original``, the function's lines, tells the continuation lines of a
    statement written over several string literals."""
    old = [line[1:] for line in diff if line.startswith("-")]
    new = [line[1:] for line in diff if line.startswith("+")]
    return (
        bool(old)
        and old != new
        and [_sql_folded(o) for o in old] == [_sql_folded(n) for n in new]
        and all(_in_sql(o, original or []) for o in old)
    )


def main(root: Path = Path("mutants")) -> int:
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    report: list[str] = []
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root)).removesuffix(".meta")
        functions = _functions(root / module)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for key, code in sorted(codes.items()):
            if code is None:
                totals[module]["unchecked"] += 1  # the run was stopped before it
                continue
            if code in SKIPPED:
                continue
            totals[module]["total"] += 1
            if code in KILLED:
                totals[module]["killed"] += 1
                continue
            diff = _diff(functions, key)
            if sql_case_only(diff, _original(functions, key)):
                totals[module]["equivalent"] += 1
                continue
            why = "no tests" if code in (5, 33) else f"exit {code}"
            report += [f"{key} ({why})", *(f"    {line.strip()}" for line in diff), ""]
    if not totals:
        print("no mutmut results under", root, file=sys.stderr)
        return 1
    sums: collections.Counter[str] = collections.Counter()
    print(f"{'module':32} {'killed':>6} {'equiv':>6} {'total':>6}  score (killed / non-equivalent)")
    for module, n in sorted(totals.items()):
        sums.update(n)
        print(_line(module, n))
    print(_line("all", sums))
    (root / "survivors.txt").write_text("\n".join(report) + "\n")
    survivors = sums["total"] - sums["killed"] - sums["equivalent"]
    print(f"{survivors} survivors, with their diffs, in {root / 'survivors.txt'}")
    return 0


def _line(module: str, n: collections.Counter[str]) -> str:
    real = n["total"] - n["equivalent"]
    share = n["killed"] / real if real else 0.0
    unchecked = f"  ({n['unchecked']} not checked)" if n["unchecked"] else ""
    return (
        f"{module:32} {n['killed']:6} {n['equivalent']:6} {n['total']:6}  {share:6.1%}{unchecked}"
    )


if __name__ == "__main__":
    sys.exit(main())
