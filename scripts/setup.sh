#!/usr/bin/env bash
# Create .venv (if missing) and install MedAI with pinned dependencies. torch goes first so
# that nothing later pulls a CUDA build; everything else is pinned in requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_install() {
  # pip's warnings about this machine's extra package folders are noise; real errors still fail the script
  local log; log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
torch_pin=$(grep -E '^torch==' requirements.txt)
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${torch_pin#torch==}' else 1)" 2>/dev/null; then
  pip_install "$torch_pin"
fi
pip_install -r requirements.txt
pip_install --no-deps -r requirements-nnunet.txt  # issue 12: nnunetv2 without its torch/torchvision/CUDA pulls
pip_install --no-deps --no-build-isolation -e . || pip_install --no-deps -e .
.venv/bin/python -c "import torch, monai, SimpleITK, slicer, medai" || { echo "setup: import check failed" >&2; exit 1; }
# dciodvfy (dicom3tools) validates the DICOM SEG/SR the tests write; their tests skip without it
if ! command -v dciodvfy >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dicom3tools) >/dev/null 2>&1 || echo "setup: could not install dicom3tools (dciodvfy); DICOM validation tests will skip" >&2
fi
