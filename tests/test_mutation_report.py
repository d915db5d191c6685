"""The mutation report's rule for equivalent mutants: a change of letter case in SQL
(keywords and identifiers, on any line of a statement) is the same SQL; in a quoted
SQL string, or in a string that is not SQL, it is a real change."""

from __future__ import annotations

from tests.mutation_report import sql_case_only

STATEMENT = [
    "        done = await tx.execute(",
    '            "INSERT OR IGNORE INTO inbox (kind, fonzip_id, event_status, source,"',
    '            " priority, state, received_at)"',
    "            \" SELECT json_extract(value, '$[0]'), 'pending', ? FROM json_each(?)\",",
    "            (now, values),",
    "        )",
    '        log.info("commit_failed", error="database or disk is full")',
]


def _diff(old: str, new: str) -> list[str]:
    return [f"-{old}", f"+{new}"]


def test_case_changes_on_any_line_of_a_statement_are_the_same_sql() -> None:
    for old in STATEMENT[1:3]:
        assert sql_case_only(_diff(old, old.upper()), STATEMENT)
    first = STATEMENT[1]
    assert sql_case_only(_diff(first, first.replace("INTO inbox", "into INBOX")))


def test_case_changes_in_quoted_sql_strings_or_other_strings_are_real() -> None:
    select = STATEMENT[3]
    assert not sql_case_only(_diff(select, select.replace("'pending'", "'PENDING'")), STATEMENT)
    message = STATEMENT[6]
    assert not sql_case_only(_diff(message, message.upper()), STATEMENT)
    # A continuation line is SQL only where the code shows the statement it continues.
    assert not sql_case_only(_diff(STATEMENT[2], STATEMENT[2].upper()))
