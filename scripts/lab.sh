#!/usr/bin/env bash
# The main job: build fwctl, bring up network namespaces mirroring the reference
# policy (ECWAN and the rack behind it), load the compiled policy into the firewall
# namespace, check every [[tests]] entry and a zone × host × service matrix with
# real packets, then tear the lab down. Needs root (namespaces, nftables).
set -euo pipefail
. "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
policy="${1:-policies/carif-oref}"
bash scripts/deps.sh
cargo build --release --quiet
fwctl=target/release/fwctl
"$fwctl" check "$policy"
"$fwctl" lab down >/dev/null 2>&1 || true
trap '"$fwctl" lab down >/dev/null 2>&1 || true' EXIT
"$fwctl" lab up "$policy"
"$fwctl" lab check "$policy"
