#!/usr/bin/env bash
# Runs every benchmark in one go and writes BENCHMARKS.md: floors, pluginflow (the pipeline
# binary and the in-process harness), the Node peer (PostHog's old Babel + vm2 path) on the same
# log and chains, RSS per plugin instance, and the criterion micro-benches.
#
#   scripts/bench.sh                 # the 100k-event suite (the core), ~15 minutes on 2 cores
#   scripts/bench.sh --1m            # also the 1M-event runs (pluginflow and the floors; ~3 GB log)
#   scripts/bench.sh --no-criterion  # skip the criterion benches
#   scripts/bench.sh --report-only   # rewrite BENCHMARKS.md from the last results
#
# Environment: REPEAT (runs per pluginflow/floor row, median reported; default 3),
# PEER_REPEAT (runs per Node row; default 1), BENCH_SECONDS (criterion time per bench; 2),
# JOBS (cargo -j; 2), CARGO_TARGET_DIR (default ~/.cache/pluginflow/target).
#
# Every ratio in the report is computed from rows of the same run. Work files live in
# .cache/bench (gitignored): logs, configs, outputs, results/*.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

WITH_1M=0
CRITERION=1
REPORT_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --1m) WITH_1M=1 ;;
        --no-criterion) CRITERION=0 ;;
        --report-only) REPORT_ONLY=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
JOBS=${JOBS:-2}
REPEAT=${REPEAT:-3}
PEER_REPEAT=${PEER_REPEAT:-1}
export BENCH_SECONDS=${BENCH_SECONDS:-2}
SHARED=$(cd "$ROOT/../shared" && pwd)
WORK=$ROOT/.cache/bench
RES=$WORK/results
PEER=$ROOT/.cache/peer
PEER_PLUGINS=$SHARED/peer/plugins
GEOIP=$ROOT/.cache/GeoLite2-City.mmdb
BIN=$CARGO_TARGET_DIR/release/pluginflow
HARNESS=$CARGO_TARGET_DIR/release/throughput
SIZES=(100000)
[ "$WITH_1M" = 1 ] && SIZES+=(1000000)

log() { echo "bench: $(date -u +%H:%M:%S) $*" >&2; }

# Samples the 1-minute load average every 5 s while the suite runs, for the machine notes.
sample_load() {
    while true; do
        echo "$(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/load.txt"
        sleep 5
    done
}

