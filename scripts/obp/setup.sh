#!/usr/bin/env bash
# Open Bandit Pipeline 0.5.7 (PyPI `obp`, the reference the estimates of `agent-svc ope` are
# cross-checked against by crosscheck.py), in a throwaway venv at
# ${STREAMREC_CACHE:-~/.cache/streamrec}/obp-venv.
# Idempotent: a venv whose stamp matches requirements.txt and the interpreter, and that passes
# the check, is left as it is (about 4 s, most of it importing torch). Otherwise the venv is made
# anew and the pinned closure in requirements.txt is installed (`pip install --no-deps`, then
# `pip check`): about 1 GB from PyPI (torch 1.12.0 alone is a 776 MB wheel that bundles CUDA
# 10.2 libraries; the venv takes 2.2 GB), 2-4 minutes here (135 s and 210 s, 2 cores).
#
# Python: obp 0.5.7 requires Python >=3.8,<3.11 and pins torch==1.12, which has no wheels for
# 3.11+, so the venv needs a CPython 3.10. It is taken from OBP_PYTHON if set, else the newest
# 3.10.x that pyenv has installed (if pyenv is on PATH), else python3.10 on PATH.
#
# The check: import obp and run IPW, SNIPW, DM and DR on a tiny input.
# Logs go to stderr; the last line on stdout is the venv's python, so a caller can do
#   py=$(scripts/obp/setup.sh)
#
#   scripts/obp/setup.sh [--force]   --force: make the venv anew even if it is up to date
# Environment: STREAMREC_CACHE (cache root), OBP_PYTHON (a CPython 3.10 interpreter).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
force=0
for arg in "$@"; do
  case $arg in
    -h | --help) usage; exit 0 ;;
    --force) force=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
CACHE=${STREAMREC_CACHE:-$HOME/.cache/streamrec}
VENV=$CACHE/obp-venv
REQ=$here/requirements.txt
STAMP=$VENV/.obp-stamp

log() { printf 'obp: %s\n' "$*" >&2; }
die() { printf 'obp: error: %s\n' "$*" >&2; exit 1; }

# --- the interpreter -------------------------------------------------------------------------
if [[ -n ${OBP_PYTHON:-} ]]; then
  PY=$OBP_PYTHON
  command -v "$PY" > /dev/null || die "OBP_PYTHON='$PY' is not an executable (set it to a CPython 3.10)"
  from="OBP_PYTHON"
else
  PY= from=
  if command -v pyenv > /dev/null; then
    proot=$(pyenv root)
    # newest installed 3.10.x (version sort), e.g. $(pyenv root)/versions/3.10.13/bin/python3.10
    best=$(find "$proot/versions" -maxdepth 1 -name '3.10.*' -printf '%f\n' 2> /dev/null \
      | grep -E '^3\.10\.[0-9]+$' | sort -V | tail -1 || true)
    if [[ -n $best && -x $proot/versions/$best/bin/python3.10 ]]; then
      PY=$proot/versions/$best/bin/python3.10
      from="pyenv"
    fi
  fi
  if [[ -z $PY ]] && command -v python3.10 > /dev/null; then
    PY=$(command -v python3.10)
    from="PATH"
  fi
  if [[ -z $PY ]]; then
    if command -v pyenv > /dev/null; then
      have=$(find "$(pyenv root)/versions" -maxdepth 1 -mindepth 1 -printf '%f\n' 2> /dev/null \
        | sort -V | paste -sd, - || true)
      nopy="pyenv has no 3.10.x"
      hint="'pyenv install 3.10' (pyenv, root $(pyenv root), has only: ${have:-nothing})"
    else
      nopy="no pyenv"
      hint="pyenv ('pyenv install 3.10') or your OS's python3.10 package (Debian 12 apt \
has only 3.11; Ubuntu: the deadsnakes PPA)"
    fi
    die "no Python 3.10 found: OBP_PYTHON is unset, $nopy, no python3.10 on PATH. \
obp 0.5.7 needs Python >=3.8,<3.11 (its pinned torch==1.12 has no wheels for 3.11+). \
Set OBP_PYTHON=/path/to/python3.10, or install a 3.10 with $hint."
  fi
fi
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "'$PY' does not run"
[[ $pyver == 3.10 ]] || die "'$PY' (from $from) is Python $pyver; obp 0.5.7 needs >=3.8,<3.11 \
and the pins in $REQ (torch 1.12.0, Pillow 9.1.1, ...) are CPython 3.10 wheels. Set OBP_PYTHON \
to a python3.10."
"$PY" -c 'import venv, ensurepip' 2> /dev/null \
  || die "'$PY' lacks venv/ensurepip (Debian/Ubuntu: apt-get install python3.10-venv)"

mkdir -p "$CACHE"
# One setup at a time.
if command -v flock > /dev/null; then
  exec 9> "$CACHE/obp-venv.lock"
  flock 9
fi

want=$({ cat "$REQ"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)

check() { # import obp, run the four estimators on three rounds, print the versions
  TQDM_DISABLE=1 "$VENV/bin/python" -W ignore - << 'PYEOF'
import numpy as np
import obp
from obp.ope import (OffPolicyEvaluation, InverseProbabilityWeighting,
                     SelfNormalizedInverseProbabilityWeighting, DirectMethod, DoublyRobust)
bf = {"n_rounds": 3, "n_actions": 2, "action": np.array([0, 1, 0]),
      "reward": np.array([1.0, 0.0, 1.0]), "pscore": np.full(3, 0.5),
      "position": None, "context": None}
ad = np.array([[1.0, 0.0]] * 3)[:, :, None]
qh = np.array([[0.5, 0.5]] * 3)[:, :, None]
est = OffPolicyEvaluation(bandit_feedback=bf, ope_estimators=[
    InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting(),
    DirectMethod(), DoublyRobust()]).estimate_policy_values(
        action_dist=ad, estimated_rewards_by_reg_model=qh)
want = {"ipw": 4 / 3, "snipw": 1.0, "dm": 0.5, "dr": 0.5 + 2 * 0.5 * 2 / 3}
assert all(abs(est[k] - v) < 1e-12 for k, v in want.items()), (est, want)
import importlib.metadata as md
vers = " ".join(f"{p}=={md.version(p)}" for p in
                ("obp", "torch", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib"))
print(f"import obp; IPW/SNIPW/DM/DR OK; {vers}")
PYEOF
}

# shellcheck source=../pyvenv_lib.sh
source "$here/../pyvenv_lib.sh"
pyvenv_reuse_or_remove
log "creating $VENV with $PY (from $from; $("$PY" -c 'import sys; print(sys.version.split()[0])'))"
"$PY" -m venv "$VENV" || die "python -m venv failed"
log "installing obp==0.5.7 and its pinned dependencies from $REQ (~1 GB download, torch included)"
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --use-pep517 \
  -r "$REQ"; then
  die "pip install failed (see above). PyPI must be reachable (torch 1.12.0 is a 776 MB wheel; \
obp and mypy-extensions are sdists and need setuptools/poetry-core from PyPI to build). \
Fix $REQ or rerun with --force."
fi
if ! broken=$("$VENV/bin/pip" check 2>&1); then
  die "pip check: $broken"
fi
if ! msg=$(check 2>&1); then
  printf '%s\n' "$msg" >&2
  die "the installed obp does not work (see the traceback above)"
fi
echo "$want" > "$STAMP"
log "installed in $(($(date +%s) - start)) s: $VENV ($(du -sh "$VENV" | cut -f1))"
log "$msg"
echo "$VENV/bin/python"
