#!/usr/bin/env bash
# Installs the load generators the HTTP benchmark drives the gateway with:
# wrk (Debian) for throughput, oha (crates.io, ~7 min to build) for latency
# at a fixed rate.
set -euo pipefail
if ! command -v wrk >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq wrk
fi
if ! command -v oha >/dev/null; then
  cargo install --locked oha
fi
echo "wrk: $(command -v wrk)  oha: $(command -v oha)"
