#!/usr/bin/env bash
# Alternating runs of the `hl7v2` bench against two or more gateway builds,
# the only comparison worth making on this shared VM: the same build's
# throughput moves by a third within an hour (see README, Benchmarks), so
# builds are compared in the same minutes, round after round, each run
# printed beside the machine's memory and wake-up latency measured just
# before it.
#
#   bash benches/alternate.sh [-r ROUNDS] [-m MESSAGES] LABEL=BINARY ...
#
# e.g. keep a copy of each build (cp target/release/pathway-gateway
# /tmp/gw-old), then: bash benches/alternate.sh -r 5 old=/tmp/gw-old
# new=target/release/pathway-gateway. Needs the bench built:
# `cargo bench --bench hl7v2 --no-run`.
set -euo pipefail
rounds=3
messages=1500
while getopts "r:m:" opt; do
  case $opt in
    r) rounds=$OPTARG ;;
    m) messages=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-r ROUNDS] [-m MESSAGES] LABEL=BINARY ..." >&2; exit 2; }
cd "$(dirname "$0")/.."
bench=$(ls -t target/release/deps/hl7v2-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -n "$bench" ] || { echo "build the bench first: cargo bench --bench hl7v2 --no-run" >&2; exit 1; }
for spec in "$@"; do
  [ -x "${spec#*=}" ] || { echo "not an executable: ${spec#*=}" >&2; exit 1; }
done
# The last number in the first match of pattern $1 in text $2.
pick() { grep -o "$1" <<<"$2" | head -1 | grep -o '[0-9.]\+' | tail -1; }
declare -A total cpu won
for round in $(seq "$rounds"); do
  best="" best_rate=0
  for spec in "$@"; do
    label=${spec%%=*}
    if ! out=$(BENCH_GATEWAY_BIN=$(realpath "${spec#*=}") "$bench" --bench --messages "$messages" 2>&1); then
      echo "$label: the bench failed:" >&2
      tail -20 <<<"$out" >&2
      exit 1
    fi
    run=$(grep "end to end" <<<"$out")
    machine=$(grep "machine before" <<<"$out")
    rate=$(pick '= [0-9]* messages/s' "$run")
    used=$(pick 'CPU [0-9]* µs' "$run")
    printf '%s %s: %s messages/s, p99 %s ms, CPU %s µs (writer %s), peak RSS %s MiB | memory %s ns, round trip %s µs\n' \
      "$round" "$label" "$rate" "$(pick 'p99 [0-9.]* ms' "$run")" \
      "$used" "$(pick 'writer [0-9]* µs' "$run")" \
      "$(pick 'peak [0-9.]* MiB' "$run")" "$(pick '64 MiB [0-9]* ns' "$machine")" \
      "$(pick 'round trip [0-9.]* µs' "$machine")"
    total[$label]=$(( ${total[$label]:-0} + rate ))
    cpu[$label]=$(( ${cpu[$label]:-0} + used ))
    if [ "$rate" -gt "$best_rate" ]; then best=$label best_rate=$rate; fi
  done
  won[$best]=$(( ${won[$best]:-0} + 1 ))
done
# Per build: mean messages/s and CPU, and in how many rounds it was the fastest.
for spec in "$@"; do
  label=${spec%%=*}
  echo "$label: mean $(( ${total[$label]} / rounds )) messages/s, CPU $(( ${cpu[$label]} / rounds )) µs a message, fastest in ${won[$label]:-0} of $rounds rounds"
done