if [ "$REPORT_ONLY" = 0 ]; then
    mkdir -p "$WORK/out" "$WORK/configs" "$WORK/state"
    rm -rf "$RES" && mkdir -p "$RES"
    sample_load &
    LOAD_PID=$!
    trap 'kill $LOAD_PID 2>/dev/null || true' EXIT

    # ------------------------------------------------------------------ inputs and builds
    for n in "${SIZES[@]}"; do
        if [ ! -s "$WORK/events-$n.jsonl" ]; then
            log "generating $n events"
            python3 "$SHARED/tools/gen-events.py" --count "$n" --seed 42 --teams 3 -o "$WORK/events-$n.jsonl"
        fi
    done
    [ -s "$GEOIP" ] || scripts/fetch-test-data.sh
    if [ ! -d "$PEER/node_modules" ]; then
        log "copying the Node peer to $PEER and installing it"
        rm -rf "$PEER" && mkdir -p "$(dirname "$PEER")" && cp -r "$SHARED/peer" "$PEER"
        (cd "$PEER" && npm ci --no-audit --no-fund >/dev/null)
    fi
    # The same plugin code runs in both systems: the peer's copy must equal the shared one.
    diff -r "$SHARED/peer/plugins" "$PEER/plugins" >/dev/null || { echo "bench: $PEER/plugins differs from $SHARED/peer/plugins" >&2; exit 1; }
    log "building (release, -j$JOBS)"
    cargo build --release -j"$JOBS" -p pluginflow -p pluginflow-benches --bins 2>&1 | tail -n 2 >&2

    # ------------------------------------------------------------------ machine notes
    {
        echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)"
        echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
        echo "cores=$(nproc)"
        echo "mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
        echo "kernel=$(uname -r)"
        echo "rustc=$(rustc --version)"
        echo "node=$(node --version)"
        echo "vm2=$(node -p "require('$PEER/node_modules/vm2/package.json').version")"
        echo "load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    } > "$RES/machine.txt"
    for n in "${SIZES[@]}"; do
        echo "log_$n=$(stat -c %s "$WORK/events-$n.jsonl") bytes, $(wc -l < "$WORK/events-$n.jsonl") lines" >> "$RES/machine.txt"
    done

    # ------------------------------------------------------------------ pluginflow configs
    # chain name -> plugin folders (in order). geoip-like is the peer's in-memory table (same code
    # as the Node peer); geoip is examples/plugins/geoip-enricher reading the real MaxMind DB.
    declare -A CHAINS=(
        [none]=""
        [hello]="$PEER_PLUGINS/hello"
        [hello+filter+flatten]="$PEER_PLUGINS/hello $PEER_PLUGINS/filter $PEER_PLUGINS/flatten"
        [hello+filter+flatten+geoip-like]="$PEER_PLUGINS/hello $PEER_PLUGINS/filter $PEER_PLUGINS/flatten $PEER_PLUGINS/geoip-like"
        [hello+filter+flatten+geoip]="$PEER_PLUGINS/hello $PEER_PLUGINS/filter $PEER_PLUGINS/flatten $ROOT/examples/plugins/geoip-enricher"
    )
    CHAIN_ORDER=(none hello hello+filter+flatten hello+filter+flatten+geoip-like hello+filter+flatten+geoip)

    write_config() { # name n state(rocks|memory) -> path
        local name=$1 n=$2 state=$3 cfg="$WORK/configs/$1.$2.$3.toml" order=0
        {
            echo "[input]"
            echo "path = \"$WORK/events-$n.jsonl\""
            echo "[output]"
            echo "events = \"$WORK/out/events.jsonl\""
            echo "dead_letters = \"$WORK/out/dead-letters.jsonl\""
            echo "logs = \"$WORK/out/plugin-logs.jsonl\""
            echo "[state]"
            if [ "$state" = memory ]; then echo "memory = true"; else echo "path = \"$WORK/state/run\""; fi
            if [[ "$name" == *+geoip ]]; then printf '[geoip]\npath = "%s"\n' "$GEOIP"; fi
            for dir in ${CHAINS[$name]}; do
                order=$((order + 1))
                printf '[[plugins]]\nid = "%s"\npath = "%s"\norder = %d\n' "$(basename "$dir")" "$dir" "$order"
            done
        } > "$cfg"
        echo "$cfg"
    }

    run_pipeline() { # name n workers state repeat
        local name=$1 n=$2 w=$3 state=$4 r=$5 cfg
        cfg=$(write_config "$name" "$n" "$state")
        rm -rf "$WORK/state/run"
        log "pluginflow [$name] n=$n -w $w state=$state (run $r)"
        /usr/bin/time -v "$BIN" run "$cfg" -w "$w" --no-progress > /dev/null 2> "$RES/pf.$name.$n.w$w.$state.$r.txt" ||
            { cat "$RES/pf.$name.$n.w$w.$state.$r.txt" >&2; exit 1; }
    }

    run_harness() { # mode n tag repeat [args...]
        local mode=$1 n=$2 tag=$3 r=$4
        shift 4
        log "harness $mode [$tag] n=$n (run $r)"
        rm -rf "$WORK/state/harness" && mkdir -p "$WORK/state/harness"
        "$HARNESS" "$mode" --events "$WORK/events-$n.jsonl" --json "$RES/h.$mode.$tag.$n.$r.json" "$@" 2>> "$RES/harness.log"
    }

    run_peer() { # n tag repeat [args...]
        local n=$1 tag=$2 r=$3
        shift 3
        log "node peer [$tag] n=$n (run $r)"
        (cd "$PEER" && node --max-old-space-size=16384 bench.js --events "$WORK/events-$n.jsonl" --quiet --json "$RES/peer.$tag.$n.$r.json" "$@") >&2
    }

    for n in "${SIZES[@]}"; do
        # Rows interleave systems run by run, so that background load hits all of them alike.
        for r in $(seq 1 "$REPEAT"); do
            run_harness floor "$n" serde "$r"
            run_harness check "$n" parse_line "$r"
            for name in "${CHAIN_ORDER[@]}"; do
                for w in 1 2; do
                    run_pipeline "$name" "$n" "$w" rocks "$r"
                done
            done
            run_pipeline hello+filter+flatten "$n" 1 memory "$r"
            for name in "${CHAIN_ORDER[@]:1}"; do
                dirs=$(echo ${CHAINS[$name]} | tr ' ' ',')
                extra=()
                [[ "$name" == *+geoip ]] && extra=(--geoip "$GEOIP")
                run_harness chain "$n" "$name" "$r" --plugins "$dirs" --rocks "$WORK/state/harness" "${extra[@]}"
            done
        done
        for r in $(seq 1 "$PEER_REPEAT"); do
            run_peer "$n" floor "$r" --mode floor
            if [ "$n" -le 100000 ]; then
                for chain in hello hello,filter,flatten hello,filter,flatten,geoip-like; do
                    tag=$(echo "$chain" | tr , +)
                    run_peer "$n" "vm2.$tag" "$r" --plugins "$chain"
                    run_peer "$n" "nodevm.$tag" "$r" --mode nodevm --plugins "$chain"
                done
            fi
        done
    done

    # ------------------------------------------------------------------ RSS per plugin instance
    for p in hello filter flatten geoip-like; do
        "$HARNESS" instances --plugin "$PEER_PLUGINS/$p" --count 50 --json "$RES/inst.$p.json" 2>> "$RES/harness.log"
    done
    "$HARNESS" instances --plugin "$ROOT/examples/plugins/geoip-enricher" --geoip "$GEOIP" --count 50 \
        --json "$RES/inst.geoip-enricher.json" 2>> "$RES/harness.log"

    # ------------------------------------------------------------------ criterion
    if [ "$CRITERION" = 1 ]; then
        log "criterion benches (BENCH_SECONDS=$BENCH_SECONDS per bench)"
        rm -rf "$CARGO_TARGET_DIR/criterion"
        cargo bench -j"$JOBS" -p pluginflow-benches --benches 2>&1 | grep -E "^[a-z_/]+.*time:|^Benchmarking .*: Analyzing" -A0 > "$RES/criterion.txt" || true
        cp -r "$CARGO_TARGET_DIR/criterion" "$RES/criterion"
    fi
    echo "load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/machine.txt"
    kill $LOAD_PID 2>/dev/null || true
fi

# ---------------------------------------------------------------------- report
log "writing BENCHMARKS.md"
python3 scripts/bench_report.py "$RES" "$ROOT/BENCHMARKS.md" "$ROOT/docs/benchmarks-notes.md"
log "done: BENCHMARKS.md"
