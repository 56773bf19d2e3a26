#!/usr/bin/env bash
# libtorch for the `tch` crate (agent-svc's DQN), from the PyPI torch wheel; idempotent.
#
# Creates ${STREAMREC_CACHE:-~/.cache/streamrec}/torch-venv with the minimal install measured in
# the build notes (torch 2.13.0, the version tch 0.26.0 binds, plus the two CUDA runtime wheels
# that even libtorch_cpu.so links against) and points the repo's `.libtorch` at its `torch`
# folder, which `.cargo/config.toml` hands to torch-sys as LIBTORCH. Nothing on the LIBTORCH path
# checks the version, so it is pinned here exactly.
#
#   scripts/libtorch.sh            libtorch only (what `cargo build` needs; runs no Python)
#   scripts/libtorch.sh --python   the full torch install, which `import torch` needs (the Python
#                                  side of the benchmark): libtorch_python.so links the whole
#                                  CUDA stack (cuDNN, cuBLAS, NCCL, ...), about 2.7 GB download
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
VENV=$CACHE/torch-venv
PY=${PYTHON:-python3}
# The pure-Python part of torch's Requires-Dist, pinned (its CUDA wheels are pinned by torch).
PY_DEPS=(typing_extensions==4.15.0 filelock==3.20.0 sympy==1.14.0 mpmath==1.3.0 networkx==3.5
  jinja2==3.1.6 MarkupSafe==3.0.3 fsspec==2025.9.0 setuptools==80.9.0 numpy==2.3.4)

log() { printf 'libtorch: %s\n' "$*" >&2; }

installed() { # $1: distribution, $2: version
  "$VENV/bin/python" - "$1" "$2" 2> /dev/null << 'PYEOF'
import importlib.metadata as m, sys
sys.exit(0 if m.version(sys.argv[1]) == sys.argv[2] else 1)
PYEOF
}

if [[ ! -x $VENV/bin/python ]]; then
  log "creating $VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
fi
if ! installed torch "$TORCH_VERSION" || ! installed nvidia-cuda-runtime 13.0.96 || ! installed nvidia-cuda-cupti 13.0.85; then
  log "installing torch==$TORCH_VERSION (minimal, about 540 MB)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
fi
if [[ ${1:-} == --python ]] && ! "$VENV/bin/python" -c 'import torch' 2> /dev/null; then
  log "installing torch==$TORCH_VERSION with its dependencies (about 2.7 GB, for import torch)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" "${PY_DEPS[@]}"
fi

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[[ -f $site/torch/lib/libtorch_cpu.so ]] || { log "no libtorch_cpu.so under $site/torch; remove $VENV and rerun" >&2; exit 1; }
if [[ $(readlink .libtorch 2> /dev/null) != "$site/torch" ]]; then
  ln -sfn "$site/torch" .libtorch
  log ".libtorch -> $site/torch"
fi
