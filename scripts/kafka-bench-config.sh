# Sourced by scripts/bench-kafka.sh and scripts/kafka-instructions.sh (needs WORK and KB set).
#
# pipeline_config GROUP INPUT OUTPUT KEY [PLUGIN_DIR...]: writes $WORK/GROUP.toml, a one-worker
# Kafka pipeline in consumer group GROUP from topic INPUT to OUTPUT (dead letters to
# OUTPUT-dead), keyed by the field KEY ("" for no key), stopping after 3 s idle, with the given
# plugins in order; prints the file's path. PIPELINE_KAFKA_EXTRA, when set, is TOML added after
# the [kafka] table (e.g. a [kafka.producer] table of librdkafka settings).
pipeline_config() {
    local group=$1 input=$2 out=$3 key=$4 order=0
    shift 4
    {
        printf '[input]\nkind = "kafka"\n[output]\nevents = "%s/out/e.jsonl"\ndead_letters = "%s/out/d.jsonl"\nlogs = "%s/out/l.jsonl"\n' "$WORK" "$WORK" "$WORK"
        printf '[state]\nmemory = true\n'
        printf '[kafka]\nbrokers = "%s"\ngroup_id = "%s"\ninput_topic = "%s"\noutput_topic = "%s"\n' "$KB" "$group" "$input" "$out"
        printf 'dead_letter_topic = "%s-dead"\nstop_after_idle_ms = 3000\nkey_field = "%s"\n' "$out" "$key"
        printf '%s' "${PIPELINE_KAFKA_EXTRA:-}"
        for dir in "$@"; do
            order=$((order + 1))
            printf '[[plugins]]\nid = "%s"\npath = "%s"\norder = %d\n' "$(basename "$dir")" "$dir" "$order"
        done
    } >"$WORK/$group.toml"
    echo "$WORK/$group.toml"
}
