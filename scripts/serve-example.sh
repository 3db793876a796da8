#!/usr/bin/env bash
# Serves the reference app (examples/shop, Flask) on weir, from a fresh machine:
# installs what the app needs (Flask, PyMySQL), builds weir (release), and runs
#   weir serve --app app:app --chdir examples/shop --workers 4 --listen 127.0.0.1:8000
# SQLite is the default database (examples/shop/shop.db, made on first use); set
# DATABASE_URL=mysql://user:pass@host:port/db for MySQL/MariaDB (scripts/mariadb.sh starts
# a private one). Extra arguments go to `weir serve` (e.g. --workers 8 --harakiri 30).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-link.sh  # libpython linked statically when available
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r examples/shop/requirements.txt
cargo build --release -q -p weir
echo "weir: serving examples/shop on http://127.0.0.1:8000 (try /hello, /items, /slow, /boom); Ctrl-C stops" >&2
exec target/release/weir serve --app app:app --chdir examples/shop --workers 4 --listen 127.0.0.1:8000 "$@"
