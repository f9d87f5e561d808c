#!/usr/bin/env bash
# Installs the system packages the build needs (libclang-dev for RocksDB's bindings).
set -euo pipefail
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq libclang-dev
fi
