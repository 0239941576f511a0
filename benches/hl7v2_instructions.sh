#!/usr/bin/env bash
# The HL7 v2 feed's CPU cost as instructions (valgrind's callgrind), which,
# unlike time on a shared 2-core VM, repeat to within about 1% from run to
# run (0.1% before the WAL shim made commits quick enough that how many
# messages share one depends on timing under valgrind too; run each build
# two or three times): for comparing two builds of the gateway.
#
#   bash benches/hl7v2_instructions.sh [BINARY ...]   (default: target/release/pathway-gateway)
#
# Each binary serves a fresh store under callgrind; 4 connections send VISITS
# visits each (A04, A08, A03: the `hl7v2` bench's messages), one at a time;
# the gateway is stopped with SIGTERM. Printed: the gateway's user-space
# instructions per message (kernel work, such as fsync and TCP, is not
# counted), after those of starting and stopping with no message; and the
# bytes it wrote per message (`wchar`: the WAL's frames, checkpoints, ACKs),
# which follow the pages each message dirties.
#
# CACHE=1 also simulates the caches (callgrind --cache-sim, sized as this
# machine's cores: 32 KiB L1 data and instruction, 512 KiB L2 as the last
# level) and prints the L2 misses per message, code and data. The gateway's
# CPU per message follows the machine's memory latency (README, HL7 v2
# bench: 32 runs, correlation 0.87), so a change that saves L2 misses saves
# time in the slow spells even where it saves no instructions. valgrind runs
# the threads one at a time on one simulated cache, so the count is high
# against two real cores; compare builds with it, not with the hardware.
# Needs valgrind and python3 (`apt-get install -y valgrind`).
set -euo pipefail
CACHE=${CACHE:-0}
SIM=()
[ "$CACHE" = 1 ] && SIM=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=524288,8,64)
VISITS=${VISITS:-40}
PORT=${PORT:-12600}
[ $# -gt 0 ] || set -- target/release/pathway-gateway

send() { # port first last
  python3 - "$@" <<'PY'
import socket, sys
port, first, last = map(int, sys.argv[1:])
def nhs(v):
    stem = 400000000 + v
    while True:
        digits = str(stem)
        check = (11 - sum(int(d) * (10 - i) for i, d in enumerate(digits)) % 11) % 11
        if check < 10:
            return digits + str(check)
        stem += 1
def seg(name, fields):
    last = max(n for n, _ in fields)
    d = dict(fields)
    return name + "".join("|" + d.get(n, "") for n in range(1, last + 1)) + "\r"
def message(v, step):
    event, when, end, disposition = [("A04", "202611031940", "", ""),
                                     ("A08", "202611031955", "", ""),
                                     ("A03", "202611032245", "202611032240", "19")][step]
    m = f"MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|{when}||ADT^{event}^ADT_A01|B{v}-{step}|P|2.4|||AL|NE|GBR\r"
    m += seg("EVN", [(1, event), (2, when)])
    m += seg("PID", [(1, "1"), (3, f"K{v}^^^RJZ^MR~{nhs(v)}^^^NHS^NH"), (5, "PAGE^Margaret^Ann^^MRS^^L"),
                     (7, "19380305"), (8, "F"), (11, "12 Station Road^Flat 2^Bromley^Kent^BR1 3PT^GBR^H"),
                     (13, "01689 123456^PRN^PH"), (32, "NSTS01")])
    m += seg("PD1", [(3, "BROMLEY COMMON PRACTICE^^G84001"), (4, "G1234567^SMITH^JOHN^^^DR")])
    m += seg("PV1", [(1, "1"), (2, "E"), (3, "ED^^MAJORS 4^RJZ30"), (4, "A"), (14, "19"),
                     (19, f"E{v}^^^RJZ^VN"), (36, disposition), (44, "202611031935"), (45, end)])
    return m
s = socket.create_connection(("127.0.0.1", port))
for v in range(first, last):
    for step in range(3):
        s.sendall(b"\x0b" + message(v, step).encode() + b"\x1c\r")
        ack = b""
        while not ack.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("connection closed")
            ack += chunk
        if b"MSA|AA" not in ack:
            sys.exit(ack.decode(errors="replace"))
PY
}

# Instructions of one run of BINARY with VISITS visits per connection, and
# with CACHE=1 its L2 misses (code, data read, data write) after them.
instructions() { # binary visits
  local dir pid written senders=""
  dir=$(mktemp -d)
  PATHWAY_HTTP__LISTEN=127.0.0.1:0 PATHWAY_HL7V2__LISTEN=127.0.0.1:$PORT \
    PATHWAY_STORE__PATH="$dir/data" PATHWAY_LOG__LEVEL=warn \
    valgrind --tool=callgrind "${SIM[@]}" --callgrind-out-file="$dir/out" "$1" serve >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
  if [ "$2" -gt 0 ]; then
    for c in 0 1 2 3; do send "$PORT" $((c * 100000)) $((c * 100000 + $2)) & senders="$senders $!"; done
    wait $senders
  fi
  # Bytes the gateway has written (valgrind runs it in its own process):
  # the WAL's frames, checkpoints and ACKs, before shutdown's own.
  written=$(awk '/^wchar/{print $2}' "/proc/$pid/io")
  kill -TERM $pid
  wait $pid || true
  # Events: Ir, and with the simulation Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
  grep -E '^(summary|totals):' "$dir/out" | head -1 | awk -v w="$written" '{print $2, $8 + 0, $9 + 0, $10 + 0, w}'
  rm -rf "$dir"
}

for binary in "$@"; do
  read -r idle idle_code idle_reads idle_writes idle_written <<<"$(instructions "$binary" 0)"
  read -r busy code reads writes written <<<"$(instructions "$binary" "$VISITS")"
  messages=$((4 * 3 * VISITS))
  line="$binary: $(( (busy - idle) / messages )) instructions per message"
  line="$line, $(( (written - idle_written) / messages )) bytes written"
  if [ "$CACHE" = 1 ]; then
    code=$(( (code - idle_code) / messages ))
    data=$(( (reads - idle_reads + writes - idle_writes) / messages ))
    line="$line, $((code + data)) L2 misses per message ($code code, $data data)"
  fi
  echo "$line ($messages messages; $idle to start and stop)"
done
