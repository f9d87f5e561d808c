#!/usr/bin/env bash
# Instruction counts of the Kafka path: the raw librdkafka consume→produce loop (librdkafka's
# defaults; then with an idempotent producer, as pluginflow's, without keys and forwarding the
# input's keys: the input is loaded keyed by distinct_id) against pluginflow passing events
# through (unkeyed, and keyed by distinct_id), every thread of each
# process under valgrind's callgrind, against one Apache Kafka broker (scripts/kafka.sh) on
# loopback. Each runs over SMALL and then LARGE events already in a 4-partition topic; the
# difference over the LARGE - SMALL extra events is the per-message cost (start-up, the group's
# first assignment and the idle wait at the end cancel out). Stable where wall-clock rounds are
# not (they move by 2× on these machines). Prints a Markdown table.
#
#   scripts/kafka-instructions.sh              # 2,000 and 20,000 events
#   SMALL=1000 LARGE=10000 scripts/kafka-instructions.sh
#   KEEP=/tmp/prof scripts/kafka-instructions.sh   # also keep callgrind's files for callgrind_annotate
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
SMALL=${SMALL:-2000}
LARGE=${LARGE:-20000}
WORK=$(mktemp -d)
trap 'scripts/kafka.sh stop "$WORK/broker" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

scripts/setup.sh
command -v valgrind >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && s=sudo || s=""; $s apt-get update -qq; $s apt-get install -y -qq valgrind; }
cargo build --release -j2 -p pluginflow -p pluginflow-benches -p pluginflow-tests --bins >&2
BIN=$CARGO_TARGET_DIR/release
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KB=127.0.0.1:$PORT
scripts/kafka.sh start "$WORK/broker" "$PORT" >&2
for n in "$SMALL" "$LARGE"; do
    "$BIN/gen_events" --count "$n" --seed 42 --teams 3 -o "$WORK/events-$n.jsonl"
    "$BIN/kafka_bench" create --bootstrap "$KB" --topic "in-$n" --partitions 4
    "$BIN/kafka_bench" load --bootstrap "$KB" --topic "in-$n" --events "$WORK/events-$n.jsonl" --key-field distinct_id
done

source scripts/kafka-bench-config.sh

# count TAG N: callgrind's total for one run of row TAG over N events.
count() {
    local tag=$1 n=$2 name="$1-$2"
    "$BIN/kafka_bench" create --bootstrap "$KB" --topic "$name-out" --partitions 4
    "$BIN/kafka_bench" create --bootstrap "$KB" --topic "$name-out-dead" --partitions 1
    local cmd
    case $tag in
        raw) cmd=("$BIN/kafka_bench" loop --bootstrap "$KB" --input "in-$n" --group "$name" --count "$n" --output "$name-out") ;;
        idem) cmd=("$BIN/kafka_bench" loop --bootstrap "$KB" --input "in-$n" --group "$name" --count "$n" --output "$name-out" --idempotent) ;;
        idemkeyed) cmd=("$BIN/kafka_bench" loop --bootstrap "$KB" --input "in-$n" --group "$name" --count "$n" --output "$name-out" --idempotent --keyed) ;;
        unkeyed) cmd=("$BIN/pluginflow" run --no-progress -w 1 "$(pipeline_config "$name" "in-$n" "$name-out" "")") ;;
        keyed) cmd=("$BIN/pluginflow" run --no-progress -w 1 "$(pipeline_config "$name" "in-$n" "$name-out" distinct_id)") ;;
    esac
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "${cmd[@]}" >"$WORK/$name.log" 2>&1 \
        || { echo "kafka-instructions.sh: $name failed:" >&2; tail -20 "$WORK/$name.log" >&2; exit 1; }
    [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$WORK/$name.out" "$KEEP/"
    awk '/^totals:/ {print $2}' "$WORK/$name.out"
}

echo "Apache Kafka on loopback, callgrind over every thread, $SMALL and $LARGE events (~1.3 KB each), git \`$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)\`, command \`scripts/kafka-instructions.sh\`."
echo
echo "| process | $SMALL events | $LARGE events | per message | vs raw loop |"
echo "|---|---:|---:|---:|---:|"
declare -A NAMES=([raw]="raw librdkafka loop (kafka_bench loop)" [idem]="raw loop, idempotent producer (loop --idempotent)" [idemkeyed]="raw loop, idempotent, input keys forwarded (loop --idempotent --keyed)" [unkeyed]="pluginflow passthrough, unkeyed" [keyed]="pluginflow passthrough, keyed by distinct_id")
raw_per=""
for tag in raw idem idemkeyed unkeyed keyed; do
    small=$(count "$tag" "$SMALL")
    large=$(count "$tag" "$LARGE")
    per=$(( (large - small) / (LARGE - SMALL) ))
    [ -z "$raw_per" ] && raw_per=$per
    python3 -c "import sys; n, s, l, p, r = sys.argv[1:]; s, l, p, r = map(int, (s, l, p, r)); print(f'| {n} | {s:,} | {l:,} | {p:,} | {p / r:.1f}× |')" \
        "${NAMES[$tag]}" "$small" "$large" "$per" "$raw_per"
done
