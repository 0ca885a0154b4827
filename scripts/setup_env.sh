#!/usr/bin/env bash
# Create/refresh the project's virtual environment in .venv (idempotent, quick when nothing changed).
#   - Debian packages: libusb-1.0-0 (open3d-cpu needs it), installed with apt-get when missing (root).
#   - Python packages: requirements.txt (pinned), requirements-nodeps.txt (--no-deps), this package (-e).
# Re-runs skip pip when the requirement files have not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

need_apt=()
for pkg in libusb-1.0-0; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] apt-get install ${need_apt[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "[setup] warning: missing Debian packages ${need_apt[*]} (run as root or install them yourself)" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi

stamp="$VENV/.distilvpr-requirements.sha256"
want=$(cat requirements.txt requirements-nodeps.txt setup.py | sha256sum | cut -d' ' -f1)
# The stamp alone is not enough: the package's own editable install (and its `distilvpr` command) may have
# been removed since (e.g. by a `pip install` of distilvpr_ros elsewhere into this environment).
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/distilvpr" ]; then
    echo "[setup] installing Python dependencies into $VENV (first time: a few minutes)"
    "$VENV/bin/pip" install -qq --upgrade pip
    "$VENV/bin/pip" install -qq -r requirements.txt
    "$VENV/bin/pip" install -qq --no-deps -r requirements-nodeps.txt
    "$VENV/bin/pip" install -qq --no-deps -e .
    echo "$want" > "$stamp"
fi
