#!/usr/bin/env bash
# Starts or stops a throw-away ZooKeeper for tests and local clusters.
#
#   scripts/zookeeper.sh install          install the Debian package if missing
#   scripts/zookeeper.sh start DIR [PORT] start on 127.0.0.1:PORT (a free one if
#                                         omitted) with data under DIR; prints
#                                         the port once the server serves
#   scripts/zookeeper.sh stop DIR         stop the server started in DIR and wait
#                                         until its port is closed
set -euo pipefail

ZK_BIN=/usr/share/zookeeper/bin/zkServer.sh

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

four_letter() {
    # bash's /dev/tcp avoids needing netcat.
    { exec 3<>"/dev/tcp/127.0.0.1/$1" && printf '%s' "$2" >&3 && timeout 2 cat <&3; } 2>/dev/null || true
}

# `ruok` answers `imok` before the server serves sessions; `srvr` tells.
serving() {
    [ "$(four_letter "$1" ruok)" = imok ] && four_letter "$1" srvr | grep -q '^Mode:'
}

case "${1:-}" in
install)
    if [ ! -x "$ZK_BIN" ]; then
        echo "installing zookeeper (Debian package)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends zookeeper >/dev/null
    fi
    ;;
start)
    dir=${2:?data dir}
    port=${3:-$(free_port)}
    mkdir -p "$dir/data" "$dir/logs"
    cat >"$dir/zoo.cfg" <<CFG
tickTime=500
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
# Every test session comes from 127.0.0.1: no per-address cap.
maxClientCnxns=0
minSessionTimeout=1000
maxSessionTimeout=60000
CFG
    # start-foreground execs java, so $! is the server's pid.
    ZOO_LOG_DIR="$dir/logs" JMXDISABLE=true setsid "$ZK_BIN" start-foreground "$dir/zoo.cfg" \
        >"$dir/logs/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/zk.pid"
    echo "$port" >"$dir/zk.port"
    for _ in $(seq 1 300); do
        if serving "$port"; then
            echo "$port"
            exit 0
        fi
        if ! kill -0 "$(cat "$dir/zk.pid")" 2>/dev/null; then
            echo "zookeeper exited during start-up; see $dir/logs" >&2
            tail -20 "$dir/logs/stdout.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "zookeeper did not start serving on port $port within 30 s" >&2
    exit 1
    ;;
stop)
    dir=${2:?data dir}
    [ -f "$dir/zk.pid" ] || exit 0
    pid=$(cat "$dir/zk.pid")
    port=$(cat "$dir/zk.port")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    # Wait until the port is closed so a restart on it cannot race.
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$dir/zk.pid"
    ;;
*)
    echo "usage: $0 install | start DIR [PORT] | stop DIR" >&2
    exit 2
    ;;
esac
