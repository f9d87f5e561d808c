#!/usr/bin/env bash
# Makes QuickJS's profile for profile-guided optimisation, vendor/rquickjs-sys/pgo/.
#
#   scripts/pgo.sh
#
# Builds pluginflow with an instrumented engine (PLUGINFLOW_PGO_GENERATE=1: the build writes
# vendor/rquickjs-sys/pgo/stamp), runs the training job, which writes its counts there (one
# .gcda file a QuickJS source), then rebuilds normally, which now compiles the engine with them.
# Run it after any change to QuickJS's sources (vendor/rquickjs-sys/quickjs/), a compiler
# upgrade or a change of optimisation level: a build whose stamp differs uses no profile and
# says so in a cargo warning, and scripts/instructions.sh will show the engine's counts rise.
#
# The training job is the example pipeline's plugins (examples/plugins: a cache counter, a
# filter, a flattener, the GeoIP enricher without a database) over 20,000 generated events, one
# worker, written to a scratch folder: the work a PostHog plugin chain does per event. It never
# reads the benchmark's peer plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pgo=vendor/rquickjs-sys/pgo
rm -f "$pgo"/*.gcda "$pgo"/stamp
PLUGINFLOW_PGO_GENERATE=1 cargo build --release -j2 -p pluginflow -p pluginflow-tests --bin pluginflow --bin gen_events
BIN="$CARGO_TARGET_DIR/release"
"$BIN/gen_events" --count 20000 --seed 11 --teams 3 -o "$work/events.jsonl"
root=$(pwd)
cat >"$work/train.toml" <<EOF
[input]
path = "$work/events.jsonl"

[output]
events = "$work/out/events.jsonl"
dead_letters = "$work/out/dead-letters.jsonl"
logs = "$work/out/logs.jsonl"
app_metrics = "$work/out/app-metrics.jsonl"

[state]
path = "$work/state"

[[plugins]]
id = "hello"
path = "$root/examples/plugins/hello-counter"
order = 1

[[plugins]]
id = "filter"
path = "$root/examples/plugins/property-filter"
order = 2
config = { dropEvents = "\$feature_flag_called,\$web_vitals", mode = "remove" }

[[plugins]]
id = "flatten"
path = "$root/examples/plugins/flattener"
order = 3

[[plugins]]
id = "geoip"
path = "$root/examples/plugins/geoip-enricher"
order = 4
EOF
"$BIN/pluginflow" run "$work/train.toml" -w 1
for f in quickjs libregexp libunicode dtoa; do
    [ -s "$pgo/$f.gcda" ] || { echo "pgo.sh: the training run wrote no $pgo/$f.gcda" >&2; exit 1; }
done
cargo build --release -j2 -p pluginflow -p pluginflow-benches -p pluginflow-tests
echo "pgo.sh: profile written to $pgo/ ($(du -sh "$pgo" | cut -f1))"
