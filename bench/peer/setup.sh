#!/usr/bin/env bash
# Makes sure the peer (Apache Airflow 2.10, from PyPI) is installed in a
# throw-away virtualenv, cached across runs; prints its python.
#
# requirements.txt pins every package (`pip freeze` of a working install):
# Airflow's own constraints file is not on PyPI, and an unpinned install
# makes pip backtrack through provider releases for a long time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${SLUICE_BENCH_AIRFLOW_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-bench/airflow-venv}
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/airflow" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    echo "installing Apache Airflow into $venv (first run: a few minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    "$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
    cp "$here/requirements.txt" "$stamp"
fi
echo "$venv/bin/python"
