#!/usr/bin/env bash
# The two commands of the README:
#   ./run.sh demo [actrec demo flags]   install what is missing, then run the main job on the embedded data
#   ./run.sh test [pytest flags]        install what is missing, then the linter (ruff) and the whole test suite
#                                       (./run.sh test -m "not slow" is the fast lane)
# The install lives in .venv and is reused while setup.cfg is unchanged (a second run costs seconds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

log() { printf '[run.sh] %s\n' "$*" >&2; }

# dev: pytest & co.; beam: Apache Beam for `actrec preprocess --runner beam`, whose tests run in CI too
EXTRAS=dev,beam

# espeak-ng and Festival with its voices (data_prep/festival_voices.py) speak the embedded commands
SPEECH_PACKAGES=(espeak-ng festival festvox-kdlpc16k festvox-italp16k festvox-itapc16k festvox-czech-dita festvox-czech-krb
  festvox-czech-machac festvox-czech-ph festvox-suopuhe-lj festvox-suopuhe-mv festvox-ru festvox-ca-ona-hts)

ensure_debian_packages() {
  local missing=()
  if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${SPEECH_PACKAGES[@]}"; do
      dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
  else
    command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
    command -v festival >/dev/null 2>&1 || missing+=(festival)
  fi
  python3.11 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3.11-venv)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing ${missing[*]}: install with 'sudo apt-get install ${missing[*]}' (spoken-command data needs espeak-ng and festival with its voices)"
  fi
}

find_python() {
  for py in python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  log "Python 3.11 not found: install it (Debian: apt-get install python3.11 python3.11-venv)"; exit 1
}

ensure_venv() {
  local stamp=".venv/.installed-$( (cat setup.cfg pyproject.toml; echo "$EXTRAS") | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  local py; py=$(find_python)
  [ -x .venv/bin/python ] || { log "creating .venv"; "$py" -m venv .venv; }
  log "installing Python packages into .venv (first run only: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  rm -f .venv/.installed-*; touch "$stamp"
}

cmd=${1:-}; shift || true
case "$cmd" in
  demo)
    ensure_debian_packages; ensure_venv
    exec .venv/bin/actrec demo "$@" ;;
  test)
    ensure_debian_packages; ensure_venv
    log "ruff check ."
    .venv/bin/ruff check . || { log "ruff found problems (above): fix them, or run 'ruff check --fix .'"; exit 1; }
    exec .venv/bin/python -m pytest "$@" ;;
  *)
    echo "usage: ./run.sh demo [flags] | ./run.sh test [pytest flags]" >&2; exit 2 ;;
esac
