#!/usr/bin/env bash
# Creates .venv (if missing) and installs modformer with its test tools. The CPU build of torch is pinned through
# constraints.txt, not in the package's own dependencies, so a user with a GPU keeps their own torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt torch
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
