#!/usr/bin/env bash
# The time from a plugin configuration change (`[plugin_configs] dir`) to its first effect: a
# followed log runs one configuration; the script rewrites its file with a new version, then
# appends an event every 10 ms until one comes out stamped by the new version. Prints each
# change's time (file written → first event stamped with it, read back from the output file) and
# the minimum, median and maximum.
#
#   scripts/bench-config-change.sh          # 20 changes
#   CHANGES=50 scripts/bench-config-change.sh
#
# What it includes: the folder is looked at every 500 ms, the file is checked (plugin compiled,
# one trial instance), the change waits for the next epoch boundary, the old instance is torn
# down and the new one made on the next event, and the output is flushed when the log is caught
# up (every 50 ms when idle).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
CHANGES=${CHANGES:-20}
cargo build --release -j2 -q -p pluginflow --bin pluginflow
bin="$CARGO_TARGET_DIR/release/pluginflow"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/stamp" "$work/configs"
echo '{"name":"stamp","config":[{"key":"v","type":"string"}]}' >"$work/stamp/plugin.json"
echo "exports.processEvent = (e, { config }) => { e.properties.v = config.v; return e }" >"$work/stamp/index.js"
conf() { printf 'id = "a"\npath = "../stamp"\nconfig = { v = "%s" }\n' "$1" >"$work/configs/a.toml.tmp" && mv "$work/configs/a.toml.tmp" "$work/configs/a.toml"; }
conf v0
: >"$work/e.jsonl"
cat >"$work/pf.toml" <<EOF
[input]
path = "e.jsonl"
follow = true
[output]
events = "out/e.jsonl"
dead_letters = "out/d.jsonl"
logs = "out/l.jsonl"
[state]
memory = true
[plugin_configs]
dir = "configs"
EOF
"$bin" run "$work/pf.toml" --no-progress 2>"$work/stderr.log" &
pid=$!
n=0
event() { printf '{"uuid":"u%d","event":"e","team_id":1,"properties":{}}\n' "$n" >>"$work/e.jsonl"; n=$((n + 1)); }
# Waits until an output event carries version $1, appending an event every 10 ms.
wait_for() {
    local deadline=$(($(date +%s) + 60))
    until grep -q "\"v\":\"$1\"" "$work/out/e.jsonl" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "version $1 never showed" >&2; cat "$work/stderr.log" >&2; exit 1; }
        event
        sleep 0.01
    done
}
wait_for v0
times=()
for i in $(seq 1 "$CHANGES"); do
    start=$(date +%s%N)
    conf "v$i"
    wait_for "v$i"
    end=$(date +%s%N)
    times+=($(((end - start) / 1000000)))
done
kill -TERM "$pid"
wait "$pid" || true
printf '%s\n' "${times[@]}" | sort -n | awk -v changes="$CHANGES" '
    { t[NR] = $1 }
    END { printf "pluginflow configuration change to first effect, %d changes: min %d ms, median %d ms, max %d ms\n", changes, t[1], t[int((NR + 1) / 2)], t[NR] }'
echo "each (ms): ${times[*]}"
