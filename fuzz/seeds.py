#!/usr/bin/env python3
"""Seeds for the `er7` target that reach the feed's state.

The dry run applies a file's messages in order, as the feed applies a
stream, so an input of several messages about one patient and one visit
exercises the state rules (event order, cancels, merges). libFuzzer grows
inputs only to about the largest seed, so seeds of single fixtures leave
those paths to chance. This writes, into DIR (default corpus/er7):

- every fixture in ../fixtures/hl7v2 as it is;
- 60 files of two to five fixtures end to end;
- 40 sequences of three to seven messages taken from the fixtures'
  events, rewritten onto one visit number (PV1-19) with an MSH-10 of their
  own, in random order;
- 20 such sequences in which later messages take an earlier one's MSH-10:
  sent again as it was, sent again with a new MSH-7 (both repeats), or
  another message under it (held: `AE` at MSH-10).

Deterministic (fixed random seeds). Run from fuzz/: `python3 seeds.py`.
"""

import random
import re
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hl7v2"
# Events of one patient (K1234567) and the ones that merge or untrace.
VISIT_EVENTS = [
    "a01-emergency-admission.hl7",
    "a02-transfer.hl7",
    "a03-discharge-to-care-home.hl7",
    "a05-pre-admission.hl7",
    "a08-update.hl7",
    "a11-cancel-admit.hl7",
    "a12-cancel-transfer.hl7",
    "a13-cancel-discharge.hl7",
    "out-of-order-discharge-first.hl7",
    "a40-merge.hl7",
    "untraced-ed-attendance.hl7",
    "a04-ed-attendance.hl7",
]
VISIT = re.compile(r"[VE]\d{6}\^\^\^RJZ\^VN")


def ended(message: bytes) -> bytes:
    return message if message.endswith((b"\r", b"\n")) else message + b"\r"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus/er7")
    out.mkdir(parents=True, exist_ok=True)
    fixtures = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.hl7"))}
    for name, data in fixtures.items():
        (out / name).write_bytes(data)

    pick = random.Random(7)
    names = sorted(fixtures)
    for i in range(60):
        chosen = pick.sample(names, pick.randint(2, 5))
        (out / f"combo{i}.hl7").write_bytes(b"".join(ended(fixtures[n]) for n in chosen))

    pool = []
    for name in VISIT_EVENTS:
        text = fixtures[name].decode("latin-1")
        for message in re.split(r"(?=MSH\|)", text):
            if message.startswith("MSH|"):
                pool.append(VISIT.sub("V100001^^^RJZ^VN", message))
    pick = random.Random(11)
    for i in range(40):
        messages = []
        for j in range(pick.randint(3, 7)):
            fields = pick.choice(pool).split("|")
            fields[9] = f"SEQ{i}-{j}"  # MSH-10: each message its own
            messages.append("|".join(fields).rstrip("\r\n") + "\r")
        (out / f"visit{i}.hl7").write_bytes("".join(messages).encode("latin-1"))

    pick = random.Random(13)
    for i in range(20):
        messages = []
        for j in range(pick.randint(3, 6)):
            how = pick.choice(["new", "new", "resent", "restamped", "reused"])
            if how == "new" or not messages:
                fields = pick.choice(pool).split("|")
                fields[9] = f"RE{i}-{j}"
            elif how == "reused":
                fields = pick.choice(pool).split("|")
                fields[9] = pick.choice(messages).split("|")[9]
            else:
                fields = pick.choice(messages).split("|")
                if how == "restamped":
                    fields[6] = f"2026072{j}1200"  # MSH-7
            messages.append("|".join(fields).rstrip("\r\n") + "\r")
        (out / f"resend{i}.hl7").write_bytes("".join(messages).encode("latin-1"))
    print(f"{len(fixtures) + 120} seeds in {out}")


if __name__ == "__main__":
    main()
