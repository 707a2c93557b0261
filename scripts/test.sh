#!/usr/bin/env bash
# The whole test suite: unit, golden, property, scale, and the privileged
# end-to-end tests in network namespaces. Runs as root (re-runs itself through
# sudo when started as another user); under CI (CI set) a missing prerequisite fails.
set -euo pipefail
. "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --quiet --all-targets
cargo test --workspace -- --test-threads 4
# No namespace may be left behind by the tests (they use the prefixes fwt*, fwr*, fwb*, fwn*, fwl*;
# `fwlab-*` belongs to a lab an admin may have up).
if [ "$(id -u)" -eq 0 ] && ip netns list | grep -E '^fw(t|r|b|v|k|c|n|l|pre)[0-9a-f]{5}-' ; then
    echo "test.sh: tests left network namespaces behind" >&2
    exit 1
fi
