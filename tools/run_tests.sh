#!/usr/bin/env bash
# The test command: set up .venv (tools/setup_env.sh) and run pytest over tests/,
# every test (the slow ones included; CI runs exactly this).
#   bash tools/run_tests.sh [pytest args]
#   bash tools/run_tests.sh -m "not slow"     # the fast loop only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "${ROOT}/tools/setup_env.sh"
cd "${ROOT}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "${ROOT}/.venv/bin/python" -m pytest tests "$@"
