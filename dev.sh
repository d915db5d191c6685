#!/bin/sh
# One entry point for people and CI: sets up .venv (only python3 >= 3.11 needed),
# then runs what you ask for.
#   ./dev.sh demo        install and run the demo (simulator + daemon + webhooks)
#   ./dev.sh test [ARGS] install and run the test suite (pytest ARGS)
#   ./dev.sh lint        ruff check, ruff format --check, mypy --strict
#   ./dev.sh ci          lint, then test: what .ci/run does (a test whose server -
#                        PostgreSQL, MariaDB, NATS on 127.0.0.1 - is missing fails
#                        instead of skipping: FONZIPD_REQUIRE_SERVICES=1)
#   ./dev.sh run ARGS    run fonzipd ARGS inside the venv
#   ./dev.sh mutate      mutation testing of the spine (mutmut; not part of CI), then
#                        the score per module; MUTATE_JOBS (2), MUTATE_TIMEOUT (3600 s)
set -eu
cd "$(dirname "$0")"
VENV="${FONZIPD_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            echo "fonzipd needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1)" >&2; exit 1; }
        "$PY" -m venv "$VENV"
    fi
    stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[dev]"
        touch "$stamp"
    fi
}

cmd="${1:-demo}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo) setup; exec "$VENV/bin/fonzipd" demo "$@" ;;
    test) setup; exec "$VENV/bin/python" -m pytest "$@" ;;
    lint)
        setup
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        "$VENV/bin/mypy"
        ;;
    ci) export FONZIPD_REQUIRE_SERVICES="${FONZIPD_REQUIRE_SERVICES:-1}"; "$0" lint; "$0" test "$@" ;;
    run) setup; exec "$VENV/bin/fonzipd" "$@" ;;
    mutate)
        setup
        [ -x "$VENV/bin/mutmut" ] || "$VENV/bin/python" -m pip install -q "mutmut==3.8.1"
        rm -rf mutants
        # Bounded: a run that outlives MUTATE_TIMEOUT is stopped and reports what it has.
        timeout "${MUTATE_TIMEOUT:-3600}" "$VENV/bin/mutmut" run \
            --max-children "${MUTATE_JOBS:-2}" "$@" || echo "mutmut stopped: $?" >&2
        exec "$VENV/bin/python" -m tests.mutation_report
        ;;
    *) echo "usage: $0 demo|test|lint|ci|run|mutate [ARGS]" >&2; exit 2 ;;
esac
