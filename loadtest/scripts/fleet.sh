#!/bin/sh
# The fleet benchmark (PERFORMANCE.md, "Fleet"): fan-out to 1, 10 and 100 clusters, 100 with
# 10 down and 10 slow, and fluxgate's memory with 1, 100 and 1,000 clusters configured.
# Every stand-in API runs on loopback inside fluxgate-fleetbench; fluxgate is the release build.
# Usage: loadtest/scripts/fleet.sh [fluxgate-fleetbench options...] (e.g. --deliveries 20)
set -eu
cd "$(dirname "$0")/../.."
cargo build --release -p fluxgate -p fluxgate-loadtest
exec target/release/fluxgate-fleetbench --fluxgate target/release/fluxgate "$@"
