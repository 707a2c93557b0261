#!/usr/bin/env bash
# Install what fwctl's build, lab and tests need on a Debian machine (idempotent).
set -euo pipefail
need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v cc >/dev/null || need+=(gcc)
command -v ping >/dev/null || need+=(iputils-ping)
command -v git >/dev/null || need+=(git)
if ((${#need[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
    echo "deps: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian 12's own cargo/rustc (1.63) cannot build this workspace: Cargo.lock is
# version 4 (cargo >= 1.78), the dependencies need rustc >= 1.85 and the tests
# (proptest) >= 1.88. So a missing toolchain is not installed from apt.
if ! command -v cargo >/dev/null; then
    echo "deps: cargo (Rust >= 1.88) is required and Debian 12's rustc 1.63 is too old;" >&2
    echo "deps: install it with rustup (https://rustup.rs), then run this script again" >&2
    exit 1
fi
