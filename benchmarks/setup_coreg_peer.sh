#!/usr/bin/env bash
# Build the separate virtual environment that runs arosics, the co-registration peer of
# benchmarks/coregister.py.
#
# arosics needs GDAL's Python bindings (PyPI ships them only as source, built against the
# system libgdal) and numpy<2, which the project's main environment cannot have; so it lives in
# its own venv, `.venv-arosics` at the repository root (git-ignored), and the benchmark runs it
# as a subprocess. Recipe measured on Debian 12 (GDAL 3.6.2, arosics 1.12.1); see NOTES.md.
#
# Usage: bash benchmarks/setup_coreg_peer.sh            (as root, or with sudo for apt-get)
#        PYTHON=python3.11 bash benchmarks/setup_coreg_peer.sh
# Idempotent: a venv that already imports arosics is left as it is.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AROSICS_VENV:-$REPO_ROOT/.venv-arosics}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "from osgeo import gdal_array; import arosics" 2>/dev/null; then
    echo "arosics venv already usable: $VENV"
    exit 0
fi

if ! command -v gdal-config >/dev/null 2>&1; then
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO apt-get install -y libgdal-dev gdal-bin
fi
GDAL_VERSION="$(gdal-config --version)"
echo "system GDAL: $GDAL_VERSION"

"$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# The GDAL bindings' setup.py needs numpy at build time (for gdal_array) and an old setuptools.
pip install "numpy<2" "setuptools<68" wheel
pip install --no-build-isolation --no-cache-dir "gdal==$GDAL_VERSION"
pip install -U setuptools
# pandas 3 and geopandas 1.1 need numpy>=2; pin GDAL so pip does not try to rebuild it.
pip install -c <(echo "gdal==$GDAL_VERSION") "pandas<3" "geopandas<1.1" arosics
python -c "from osgeo import gdal_array; import arosics; print('arosics', arosics.__version__)"
