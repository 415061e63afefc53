#!/usr/bin/env bash
# The test command: set up .venv (tools/setup_env.sh) and run pytest over tests/.
#   bash tools/run_tests.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "${ROOT}/tools/setup_env.sh"
cd "${ROOT}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "${ROOT}/.venv/bin/python" -m pytest tests "$@"
