#!/usr/bin/env bash
# Set up (idempotent) and run the end-to-end demo on the bundled Multi30k sample. Extra arguments go to
# `modformer demo` (e.g. --fast for a smoke run, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/modformer demo "$@"
