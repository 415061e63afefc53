#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv/.
#
# Idempotent: a second run on the same machine only checks a stamp and returns.
# The mmcv 2.1.0 wheel with compiled ops is built once and cached in
# ${MAXSUP_CACHE:-~/.cache/maxsup_mm} so later installs take seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
CACHE="${MAXSUP_CACHE:-${HOME}/.cache/maxsup_mm}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0

log() { printf '[setup_env] %s\n' "$*"; }

# The stamp changes whenever this script or setup.py changes.
STAMP_HASH="$(cat "${ROOT}/tools/setup_env.sh" "${ROOT}/setup.py" | sha256sum | cut -c1-16)"
STAMP="${VENV}/.maxsup_setup_${STAMP_HASH}"
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

log "installing build tools (setuptools<81 keeps pkg_resources for mmengine)"
pip_install -q --upgrade pip 'setuptools>=77,<81' wheel ninja

log "installing torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}"
pip_install -q "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

log "installing OpenMMLab runtime dependencies"
pip_install -q 'numpy<2.5' 'opencv-python' 'addict' 'pyyaml' 'yapf' 'termcolor' \
    'packaging' 'Pillow' 'matplotlib' 'rich' 'mmengine==0.10.7' \
    einops importlib-metadata mat4py modelindex \
    ftfy regex prettytable scipy \
    scikit-learn grad-cam timm pytest

# ---- mmcv 2.1.0 with compiled ops (CPU), cached -----------------------------
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

log "installing mmpretrain 1.2.0 and mmsegmentation 1.2.2 (--no-deps)"
pip_install -q --no-deps 'mmpretrain==1.2.0' 'mmsegmentation==1.2.2'

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
