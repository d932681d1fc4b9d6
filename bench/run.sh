#!/usr/bin/env bash
# Sluice's benchmark suite in one command:
#
#   bench/run.sh                 every scenario (peer included: takes minutes)
#   bench/run.sh chain40         one scenario: chain40 | wide | cron | stop | footprint | api | peer
#   bench/run.sh wide --wide-scale 0.1    options go to sluice-bench (see --help)
#
# It installs ZooKeeper if missing and starts a private one on a free port,
# uses the machine's PostgreSQL on 127.0.0.1:5432 (a fresh database per
# deployment, dropped after), installs Apache Airflow for the peer into a
# cached virtualenv, builds release, runs the scenarios, prints their tables
# and writes bench/results/<scenario>.json. It stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:-all}
shift || true

scripts/zookeeper.sh install
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
pg_isready -q -h 127.0.0.1 -p 5432

if [ "$scenario" = all ] || [ "$scenario" = peer ]; then
    bench/peer/setup.sh >/dev/null
fi

cargo build --release --locked -p sluice -p sluice-bench

zk_dir=$(mktemp -d -t sluice-bench-zk.XXXXXX)
cleanup() {
    scripts/zookeeper.sh stop "$zk_dir" || true
    rm -rf "$zk_dir"
}
trap cleanup EXIT
zk_port=$(scripts/zookeeper.sh start "$zk_dir")
export SLUICE_TEST_ZK="127.0.0.1:$zk_port"
export SLUICE_TEST_PG="${SLUICE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
target/release/sluice-bench --json-out bench/results "$scenario" "$@"
