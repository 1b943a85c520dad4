#!/usr/bin/env bash
# Apply each patch in mutations/ to a scratch copy of the working tree and run the fast unit
# tests there (stopping at the first failure): every mutation must make a test fail.
# Usage: bash scripts/mutation_check.sh   (prints "caught N/M"; exit 1 unless all are caught)
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
tests=(tests/test_metrics.py tests/test_quantize.py tests/test_strategies.py
       tests/test_verdicts.py tests/test_context.py
       tests/test_findings_synthetic.py)
caught=0 total=0
for patch in mutations/*.patch; do
    total=$((total + 1))
    scratch=$(mktemp -d)
    tar --exclude=.venv --exclude=.git --exclude=reports -cf - . | tar -xf - -C "$scratch"
    if ! patch -s -p1 -d "$scratch" < "$patch"; then
        echo "$(basename "$patch"): does not apply"; rm -rf "$scratch"; continue
    fi
    if (cd "$scratch" && HF_HUB_OFFLINE=1 PYTHONPATH="$scratch" "$OLDPWD/$python" -m pytest \
            "${tests[@]}" -x -q -p no:cacheprovider -m "not slow and not browser" \
            -k "not test_inconclusive_is_its_own_outcome" >/dev/null 2>&1); then
        echo "$(basename "$patch"): SURVIVED"
    else
        echo "$(basename "$patch"): caught"; caught=$((caught + 1))
    fi
    rm -rf "$scratch"
done
echo "caught $caught/$total"
[ "$caught" -eq "$total" ]
