#!/usr/bin/env bash
# Libraries for VTK offscreen rendering without an X display (scripts/render_screenshot.py).
# VTK's wheel tries X, then EGL (libEGL + Mesa's EGL driver, software rendering through llvmpipe),
# then OSMesa. On Debian/Ubuntu these packages give the EGL path; run as root (or with sudo).
set -euo pipefail
apt-get update -qq
apt-get install -y -qq --no-install-recommends libegl1 libegl-mesa0 libgl1 libgles2 >/dev/null
echo "install_offscreen_gl: libEGL and Mesa's EGL driver installed"
