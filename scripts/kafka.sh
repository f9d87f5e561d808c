#!/usr/bin/env bash
# Apache Kafka's own broker for tests, benchmarks and local runs: the jars of
# org.apache.kafka:kafka_2.13 fetched once with Maven into a cache folder, run as a single-node
# KRaft broker+controller on loopback with settings for a one-node test cluster.
#
#   scripts/kafka.sh fetch               # fetches the jars (once); prints their folder
#   scripts/kafka.sh run DIR PORT        # formats DIR (first time) and runs the broker on
#                                        # 127.0.0.1:PORT in the foreground (exec: the caller
#                                        # owns the process; tests kill it to stop the broker)
#   scripts/kafka.sh start DIR PORT      # the same in the background; waits until it answers,
#                                        # writes DIR/broker.pid, logs to DIR/broker.log
#   scripts/kafka.sh stop DIR            # stops the broker started with `start` (SIGTERM, then
#                                        # SIGKILL after 30 s)
#
# DIR keeps the broker's log (topics, offsets, transactions) across restarts: `run` or `start` on
# the same DIR and PORT brings the same cluster back. The controller listens on
# KAFKA_CONTROLLER_PORT when set, else on a free port picked the first time and kept in
# DIR/controller.port for the restarts. KAFKA_HEAP (default "-Xms256m -Xmx768m") sets the JVM heap.
#
# Environment: KAFKA_VERSION (default 4.4.0), PLUGINFLOW_CACHE (default ~/.cache/pluginflow).
set -euo pipefail

version="${KAFKA_VERSION:-4.4.0}"
cache="${PLUGINFLOW_CACHE:-$HOME/.cache/pluginflow}/kafka-$version"
libs="$cache/libs"

fetch() {
    if [ -f "$libs/.complete" ]; then
        return
    fi
    command -v mvn >/dev/null || { echo "scripts/kafka.sh: Maven (mvn) is needed to fetch Apache Kafka" >&2; exit 1; }
    command -v java >/dev/null || { echo "scripts/kafka.sh: Java 17+ is needed to run Apache Kafka" >&2; exit 1; }
    mkdir -p "$cache"
    # A project that depends on nothing but the broker (and a plain SLF4J binding so its log
    # reaches stderr); Maven copies the runtime closure into libs/.
    cat >"$cache/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.pluginflow</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
EOF
    # Into a folder of this call's own, then moved into place: two fetches at once (tests in
    # parallel on a cold cache) cannot mix their files.
    local tmp
    tmp="$(mktemp -d "$cache/libs.XXXXXX")"
    mvn -q -B -f "$cache/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >&2
    touch "$tmp/.complete"
    if [ -f "$libs/.complete" ]; then
        rm -rf "$tmp"
    else
        rm -rf "$libs"
        mv "$tmp" "$libs" 2>/dev/null || rm -rf "$tmp"
    fi
    [ -f "$libs/.complete" ] || { echo "scripts/kafka.sh: fetching Apache Kafka failed" >&2; exit 1; }
}

java_opts() {
    # shellcheck disable=SC2206
    local heap=(${KAFKA_HEAP:--Xms256m -Xmx768m})
    echo "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dorg.slf4j.simpleLogger.defaultLogLevel="${KAFKA_LOG_LEVEL:-warn}" \
        -Dorg.slf4j.simpleLogger.showDateTime=true
}

# Writes DIR/server.properties for PORT and formats DIR/data unless it already holds a cluster.
prepare() {
    local dir="$1" port="$2"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local cport="${KAFKA_CONTROLLER_PORT:-}"
    if [ -z "$cport" ] && [ -f "$dir/controller.port" ]; then
        cport="$(cat "$dir/controller.port")"
    fi
    if [ -z "$cport" ]; then
        cport="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
    echo "$cport" >"$dir/controller.port"
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.flush.interval.messages=9223372036854775807
EOF
    if [ ! -f "$dir/data/meta.properties" ]; then
        local id
        # shellcheck disable=SC2046
        id="$(java $(java_opts) -cp "$libs/*" kafka.tools.StorageTool random-uuid)"
        # shellcheck disable=SC2046
        java $(java_opts) -cp "$libs/*" kafka.tools.StorageTool format \
            -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
            { cat "$dir/format.log" >&2; exit 1; }
    fi
    echo "$dir"
}

# Whether the client port accepts connections. The port opens a moment before the broker has
# registered with its controller; clients retry through that (the tests wait for metadata).
answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

case "${1:-}" in
    fetch)
        fetch
        echo "$libs"
        ;;
    run)
        dir="${2:?usage: scripts/kafka.sh run DIR PORT}"
        port="${3:?usage: scripts/kafka.sh run DIR PORT}"
        fetch
        dir="$(prepare "$dir" "$port")"
        # shellcheck disable=SC2046
        exec java $(java_opts) -cp "$libs/*" kafka.Kafka "$dir/server.properties"
        ;;
    start)
        dir="${2:?usage: scripts/kafka.sh start DIR PORT}"
        port="${3:?usage: scripts/kafka.sh start DIR PORT}"
        fetch
        if answers "$port"; then
            echo "scripts/kafka.sh: something already listens on 127.0.0.1:$port" >&2
            exit 1
        fi
        dir="$(prepare "$dir" "$port")"
        # shellcheck disable=SC2046
        nohup java $(java_opts) -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
            >"$dir/broker.log" 2>&1 &
        echo $! >"$dir/broker.pid"
        for _ in $(seq 1 600); do
            if answers "$port"; then
                echo "Apache Kafka $version on 127.0.0.1:$port (pid $(cat "$dir/broker.pid"), log $dir/broker.log)"
                exit 0
            fi
            if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
                echo "scripts/kafka.sh: the broker exited; its log:" >&2
                tail -n 40 "$dir/broker.log" >&2
                exit 1
            fi
            sleep 0.1
        done
        echo "scripts/kafka.sh: the broker did not listen on $port within 60 s" >&2
        exit 1
        ;;
    stop)
        dir="${2:?usage: scripts/kafka.sh stop DIR}"
        pid="$(cat "$dir/broker.pid" 2>/dev/null || true)"
        [ -n "$pid" ] || { echo "scripts/kafka.sh: no broker.pid in $dir" >&2; exit 1; }
        # Only our broker: a stale pid file may name a process that reused the number.
        if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $(cd "$dir" && pwd)/server.properties"; then
            echo "scripts/kafka.sh: pid $pid is not the broker of $dir (gone already?)" >&2
            rm -f "$dir/broker.pid"
            exit 0
        fi
        kill "$pid" 2>/dev/null || exit 0
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || { rm -f "$dir/broker.pid"; exit 0; }
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/broker.pid"
        ;;
    *)
        echo "usage: scripts/kafka.sh fetch | run DIR PORT | start DIR PORT | stop DIR" >&2
        exit 2
        ;;
esac
