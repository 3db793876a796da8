#!/usr/bin/env bash
# Installs, idempotently and quietly, everything weir's tests and benchmarks talk to:
# Debian packages (nginx, MariaDB, wrk, Redis, nghttp2's h2load, systemd's systemd-socket-activate, prometheus's promtool, logrotate) and the Python peers (Flask, uWSGI, Gunicorn,
# Granian, PyMySQL, pytest, brotli and zstandard to decode compressed answers, h2 for HTTP/2 frame-level tests, maturin to build the wheel, PyYAML to read the alert rules). Safe to run again: it skips what is already there.
# Usage: scripts/install-deps.sh [--no-apt]   (root is needed for the apt part)
set -euo pipefail

APT_PACKAGES=(nginx-light mariadb-server mariadb-client wrk redis-server nghttp2-client logrotate)
PIP_PACKAGES=(
  "flask>=3,<4"
  "uwsgi==2.0.31"
  "gunicorn>=23"
  "granian==2.8.7"
  "pymysql>=1.1"
  "pytest>=8"
  "requests>=2.31"
  "brotli>=1.1"
  "zstandard>=0.22"
  "maturin>=1.5,<2"
  "pyyaml>=6"
  "h2>=4.1"
)

log() { printf 'install-deps: %s\n' "$*" >&2; }

need_apt=()
if [[ "${1:-}" != "--no-apt" ]]; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
  done
  # tests/e2e/test_systemd.py starts weir under systemd-socket-activate (Debian's systemd
  # package); only its binary is used, no systemd runs.
  command -v systemd-socket-activate >/dev/null || need_apt+=(systemd)
  # tests/front/test_monitoring.py checks contrib/prometheus/alerts.yml with promtool
  # (Debian's prometheus package: 19 MB, about 10 s to install); no Prometheus runs.
  command -v promtool >/dev/null || need_apt+=(prometheus)
fi
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not start the services: tests start their own private instances.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
missing_pip=$("$PY" - "${PIP_PACKAGES[@]}" <<'PYEOF'
import sys
from importlib import metadata
import re
out = []
for spec in sys.argv[1:]:
    name = re.split(r"[<>=!]", spec, 1)[0]
    pinned = spec.split("==", 1)[1] if "==" in spec else None
    try:
        v = metadata.version(name)
        if pinned and v != pinned:
            out.append(spec)
    except metadata.PackageNotFoundError:
        out.append(spec)
print(" ".join(out))
PYEOF
)
if [[ -n "$missing_pip" ]]; then
  log "pip install $missing_pip"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore $missing_pip
fi
log "ok"
