#!/usr/bin/env bash
# Runs the plugin host's out-of-memory tests (operators/tests/oom.rs) under valgrind's memcheck:
# any invalid read or write, use of freed memory or corrupted malloc list while QuickJS runs out
# of memory fails the run. `scripts/test.sh` calls it after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"

if ! command -v valgrind >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq valgrind
fi

# The test executable cargo builds for operators/tests/oom.rs.
bin=$(cargo test --release -j2 -p pluginflow-operators --test oom --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "oom":
        print(m["executable"])')
if [ -z "$bin" ]; then
    echo "memcheck: cannot find the oom test executable" >&2
    exit 1
fi
echo "memcheck: $bin"
# Leaks are not errors here (a test process ends without freeing); invalid accesses are.
valgrind --quiet --error-exitcode=97 --leak-check=no --track-origins=no "$bin" --test-threads=1
