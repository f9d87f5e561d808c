#!/usr/bin/env bash
# Installs the system packages the build and the tests need: libclang-dev for RocksDB's
# bindings; a Java runtime and Maven for Apache Kafka's broker (scripts/kafka.sh); Node, the
# oracle of the conformance suite (tests/tests/conformance.rs), and npm; Redis's server for the
# tests of `[state] redis` (each test starts its own on a free loopback port).
set -euo pipefail
missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
# npm installs TypeScript's compiler for the module-loading test (scripts/fetch-test-data.sh).
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
