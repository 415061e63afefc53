#!/usr/bin/env bash
# The main job: set up .venv (tools/setup_env.sh), then run the MaxSup study
# on the real 8x8 digits (tools/quickstart.py; --fast for the smoke version).
#   bash tools/quickstart.sh [--fast] [quickstart.py args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "${ROOT}/tools/setup_env.sh"
cd "${ROOT}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec "${ROOT}/.venv/bin/python" tools/quickstart.py "$@"
