#!/usr/bin/env bash
# Create a virtual environment with ldt, BasicSR and the test tools (the README's install; CI runs this too).
#   bash scripts/install.sh [VENV_DIR]        (default: .venv)
# torch/torchvision are pinned by constraints.txt. basicsr 1.4.2 needs torch importable at build time, so it is
# built without build isolation (fast: no second torch download into a throw-away build environment).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$venv/bin/python" -m pip install -q -c constraints.txt torch torchvision cython numpy
"$venv/bin/python" -m pip install -q --no-build-isolation -c constraints.txt -e ".[sr,classification,segmentation,dev]"
"$venv/bin/python" -c "import torch, torchvision, ldt.archs, ldt.data, ldt.models; print('ldt ready: torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "activate with: source $venv/bin/activate"
