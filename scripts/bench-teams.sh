#!/usr/bin/env bash
# Many teams in one worker: throughput, peak RSS, plugin instances created and evicted with 1,
# 1,000 and 100,000 configuration × team pairs (one configuration for every team, Zipf traffic
# from `gen_events --teams N --visitors 2N`: each visitor belongs to a team drawn with shares
# falling off as 1/rank^1.3, each event is of a visitor picked uniformly), and the resident
# memory of an idle instance. Prints a Markdown table; ratios are against the 1-pair row of the same run.
#
#   scripts/bench-teams.sh                 # 200,000 events per row
#   EVENTS=50000 scripts/bench-teams.sh    # shorter
#
# Each row is one `pluginflow run -w 1` under `/usr/bin/time` (peak RSS is its maximum resident
# set); the plugin is benches/plugins/greet (a config value and a `cache.incr` per event, RocksDB
# state). The 100,000-pair rows run with the default instance budget (2048 MiB of QuickJS heap
# per worker) and with 256 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
EVENTS=${EVENTS:-200000}
work=.cache/bench-teams
mkdir -p "$work"
cargo build --release -j2 -q -p pluginflow -p pluginflow-tests --bin pluginflow --bin gen_events
bin="$CARGO_TARGET_DIR/release/pluginflow"
gen="$CARGO_TARGET_DIR/release/gen_events"
plugin="$(pwd)/benches/plugins/greet"

# config FILE EVENTS_FILE BUDGET_MB
config() {
    cat >"$1" <<EOF
[input]
path = "$(pwd)/$2"
[output]
events = "$(pwd)/$work/out/events.jsonl"
dead_letters = "$(pwd)/$work/out/dead.jsonl"
logs = "$(pwd)/$work/out/logs.jsonl"
[state]
path = "$(pwd)/$work/state"
[runtime]
instance_memory_budget_mb = $3
[[plugins]]
id = "greet"
path = "$plugin"
config = { greeting = "hello" }
EOF
}

# run CONFIG: prints "seconds peak_rss_kib created evicted events_out"
run() {
    rm -rf "$work/state" "$work/out"
    /usr/bin/time -f "TIME %e %M" "$bin" run "$1" -w 1 --no-progress 2>"$work/run.log" >/dev/null || { cat "$work/run.log" >&2; exit 1; }
    local secs rss created evicted out
    secs=$(sed -n 's/^pluginflow summary (\([0-9.]*\) s):.*/\1/p' "$work/run.log")
    rss=$(awk '/^TIME/ { print $3 }' "$work/run.log")
    created=$(awk '/plugin instances:/ { print $3 }' "$work/run.log")
    evicted=$(awk '/plugin instances:/ { print $5 }' "$work/run.log")
    out=$(awk '/events out:/ { print $3 }' "$work/run.log")
    echo "$secs $rss $created $evicted $out"
}

echo "pluginflow $(git rev-parse --short HEAD), $EVENTS events per row, $(nproc) cores"
echo
echo "| configuration × team pairs | teams in the log | instance budget | events/s | vs 1 pair | peak RSS | instances created | evicted |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
floor=""
for row in "1 2048" "1000 2048" "100000 2048" "100000 256"; do
    set -- $row
    teams=$1 budget=$2
    events="$work/events-$EVENTS-$teams.jsonl"
    [ -s "$events" ] || "$gen" --count "$EVENTS" --seed 42 --teams "$teams" --visitors $((teams * 2 > 200 ? teams * 2 : 200)) -o "$events"
    config "$work/run.toml" "$events" "$budget"
    read -r secs rss created evicted out < <(run "$work/run.toml")
    [ "$out" = "$EVENTS" ] || { echo "only $out of $EVENTS events written" >&2; exit 1; }
    rate=$(awk -v n="$EVENTS" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
    [ -n "$floor" ] || floor=$rate
    ratio=$(awk -v r="$rate" -v f="$floor" 'BEGIN { printf "%.2f×", r / f }')
    seen=$(grep -o '"team_id":[0-9]*' "$events" | sort -u | wc -l)
    printf "| %s | %s | %s MiB | %s | %s | %s MiB | %s | %s |\n" "$teams" "$seen" "$budget" "$rate" "$ratio" "$((rss / 1024))" "$created" "$evicted"
done

# Idle instances: one event for each of T teams (nothing evicted), then the run ends; the peak
# RSS difference between 2,001 and 1 teams, per instance.
idle() {
    local teams=$1 f="$work/idle-$1.jsonl"
    [ -s "$f" ] || awk -v t="$teams" 'BEGIN { for (i = 1; i <= t; i++) printf "{\"uuid\":\"u%d\",\"event\":\"e\",\"team_id\":%d,\"properties\":{}}\n", i, i }' >"$f"
    config "$work/idle.toml" "$f" 0
    run "$work/idle.toml" | awk '{ print $2 }'
}
one=$(idle 1)
many=$(idle 2001)
echo
echo "Resident memory per idle instance (peak RSS, 2,001 teams minus 1 team, over 2,000): $(( (many - one) / 2000 )) KiB"
