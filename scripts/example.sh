#!/usr/bin/env bash
# Runs the main job on the example: examples/events.jsonl through the example plugins,
# JSON lines into out/, plugin state in .state/. Extra arguments go to `pluginflow run`
# (for example `-w 2`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
scripts/setup.sh
cargo build --release -j2 -p pluginflow
exec "$CARGO_TARGET_DIR/release/pluginflow" run examples/pipeline.toml "$@"
