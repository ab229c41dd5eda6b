#!/usr/bin/env bash
# Run every benchmark (bench_*.py) once; each prints ratios measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
for b in benchmarks/bench_*.py; do
  echo "== $b"
  .venv/bin/python "$b" "$@"
done
