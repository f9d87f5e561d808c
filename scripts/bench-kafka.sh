#!/usr/bin/env bash
# The Kafka rows of BENCHMARKS.md, against Apache Kafka (scripts/kafka.sh) on loopback: the raw
# librdkafka consume→produce loop as the issue names it (librdkafka's defaults, no key); the
# floors, the same loop with pluginflow's producer setting (idempotent) and consumer prefetch
# (`fetch.queue.backoff.ms`) — without keys, like
# pluginflow with `key_field = ""`, and forwarding each message's key, like pluginflow keyed by
# `distinct_id` (the input is loaded keyed by `distinct_id`, so the loop partitions its output
# the same way without reading the event); pluginflow passing events through unkeyed and keyed,
# and pluginflow with the 3-plugin chain (benches/plugins greet, screen, flatten; keyed); and
# (row `noidem`, not run by default) pluginflow unkeyed with the raw loop's producer (not
# idempotent), against the raw loop. Each
# reads the same input topic (4 partitions) from the start into a fresh output topic, one worker
# or thread, in alternating rounds. Each run is timed by its output messages' create timestamps, first to last
# (`kafka_bench count`), so process start-up and the group's first assignment are left out alike.
#
#   scripts/bench-kafka.sh                 # 100,000 events, 3 rounds
#   KAFKA_N=200000 ROUNDS=5 scripts/bench-kafka.sh
#   ROWS="raw idem idemkeyed unkeyed passthrough" scripts/bench-kafka.sh   # leave the chain out
#   TIMES=append scripts/bench-kafka.sh    # time by the broker's append timestamps (see below)
#   BASE_BIN=/tmp/pluginflow-before ROWS="idem unkeyed baseunkeyed" scripts/bench-kafka.sh
#                                          # a change's before and after in one run: the rows
#                                          # baseunkeyed and basepassthrough run BASE_BIN
#
# TIMES=create (the default) times each run by its messages' create timestamps: when the
# system handed each message to librdkafka, so what waits in a producer's queue at the end
# counts as sent. TIMES=append makes the output topics with `message.timestamp.type =
# LogAppendTime`: the span is then first to last message written by the broker, delivery included.
#
# Prints a Markdown table with each row's median, its ratio to its floor's median (the
# idempotent raw loop without keys for unkeyed rows, with keys forwarded for keyed rows), and
# the median of its per-round ratios to that floor (rows of one round run back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
N=${KAFKA_N:-100000}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-raw idem idemkeyed unkeyed passthrough chain3}
TIMES=${TIMES:-create}
case $TIMES in
    create) APPEND=() ;;
    append) APPEND=(--append-time) ;;
    *) echo "bench-kafka.sh: TIMES must be create or append, not '$TIMES'" >&2; exit 2 ;;
esac
WORK=$(mktemp -d)
trap 'scripts/kafka.sh stop "$WORK/broker" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

scripts/setup.sh
cargo build --release -j2 -p pluginflow -p pluginflow-benches -p pluginflow-tests --bins >&2
BIN=$CARGO_TARGET_DIR/release
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KB=127.0.0.1:$PORT
scripts/kafka.sh start "$WORK/broker" "$PORT" >&2
"$BIN/gen_events" --count "$N" --seed 42 --teams 3 -o "$WORK/events.jsonl"
"$BIN/kafka_bench" create --bootstrap "$KB" --topic bench-in --partitions 4
"$BIN/kafka_bench" load --bootstrap "$KB" --topic bench-in --events "$WORK/events.jsonl" --key-field distinct_id

source scripts/kafka-bench-config.sh
# The raw loop's producer settings where pluginflow's differ (kafka_bench's producer(); the
# rest are librdkafka's defaults in both). Its consumer's prefetch backoff (librdkafka's 1 s)
# is not copied: it starves pluginflow's source between fetches (config.rs), 0.53x the raw loop
# in a 7-round run, against 0.69x with pluginflow's 20 ms.
RAW_PRODUCER=$'[kafka.producer]\n"enable.idempotence" = "false"\n"queue.buffering.max.messages" = "200000"\n'

