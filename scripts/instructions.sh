#!/usr/bin/env bash
# Instruction counts of the per-event work (benches/src/bin/instructions.rs, under valgrind's
# callgrind) against the committed baseline benches/instructions-baseline.json.
#
#   scripts/instructions.sh            # measure, print a table, exit 1 on a rise of more than 5%
#   scripts/instructions.sh --update   # measure and write the baseline
#   TOLERANCE=2 scripts/instructions.sh
#
# Counts are exact for a given binary: they change when the code, a dependency or the compiler
# changes, never with the machine's load. Only the call inside a `measured_*` function is
# counted (callgrind --toggle-collect); setup and teardown are not.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pluginflow/target}"
BASELINE=benches/instructions-baseline.json
TOLERANCE="${TOLERANCE:-5}"

if ! command -v valgrind >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq valgrind
fi
scripts/fetch-test-data.sh >/dev/null
cargo build --quiet --release -j2 -p pluginflow-benches --bin instructions
BIN="$CARGO_TARGET_DIR/release/instructions"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for name in $("$BIN" list); do
    valgrind --tool=callgrind --toggle-collect='*measured_*' --callgrind-out-file="$work/$name.out" "$BIN" "$name" >"$work/$name.log" 2>&1 \
        || { echo "instructions.sh: $name failed:" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
    echo "$name $(awk '/^totals:/ {print $2}' "$work/$name.out")" >>"$work/counts"
done

python3 - "$work/counts" "$BASELINE" "$TOLERANCE" "${1:-}" <<'PY'
import json, sys
counts_path, baseline_path, tolerance, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
counts = {}
for line in open(counts_path):
    name, value = line.split()
    counts[name] = int(value)
# Benchmarks that run several events report a count per event too.
events = {"graph_no_plugins_1000": 1000, "parse_line_1000": 1000}
if mode == "--update":
    with open(baseline_path, "w") as f:
        json.dump(dict(sorted(counts.items())), f, indent=2)
        f.write("\n")
    print(f"instructions.sh: wrote {baseline_path}")
base = json.load(open(baseline_path))
failed = []
print("| operation | instructions | per event | baseline | change |")
print("|---|---|---|---|---|")
for name, ir in counts.items():
    b = base.get(name)
    change = "new" if b is None else f"{100.0 * (ir - b) / b:+.1f}%"
    print(f"| {name} | {ir:,} | {ir // events.get(name, 1):,} | {'–' if b is None else f'{b:,}'} | {change} |")
    if b is not None and ir > b * (1 + tolerance / 100):
        failed.append(f"{name}: {ir:,} instructions against {b:,} in the baseline (+{100.0 * (ir - b) / b:.1f}%, more than {tolerance}%)")
for name in sorted(set(base) - set(counts)):
    failed.append(f"{name} is in the baseline but did not run")
if failed:
    print("instructions.sh: regression\n  " + "\n  ".join(failed), file=sys.stderr)
    sys.exit(1)
PY
