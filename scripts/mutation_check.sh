#!/usr/bin/env bash
# Apply each patch in mutations/ to a scratch copy of the working tree and run the fast unit
# tests there (stopping at the first failure): every mutation must make a test fail.
# Usage: bash scripts/mutation_check.sh   (prints "caught N/M"; exit 1 unless all are caught)
# The tests must pass on the unmutated tree first; only failing tests (pytest exit 1) count
# as a catch, not a crash or a missing interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
if ! [ -x "$python" ]; then
    echo "no Python at $python: run bash scripts/setup.sh first, or set PYTHON" >&2
    exit 2
fi
# absolute, its symlink kept (a venv's python is one): the tests run in scratch folders
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
tests=(tests/test_metrics.py tests/test_quantize.py tests/test_strategies.py
       tests/test_verdicts.py tests/test_context.py
       tests/test_findings_synthetic.py tests/test_distribution.py)
run_tests() {  # in folder $1; prints pytest's exit code
    (cd "$1" && HF_HUB_OFFLINE=1 PYTHONPATH="$1" "$python" -m pytest \
        "${tests[@]}" -x -q -p no:cacheprovider -m "not slow and not browser" \
        -k "not test_inconclusive_is_its_own_outcome" >/dev/null 2>&1)
    echo $?
}
status=$(run_tests "$PWD")
if [ "$status" -ne 0 ]; then
    echo "the tests fail (pytest exit $status) before any mutation: fix them first" >&2
    exit 2
fi
caught=0 total=0
for patch in mutations/*.patch; do
    total=$((total + 1))
    scratch=$(mktemp -d)
    tar --exclude=.venv --exclude=.git --exclude=reports -cf - . | tar -xf - -C "$scratch"
    if ! patch -s -p1 -d "$scratch" < "$patch"; then
        echo "$(basename "$patch"): does not apply"; rm -rf "$scratch"; continue
    fi
    status=$(run_tests "$scratch")
    case $status in
        0) echo "$(basename "$patch"): SURVIVED" ;;
        1) echo "$(basename "$patch"): caught"; caught=$((caught + 1)) ;;
        *) echo "$(basename "$patch"): pytest exit $status (an error, not a failing test)" ;;
    esac
    rm -rf "$scratch"
done
echo "caught $caught/$total"
[ "$caught" -eq "$total" ]
