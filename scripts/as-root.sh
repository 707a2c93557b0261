# Sourced by lab.sh and test.sh: run the calling script as root. As root, nothing
# happens; otherwise it re-runs itself through sudo (keeping PATH, the rustup
# toolchain and CI), or stops with a message when sudo is not installed.
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "$(basename "$0"): needs root (namespaces, nftables, apt-get): run it as root" >&2
        exit 1
    fi
    keep=("PATH=$PATH")
    rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
    [ -d "$rustup_home" ] && keep+=("RUSTUP_HOME=$rustup_home")
    [ -n "${CI:-}" ] && keep+=("CI=$CI")
    exec sudo env "${keep[@]}" bash "$0" "$@"
fi
