#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# UTF-8 mode: a library that resets the C locale mid-run must not turn file reads into ASCII
export PYTHONUTF8=1
exec .venv/bin/python -m pytest "$@"
