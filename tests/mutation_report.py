"""Test tooling: the mutation score of each module of the spine, from mutmut's results.

``./dev.sh mutate`` runs mutmut (configured under ``[tool.mutmut]`` in pyproject.toml)
and then this: killed / total per module (timeouts and type-check catches count as
killed; "no tests" counts as survived), and every survivor by name, so that each one
is either killed by a new test or listed in TESTING.md with why it is equivalent.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

KILLED = {1, 3, 36, 37, -24, 24, 152, 255}
SKIPPED = {34}


def main(root: Path = Path("mutants")) -> int:
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root)).removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for key, code in codes.items():
            if code is None:
                totals[module]["unchecked"] += 1  # the run was stopped before it
                continue
            if code in SKIPPED:
                continue
            totals[module]["total"] += 1
            if code in KILLED:
                totals[module]["killed"] += 1
            else:
                survivors.append(f"{key} ({'no tests' if code in (5, 33) else code})")
    if not totals:
        print("no mutmut results under", root, file=sys.stderr)
        return 1
    all_killed = all_total = 0
    for module, n in sorted(totals.items()):
        all_killed += n["killed"]
        all_total += n["total"]
        share = n["killed"] / n["total"] if n["total"] else 0.0
        unchecked = f"  ({n['unchecked']} not checked)" if n["unchecked"] else ""
        print(f"{module:32} {n['killed']:5} / {n['total']:5} killed  {share:6.1%}{unchecked}")
    print(
        f"{'all':32} {all_killed:5} / {all_total:5} killed  {all_killed / max(all_total, 1):6.1%}"
    )
    (root / "survivors.txt").write_text("\n".join(survivors) + "\n")
    print(f"{len(survivors)} survivors listed in {root / 'survivors.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
