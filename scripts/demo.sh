#!/usr/bin/env bash
# Set up (if needed) and run the demo: the default model on the MNI152 T1 in a headless Slicer scene.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/medai demo -o out "$@"
