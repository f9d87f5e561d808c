#!/usr/bin/env bash
# Builds the binary to ship: dist/pluginflow without debug information, and its debug
# information beside it in dist/pluginflow.debug (linked by a .gnu_debuglink section, so gdb and
# perf find it when it sits in the same folder). The release build keeps line tables for
# pluginflow's own crates only (Cargo.toml), about 72 MiB in all.
#
#   scripts/dist.sh        # prints both sizes
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
scripts/setup.sh
cargo build --release -j2 -p pluginflow
mkdir -p dist
built="$CARGO_TARGET_DIR/release/pluginflow"
objcopy --only-keep-debug "$built" dist/pluginflow.debug
objcopy --strip-debug --strip-unneeded "$built" dist/pluginflow.tmp
(cd dist && objcopy --add-gnu-debuglink=pluginflow.debug pluginflow.tmp && mv pluginflow.tmp pluginflow)
dist/pluginflow --version >/dev/null
size() { du -m "$1" | cut -f1; }
echo "dist/pluginflow: $(size dist/pluginflow) MiB (debug information in dist/pluginflow.debug, $(size dist/pluginflow.debug) MiB; the build's own binary is $(size "$built") MiB)"