row() { # tag round
    local tag=$1 r=$2 out="out-$1-$2"
    "$BIN/kafka_bench" create --bootstrap "$KB" --topic "$out" --partitions 4 "${APPEND[@]}"
    "$BIN/kafka_bench" create --bootstrap "$KB" --topic "$out-dead" --partitions 1 "${APPEND[@]}"
    case $tag in
        raw) "$BIN/kafka_bench" loop --bootstrap "$KB" --input bench-in --group "raw-$r" --count "$N" --output "$out" 2>>"$WORK/log" ;;
        idem) "$BIN/kafka_bench" loop --bootstrap "$KB" --input bench-in --group "idem-$r" --count "$N" --output "$out" --idempotent --prefetch 2>>"$WORK/log" ;;
        idemkeyed) "$BIN/kafka_bench" loop --bootstrap "$KB" --input bench-in --group "idemk-$r" --count "$N" --output "$out" --idempotent --keyed --prefetch 2>>"$WORK/log" ;;
        passthrough) "$BIN/pluginflow" run --no-progress -w 1 "$(pipeline_config "pf-$r" bench-in "$out" distinct_id)" 2>>"$WORK/log" ;;
        unkeyed) "$BIN/pluginflow" run --no-progress -w 1 "$(pipeline_config "pfu-$r" bench-in "$out" "")" 2>>"$WORK/log" ;;
        # pluginflow with the raw loop's producer (not idempotent), against the `raw` row.
        noidem) "$BIN/pluginflow" run --no-progress -w 1 "$(PIPELINE_KAFKA_EXTRA="$RAW_PRODUCER" pipeline_config "pfn-$r" bench-in "$out" "")" 2>>"$WORK/log" ;;
        # pluginflow with producer settings of one's own (TUNED_PRODUCER, librdkafka keys under
        # [kafka.producer]), against the `raw` row: for trying settings.
        tuned) "$BIN/pluginflow" run --no-progress -w 1 "$(PIPELINE_KAFKA_EXTRA="${TUNED_PRODUCER:?tuned needs TUNED_PRODUCER}" pipeline_config "pft-$r" bench-in "$out" "")" 2>>"$WORK/log" ;;
        baseunkeyed) "${BASE_BIN:?baseunkeyed needs BASE_BIN}" run --no-progress -w 1 "$(pipeline_config "bpfu-$r" bench-in "$out" "")" 2>>"$WORK/log" ;;
        basepassthrough) "${BASE_BIN:?basepassthrough needs BASE_BIN}" run --no-progress -w 1 "$(pipeline_config "bpf-$r" bench-in "$out" distinct_id)" 2>>"$WORK/log" ;;
        chain3) "$BIN/pluginflow" run --no-progress -w 1 "$(pipeline_config "chain-$r" bench-in "$out" distinct_id "$ROOT/benches/plugins/greet" "$ROOT/benches/plugins/screen" "$ROOT/benches/plugins/flatten")" 2>>"$WORK/log" ;;
        *) echo "bench-kafka.sh: unknown row '$tag'" >&2; exit 2 ;;
    esac
    "$BIN/kafka_bench" count --bootstrap "$KB" --topic "$out" --quiet-ms 3000 --json "$WORK/$tag.$r.json" >/dev/null
    echo "bench-kafka: $tag round $r: $(cat "$WORK/$tag.$r.json")" >&2
}

for r in $(seq 1 "$ROUNDS"); do
    for tag in $ROWS; do
        row "$tag" "$r"
    done
done

python3 - "$WORK" "$ROUNDS" "$N" "$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)" "$ROWS" "$TIMES" <<'PY'
import json, statistics, sys, glob, os
work, rounds, n, rev, tags, times = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split(), sys.argv[6]
rows = {}
for tag in tags:
    runs = [json.load(open(os.path.join(work, f"{tag}.{r}.json"))) for r in range(1, rounds + 1)]
    rows[tag] = (statistics.median(x["messages_per_s"] for x in runs), [x["messages_per_s"] for x in runs], [x["messages"] for x in runs])
names = {"baseunkeyed": "BASE_BIN, no plugins, unkeyed", "basepassthrough": "BASE_BIN, no plugins, keyed by distinct_id", "raw": "raw librdkafka loop, librdkafka's defaults, no key", "idem": "raw loop, idempotent producer, pluginflow's prefetch, no key (floor)", "idemkeyed": "raw loop, idempotent producer, pluginflow's prefetch, keys forwarded (keyed floor)", "unkeyed": "pluginflow, no plugins, unkeyed", "noidem": "pluginflow, no plugins, unkeyed, the raw loop's producer: not idempotent (floor: the raw loop)", "tuned": "pluginflow, no plugins, unkeyed, TUNED_PRODUCER (floor: the raw loop)", "passthrough": "pluginflow, no plugins, keyed by distinct_id", "chain3": "pluginflow, greet+screen+flatten, keyed"}
floors = {"baseunkeyed": "idem", "basepassthrough": "idemkeyed", "raw": "idem", "idem": "idem", "idemkeyed": "idemkeyed", "unkeyed": "idem", "noidem": "raw", "tuned": "raw", "passthrough": "idemkeyed", "chain3": "idemkeyed"}
clock = "the broker's append timestamps" if times == "append" else "the producers' create timestamps"
print(f"Apache Kafka {os.environ.get('KAFKA_VERSION', '4.4.0')} on loopback, {n} events, {rounds} rounds, timed by {clock}, git `{rev}`, command `scripts/bench-kafka.sh`.\n")
print("| row | median messages/s | vs its floor | per round vs its floor, median | runs (messages/s) | messages out |")
print("|---|---:|---:|---:|---|---|")
for tag, (median, runs, counts) in rows.items():
    floor = f"{median / rows[floors[tag]][0]:.2f}×" if floors[tag] in rows else "–"
    # Each round runs every row once, one after another: a row against its floor in the same
    # round sees the same machine, so the median of those ratios moves less than the ratio of
    # medians when the machine's load drifts.
    paired = f"{statistics.median(x / f for x, f in zip(runs, rows[floors[tag]][1])):.2f}×" if floors[tag] in rows else "–"
    print(f"| {names[tag]} | {median:,.0f} | {floor} | {paired} | {', '.join(f'{x:,.0f}' for x in runs)} | {', '.join(map(str, sorted(set(counts))))} |")
PY
