#!/usr/bin/env bash
# Cross-check of `agent-svc ope` against the reference library, Open Bandit Pipeline 0.5.7
# (PyPI `obp`): for every export file, OBP's OffPolicyEvaluation runs IPW, SNIPW, DM and DR
# (default settings, no clipping) on the exported arrays (logged action, reward, pscore, the
# target policy's action_dist, the reward model's q_hat) and each of our four estimates is
# compared with OBP's: relative difference |ours - obp| / max(|obp|, 1e-12) <= 1e-6.
# Prints one table per file (scripts/obp/crosscheck.py); exits 0 if all agree, 1 if some
# estimate differs, 2 on unreadable input.
#
#   scripts/ope_obp.sh [--tolerance T] [--json OUT] [EXPORT.json ...]
#       default files: every target/ope/*.export.json (written by `make ope`)
#   scripts/ope_obp.sh --self-test
#       writes a synthetic export (scripts/obp/synthetic_export.py: n=5000, k=10, uniform
#       logging, 0.1-greedy target, estimates from the plain numpy formulas) into a temporary
#       folder and checks that it passes, that the same file with DR perturbed by 1e-4
#       (relative) fails with exit 1, and that an unreadable file gives exit 2.
#
# The first run makes the Python 3.10 venv with obp (scripts/obp/setup.sh: ~1 GB download,
# 2-4 minutes, 2.2 GB under ${STREAMREC_CACHE:-~/.cache/streamrec}/obp-venv; OBP_PYTHON
# picks the interpreter); later runs take about 5 s per invocation, most of it importing torch.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { printf 'ope_obp: error: %s\n' "$*" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
self_test=0
pass=()
files=()
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --self-test) self_test=1 ;;
    --tolerance | --json)
      (($# >= 2)) || die "$1 needs a value (try --help)"
      pass+=("$1" "$2"); shift ;;
    --tolerance=* | --json=*) pass+=("$1") ;;
    --) shift; files+=("$@"); break ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) files+=("$1") ;;
  esac
  shift
done
if ((self_test)) && ((${#pass[@]} + ${#files[@]})); then
  die "--self-test takes no other arguments"
fi

if ((self_test == 0 && ${#files[@]} == 0)); then
  dir=$root/target/ope
  [[ $root == "$PWD" ]] && dir=target/ope
  shopt -s nullglob
  files=("$dir"/*.export.json)
  shopt -u nullglob
  ((${#files[@]})) || die "no export files in $dir/ (*.export.json): run 'make ope' first, \
or name the files"
fi

py=$("$root/scripts/obp/setup.sh")
crosscheck=$root/scripts/obp/crosscheck.py

if ((self_test)); then
  tmp=$(mktemp -d)
  trap 'rm -rf -- "$tmp"' EXIT
  "$py" "$root/scripts/obp/synthetic_export.py" "$tmp/synthetic.export.json"
  "$py" "$root/scripts/obp/synthetic_export.py" "$tmp/perturbed.export.json" --perturb dr=1e-4
  printf '{"n": 3, "k": 2, "action": [0, 1' > "$tmp/truncated.export.json"
  failed=0
  expect() { # expect RC LABEL FILE
    local want=$1 label=$2 rc=0
    echo "--- self-test: $label (expect exit $want)"
    "$py" "$crosscheck" "$3" || rc=$?
    if ((rc == want)); then
      echo "--- self-test: $label: exit $rc: ok"
    else
      echo "--- self-test: $label: exit $rc, expected $want: FAILED"
      failed=1
    fi
    echo
  }
  expect 0 "estimates from the numpy formulas" "$tmp/synthetic.export.json"
  expect 1 "DR perturbed by 1e-4 relative" "$tmp/perturbed.export.json"
  expect 2 "truncated JSON" "$tmp/truncated.export.json" 2>&1
  if ((failed)); then
    echo "self-test: FAILED"
    exit 1
  fi
  echo "self-test: OK"
  exit 0
fi

exec "$py" "$crosscheck" "${pass[@]}" "${files[@]}"
