#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv/.
#
# Idempotent: a second run on the same machine only checks a stamp and returns.
# The mmcv wheel with compiled ops is built once and cached in
# ${MAXSUP_CACHE:-~/.cache/maxsup_mm} so later installs take seconds.
#
# Versions come from requirements/ (runtime.txt, tests.txt, build.txt), the
# files setup.py reads too; nothing is pinned here.
#   bash tools/setup_env.sh                set up (or check) .venv/
#   bash tools/setup_env.sh --print-pins   print what it would install, and exit
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
CACHE="${MAXSUP_CACHE:-${HOME}/.cache/maxsup_mm}"
PYTHON="${PYTHON:-python3}"
REQS="${ROOT}/requirements"

log() { printf '[setup_env] %s\n' "$*"; }

# A requirements file without comments and blank lines.
requirements() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$1"; }
# The version pinned as NAME==VERSION in requirements/runtime.txt.
pinned() {
    local version
    version="$(requirements "${REQS}/runtime.txt" \
        | sed -nE "s/^${1}[[:space:]]*==[[:space:]]*([^[:space:];]+)$/\1/p")"
    if [[ -z "${version}" ]]; then
        log "ERROR: requirements/runtime.txt pins no ${1}==VERSION" >&2
        return 1
    fi
    printf '%s\n' "${version}"
}
# Installed apart: mmcv is built with its ops below, mmpretrain and
# mmsegmentation go in with --no-deps (their own pins would pull mmcv from PyPI).
APART='mmcv|mmpretrain|mmsegmentation'
# The rest of runtime.txt, installed with pip -r.
pip_requirements() {
    requirements "${REQS}/runtime.txt" | grep -vE "^(${APART})([<>=!~;[:space:]]|$)"
}
TORCH_VERSION="$(pinned torch)"
TORCHVISION_VERSION="$(pinned torchvision)"
MMCV_VERSION="$(pinned mmcv)"
MMPRETRAIN_VERSION="$(pinned mmpretrain)"
MMSEG_VERSION="$(pinned mmsegmentation)"

# The stamp changes whenever this script, setup.py or a requirements file
# changes.
STAMP_HASH="$(cat "${ROOT}/tools/setup_env.sh" "${ROOT}/setup.py" "${REQS}"/*.txt \
    | sha256sum | cut -c1-16)"
STAMP="${VENV}/.maxsup_setup_${STAMP_HASH}"

if [[ "${1:-}" == "--print-pins" ]]; then
    printf '%s %s\n' torch "${TORCH_VERSION}" torchvision "${TORCHVISION_VERSION}" \
        mmcv "${MMCV_VERSION}" mmpretrain "${MMPRETRAIN_VERSION}" \
        mmsegmentation "${MMSEG_VERSION}" stamp "${STAMP_HASH}"
    pip_requirements | sed 's/^/pip /'
    requirements "${REQS}/tests.txt" | sed 's/^/pip /'
    exit 0
fi

# The fused MaxSup CPU kernel (maxsup_mm/ops/csrc), compiled once per source
# version into maxsup_mm/ops/_lib/ (git-ignored); a no-op when up to date.  A
# failed build is not fatal: the loss then runs its pure-PyTorch fallback.
build_kernels() {
    "${VENV}/bin/python" "${ROOT}/maxsup_mm/ops/build.py" \
        || log "WARNING: fused MaxSup CPU kernel not built; using the PyTorch fallback"
}

if [[ -f "${STAMP}" && -x "${VENV}/bin/python" ]]; then
    log "environment up to date (${VENV})"
    build_kernels
    exit 0
fi

mkdir -p "${CACHE}"
if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating virtual environment ${VENV}"
    "${PYTHON}" -m venv "${VENV}"
fi
PY="${VENV}/bin/python"
# pip, minus the warnings about index folders some images configure but lack
pip_install() {
    "${PY}" -m pip install --disable-pip-version-check --progress-bar off "$@" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

log "installing build tools (requirements/build.txt; setuptools from runtime.txt)"
SETUPTOOLS="$(requirements "${REQS}/runtime.txt" | grep -E '^setuptools([<>=!~;[:space:]]|$)')"
pip_install -q --upgrade pip "${SETUPTOOLS}" -r "${REQS}/build.txt"

log "installing torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}"
pip_install -q "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

log "installing the run-time and test requirements (requirements/runtime.txt but ${APART//|/, }; tests.txt)"
PIP_REQS="$(mktemp)"
pip_requirements > "${PIP_REQS}"
pip_install -q -r "${PIP_REQS}" -r "${REQS}/tests.txt"
rm -f "${PIP_REQS}"

# ---- mmcv with compiled ops (CPU), cached ----------------------------------
PYTAG="$("${PY}" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="${CACHE}/mmcv-${MMCV_VERSION}-torch${TORCH_VERSION}-${PYTAG}"
if "${PY}" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '${MMCV_VERSION}')" 2>/dev/null; then
    log "mmcv ${MMCV_VERSION} with ops already installed"
else
    if ! ls "${WHEEL_DIR}"/mmcv-*.whl >/dev/null 2>&1; then
        log "building mmcv ${MMCV_VERSION} with ops from source (takes several minutes, done once)"
        BUILD="$(mktemp -d)"
        "${PY}" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
            "mmcv==${MMCV_VERSION}" -d "${BUILD}" \
            2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
        tar -xzf "${BUILD}"/mmcv-${MMCV_VERSION}.tar.gz -C "${BUILD}"
        SRC="${BUILD}/mmcv-${MMCV_VERSION}"
        # torch 2.14 headers need C++20; mmcv's setup.py hard-codes c++14/17.
        sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "${SRC}/setup.py"
        mkdir -p "${WHEEL_DIR}"
        (cd "${SRC}" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
            "${PY}" -m pip wheel --no-deps --no-build-isolation -w "${WHEEL_DIR}" . )
        rm -rf "${BUILD}"
    else
        log "using cached mmcv wheel from ${WHEEL_DIR}"
    fi
    pip_install -q --no-deps "${WHEEL_DIR}"/mmcv-*.whl
fi

log "installing mmpretrain ${MMPRETRAIN_VERSION} and mmsegmentation ${MMSEG_VERSION} (--no-deps)"
pip_install -q --no-deps "mmpretrain==${MMPRETRAIN_VERSION}" "mmsegmentation==${MMSEG_VERSION}"

log "installing maxsup_mm (editable)"
pip_install -q --no-deps --no-build-isolation -e "${ROOT}"

log "building the fused MaxSup CPU kernel (once per source version, ~1 min)"
build_kernels

"${PY}" - <<'PYCHECK'
import torch, torchvision, mmcv, mmcv.ops, mmengine, mmpretrain, mmseg
print(f'[setup_env] torch {torch.__version__}, torchvision {torchvision.__version__}, '
      f'mmcv {mmcv.__version__} (ops), mmengine {mmengine.__version__}, '
      f'mmpretrain {mmpretrain.__version__}, mmseg {mmseg.__version__}')
PYCHECK

rm -f "${VENV}"/.maxsup_setup_*
touch "${STAMP}"
log "done"
