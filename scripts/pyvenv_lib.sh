# Sourced by the setup scripts of the throwaway Python venvs (scripts/obp/setup.sh,
# scripts/recogym_py/setup.sh). The caller sets VENV, STAMP (a file in the venv holding what it
# was made from), want (what it should be made from) and force (1: make it anew), and defines
# log, die and check (which proves the venv works, printing one line about it).

# Reuses an up-to-date venv: when its stamp is $want and `check` passes, logs so, prints its
# python on stdout and exits 0. Otherwise removes the venv (refusing a folder that is not one)
# and sets `start` to now, for the caller to time the new install.
pyvenv_reuse_or_remove() {
  local msg
  if ((force == 0)) && [[ -x $VENV/bin/python && -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
    if msg=$(check 2>&1); then
      log "up to date: $VENV"
      log "$msg"
      echo "$VENV/bin/python"
      exit 0
    fi
    log "existing venv fails the check, making it anew:"
    printf '%s\n' "$msg" | tail -5 >&2
  fi
  start=$(date +%s)
  if [[ -e $VENV ]]; then
    [[ -f $VENV/pyvenv.cfg ]] || die "$VENV exists and is not a venv; move it away"
    log "removing the old $VENV"
    rm -rf -- "$VENV"
  fi
}
