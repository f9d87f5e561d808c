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
# Formatting first: it takes a second and fails fast (rustfmt.toml holds the house style).
cargo fmt --all --check
scripts/fetch-test-data.sh
# Apache Kafka's broker for the Kafka tests (each test starts its own through scripts/kafka.sh):
# its jars are fetched with Maven once, into ~/.cache/pluginflow.
scripts/kafka.sh fetch >/dev/null

# Tests run in the release profile: the same compiled C/C++ dependencies as the binary. The
# output is kept to print how long the Kafka tests took (their binaries are named kafka_*).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$(date +%s)
cargo test --release -j2 --workspace 2>&1 | tee "$log"
awk -v total=$(( $(date +%s) - started )) '
    /Running tests\/kafka_/ { kafka = 1; next }
    /Running / { kafka = 0 }
    kafka && /test result:/ { for (i = 1; i <= NF; i++) if ($i == "in") { t = $(i + 1); sub(/s$/, "", t); sum += t } }
    END { printf "Kafka tests (Apache Kafka, scripts/kafka.sh): %.0f s of the %d s of cargo test\n", sum, total }
' "$log"
# The conformance suite's count against Node (the test itself requires 98%).
cargo test --release -j2 -p pluginflow-tests --test conformance -- --nocapture 2>/dev/null | grep '^conformance vs Node'
# Lints, after the tests so that the compiled C/C++ dependencies are shared (about a minute warm).
cargo clippy --release -j2 --workspace --all-targets -- -D warnings
# The plugin host's out-of-memory tests again, under valgrind's memcheck (about 2 minutes).
scripts/memcheck.sh
# The deployment recipes in deploy/ (systemd unit verified; the container image built where a
# Docker daemon answers).
scripts/deploy-check.sh
