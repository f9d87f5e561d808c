#!/usr/bin/env bash
# Checks the deployment recipes in deploy/ with the tools this machine has:
# - deploy/pluginflow.service with `systemd-analyze verify` (its ExecStart pointed at the binary
#   scripts/dist.sh builds);
# - deploy/Dockerfile built and `pluginflow --version` run in it, where a Docker daemon answers.
# A tool that is missing is reported, not faked.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/dist.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

if command -v systemd-analyze >/dev/null; then
    sed -e "s|/usr/local/bin/pluginflow|$PWD/dist/pluginflow|" \
        -e "s|^User=.*|User=root|" -e "s|^Group=.*|Group=root|" \
        deploy/pluginflow.service >"$work/pluginflow.service"
    # verify exits 0 on lines it could not parse (it ignores them): any output is a failure.
    if out=$(systemd-analyze verify "$work/pluginflow.service" 2>&1) && [ -z "$out" ]; then
        echo "deploy-check: systemd unit: verified"
    else
        echo "deploy-check: systemd unit: systemd-analyze verify says:" >&2
        echo "$out" >&2
        status=1
    fi
else
    echo "deploy-check: systemd unit: not checked (no systemd-analyze here)"
fi

if docker info >/dev/null 2>&1; then
    docker build -q -f deploy/Dockerfile -t pluginflow:check dist/ >/dev/null
    version=$(docker run --rm pluginflow:check --version)
    echo "deploy-check: container image: built; it runs: $version"
else
    echo "deploy-check: container image: not built (no Docker daemon reachable here)"
fi
exit "$status"
