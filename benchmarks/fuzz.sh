#!/usr/bin/env bash
# The hostile-file fuzzing of tests/test_fuzz.py with hypothesis's `long` profile (600 cases per
# kind, 120 report folders), and the counts docs/RELIABILITY.md quotes: per kind of input, the cases
# tried, how many loaded, how many were refused with one clear line (and, for `ancra verify`, how
# many loaded but reported a mismatch), and anything else (must be 0: the run fails on the first).
#   bash benchmarks/fuzz.sh        (about 10 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COUNTS=$(mktemp)
trap 'rm -f "$COUNTS"' EXIT
HYPOTHESIS_PROFILE=long FUZZ_COUNTS="$COUNTS" OMP_NUM_THREADS=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_fuzz.py
"$PY" - "$COUNTS" <<'PYEOF'
import collections, json, sys
rows = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[r["kind"].split("/")[0]][r["outcome"]] += 1
print("| input | cases | loaded | refused (one line) | mismatch reported | anything else |")
print("|---|---:|---:|---:|---:|---:|")
for kind, c in sorted(rows.items()):
    cases = c["accepted"] + c["refused"] + c["other"]
    print(f"| {kind} | {cases} | {c['accepted'] - c['mismatch reported']} | {c['refused']} | "
          f"{c['mismatch reported']} | {c['other']} |")
PYEOF
