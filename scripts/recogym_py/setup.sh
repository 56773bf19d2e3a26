#!/usr/bin/env bash
# The Python RecoGym 0.1.3.0 (the reference the Rust port `recogym` is checked and benchmarked
# against), in a throwaway venv at ${STREAMREC_CACHE:-~/.cache/streamrec}/recogym-py-venv.
# Idempotent: a venv whose stamp matches requirements.txt and the interpreter, and that passes
# the check, is left as it is (about 2 s). Otherwise the venv is made anew and the pinned
# closure in requirements.txt is installed with `pip install --no-deps` (about 25 s from PyPI
# with an empty pip cache; all wheels for CPython 3.11 except gym 0.14.0, a pure-Python sdist).
# torch, tensorflow and jupyter, which recogym's setup.py declares, are not installed: see
# requirements.txt and rgload.py.
#
# The check: import recogym (through rgload.py), gym.make('reco-gym-v1'), init_gym, one user.
# Logs go to stderr; the last line on stdout is the venv's python, so a caller can do
#   py=$(scripts/recogym_py/setup.sh)
#
#   scripts/recogym_py/setup.sh [--force]   --force: make the venv anew even if it is up to date
# Environment: STREAMREC_CACHE (cache root), RECOGYM_PYTHON (interpreter, default python3;
# must be CPython 3.11, the version the pins are wheels for).
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
VENV=$CACHE/recogym-py-venv
PY=${RECOGYM_PYTHON:-python3}
REQ=$here/requirements.txt
STAMP=$VENV/.recogym-py-stamp

log() { printf 'recogym-py: %s\n' "$*" >&2; }
die() { printf 'recogym-py: error: %s\n' "$*" >&2; exit 1; }

command -v "$PY" > /dev/null || die "no '$PY' on PATH (set RECOGYM_PYTHON to a CPython 3.11)"
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  || die "'$PY' does not run"
[[ $pyver == 3.11 ]] || die "'$PY' is Python $pyver; the pins in $REQ are CPython 3.11 wheels \
(numba 0.57.1 / numpy 1.23.5 have none for 3.12+). Set RECOGYM_PYTHON to a python3.11."
"$PY" -c 'import venv, ensurepip' 2> /dev/null \
  || die "'$PY' lacks venv/ensurepip (Debian: apt-get install python3.11-venv)"

mkdir -p "$CACHE"
# One setup at a time (the fidelity and bench scripts may both call this).
if command -v flock > /dev/null; then
  exec 9> "$CACHE/recogym-py-venv.lock"
  flock 9
fi

want=$({ cat "$REQ"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)

check() { # import recogym the way ab.py/bench.py do, make the env, play one user
  "$VENV/bin/python" - "$here" << 'PYEOF'
import os, sys
sys.dont_write_bytecode = True
os.environ["TQDM_DISABLE"] = "1"
sys.path.insert(0, sys.argv[1])
import rgload
recogym, gym, torch_real = rgload.load()
env = gym.make("reco-gym-v1")
env.init_gym({**recogym.env_1_args, "num_products": 10, "random_seed": 42})
env.reset(0)
obs, reward, done, _ = env.step(None)
steps = 0
while not done:
    obs, reward, done, _ = env.step(steps % 10)
    steps += 1
import importlib.metadata as md
vers = " ".join(f"{p}=={md.version(p)}" for p in ("recogym", "gym", "numpy", "pandas", "scipy", "numba"))
print(f"import recogym; gym.make('reco-gym-v1') OK ({type(env).__module__}.{type(env).__name__}, "
      f"one user: {steps} bandit steps); {vers}; torch: {'real' if torch_real else 'placeholder'}")
PYEOF
}

# shellcheck source=../pyvenv_lib.sh
source "$here/../pyvenv_lib.sh"
pyvenv_reuse_or_remove
log "creating $VENV with $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
"$PY" -m venv "$VENV" || die "python -m venv failed"
log "installing recogym==0.1.3.0 and its pinned dependencies from $REQ (no torch)"
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --prefer-binary \
  -r "$REQ"; then
  die "pip install failed (see above). PyPI must be reachable; a pin that has no wheel for this \
platform would need a compiler. Fix $REQ or rerun with --force."
fi
# The closure must be complete, except recogym's declared-but-unused requirements.
if ! broken=$("$VENV/bin/pip" check 2>&1); then
  other=$(printf '%s\n' "$broken" \
    | grep -vE '^recogym 0\.1\.3\.0 requires (torch|tensorflow|jupyter|absl-py|simplegeneric|datetime), which is not installed\.$' \
      || true)
  [[ -z $other ]] || die "pip check: $other"
fi
if ! msg=$(check 2>&1); then
  printf '%s\n' "$msg" >&2
  die "the installed recogym does not work (see the traceback above)"
fi
echo "$want" > "$STAMP"
log "installed in $(($(date +%s) - start)) s: $VENV"
log "$msg"
echo "$VENV/bin/python"
