#!/bin/sh
# The loadgen figures of docs/bench.md: 64 clients, a new connection every
# 10th request, against the release echo-server.
#   1. 100 upgrades to a good build;
#   2. 10 upgrades each to three broken builds put in place over the running
#      server's binary, as a deploy would: one that crashes at start, one
#      that hangs at start (killed at the start timeout, 2 s here), and one
#      that hangs after receiving the state without committing (killed at
#      the transfer timeout, 250 ms here: the server is paused until then,
#      and a 64-client state crosses in about a millisecond).
# Usage: bench/loadgen.sh [UPGRADES [BAD]] (from the repository's root);
# 100 and 10 by default.
set -eu
upgrades=${1:-100}
bad=${2:-10}
cargo build --release -q -p mitosis-examples --bin echo-server --bin loadgen
target=${CARGO_TARGET_DIR:-target}/release
dir=$(mktemp -d /tmp/mitosis-loadgen.XXXXXX)
trap 'kill $(cat "$dir"/pid 2>/dev/null) 2>/dev/null; rm -rf "$dir"' EXIT

run() { # name, loadgen arguments...
    name=$1; shift
    cp "$target/echo-server" "$dir/echo-server"
    rm -f "$dir/out"
    mkfifo "$dir/out"
    "$dir/echo-server" --listen 127.0.0.1:0 --start-timeout-ms 2000 --transfer-timeout-ms 250 >"$dir/out" 2>"$dir/err" &
    echo $! >"$dir/pid"
    exec 3<"$dir/out"
    read -r line <&3
    port=${line#listening }
    case $name in
    crash) printf '#!/bin/sh\nexit 1\n' >"$dir/staged" ;;
    hang-at-start) printf '#!/bin/sh\nexec sleep 3600\n' >"$dir/staged" ;;
    hang-after-receive)
        cp "$target/echo-server" "$dir/real"
        printf '#!/bin/sh\nexec %s "$@" --hang-after-receive\n' "$dir/real" >"$dir/staged" ;;
    esac
    if [ -f "$dir/staged" ]; then
        chmod 755 "$dir/staged"
        mv "$dir/staged" "$dir/echo-server"
    fi
    echo "== $name"
    "$target/loadgen" --server "127.0.0.1:$port" --clients 64 --reconnect-every 10 \
        --timeout 30s "$@" | grep -v '^upgrade'
    # The last generation (the first process, after broken builds).
    pkill -f "$dir/echo-server" || true
    pkill -f "$dir/real" || true
    exec 3<&-
}

run good --upgrades "$upgrades"
run crash --upgrades "$bad" --bad-build
run hang-at-start --upgrades "$bad" --bad-build
run hang-after-receive --upgrades "$bad" --bad-build
