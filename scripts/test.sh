#!/usr/bin/env bash
# Runs Sluice's whole test suite: unit tests and the shared storage and
# registry suites against a real PostgreSQL and a real ZooKeeper.
#
# It installs ZooKeeper if missing, starts one on a free local port with a
# throw-away data dir, makes sure PostgreSQL is up, runs every test of the
# workspace, and stops what it started. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/zookeeper.sh install

# PostgreSQL: the machine's cluster on 127.0.0.1:5432 (trust auth).
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
pg_isready -h 127.0.0.1 -p 5432

zk_dir=$(mktemp -d -t sluice-zk.XXXXXX)
cleanup() {
    scripts/zookeeper.sh stop "$zk_dir" || true
    rm -rf "$zk_dir"
}
trap cleanup EXIT
zk_port=$(scripts/zookeeper.sh start "$zk_dir")
echo "zookeeper is up on 127.0.0.1:$zk_port (data in $zk_dir)"

export SLUICE_TEST_ZK="127.0.0.1:$zk_port"
export SLUICE_TEST_PG="${SLUICE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"
export RUST_BACKTRACE=1

cargo test --workspace --locked "$@"
