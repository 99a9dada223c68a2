#!/bin/bash
# sandbox.sh: try the units of examples/systemd/ under a real systemd without
# touching your own. It boots /lib/systemd/systemd as PID 1 of new PID, mount,
# UTS, IPC and cgroup namespaces (no VM, no image), with these units in its
# unit path, and lets you run systemctl in there.
#
#   SB=$(examples/systemd/sandbox.sh start [BIN_DIR])   # prints the sandbox dir
#   examples/systemd/sandbox.sh exec "$SB" systemctl start echo-server.socket
#   examples/systemd/sandbox.sh log "$SB"               # systemd's own log
#   examples/systemd/sandbox.sh stop "$SB"              # kill it all, clean up
#
# The units' ExecStart=/usr/local/bin/NAME (and ExecReload=, for mitosisctl)
# becomes BIN_DIR/NAME, by default the release build of this repository
# (target/release, or $CARGO_TARGET_DIR/release), so there is nothing to
# install.
#
# Needs root (for namespaces and mounts), systemd (Debian 12 has 252),
# util-linux (unshare, nsenter, script) and a cgroup2 hierarchy, at
# /sys/fs/cgroup or /sys/fs/cgroup/unified. Tested where the host's PID 1 is
# not systemd; on a host run by systemd the child cgroup made here is not
# delegated to us, which may or may not work.
#
# What it does to the host, and what it does not:
#  - the mount namespace is private: the mounts made inside (/run,
#    /sys/fs/cgroup, /dev/console) never reach the host;
#  - container=... tells systemd it is in a container: it leaves the host's
#    clock, hostname, kernel modules and mounts alone;
#  - its cgroup namespace is rooted at a fresh child cgroup, so systemd only
#    manages that subtree;
#  - there is NO network namespace: the sandbox shares the host's network, so
#    echo-server.socket's 127.0.0.1:7700 is reachable from the host (and must
#    be free);
#  - systemd does set the global sysctl fs.file-max (usually a no-op);
#  - stop sends SIGKILL to the sandbox's PID 1, so the kernel kills every
#    process in it; no shutdown runs. Then it removes the cgroups and the dir.
#
# No journald runs: the services' stdout and stderr go nowhere; systemd's own
# log (unit state changes, notifications accepted or refused) is `log`.
set -euo pipefail

SYSTEMD=/lib/systemd/systemd
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export SYSTEMD_PAGER=            # systemctl prints, never pages

die() { echo "sandbox.sh: $*" >&2; exit 1; }

cgroup2_root() {
  local dir
  for dir in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    [ "$(stat -fc %T "$dir" 2>/dev/null)" = cgroup2fs ] && { echo "$dir"; return; }
  done
  die "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
}

# The pid of process $1 inside its own (innermost) PID namespace.
inner_pid() { awk '/^NSpid:/ { print $NF }' "/proc/$1/status" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || die "needs root (namespaces and mounts)"
  [ -x "$SYSTEMD" ] || die "$SYSTEMD is missing (apt-get install systemd)"
  local tool
  for tool in unshare nsenter script setsid; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install util-linux)"
  done
  local bin=${1:-${CARGO_TARGET_DIR:-$REPO/target}/release}
  bin=$(realpath -e -- "$bin") || die "no such directory: ${1:-target/release}"
  case "$bin" in *[[:space:]]*) die "the binary directory may not contain spaces: $bin";; esac
  [ -x "$bin/echo-server" ] || echo "sandbox.sh: warning: no $bin/echo-server (cargo build --release -p mitosis-examples)" >&2
  [ -x "$bin/mitosisctl" ] || echo "sandbox.sh: warning: no $bin/mitosisctl, for echo-server-control.service (cargo build --release -p mitosis-handover --features control --bin mitosisctl)" >&2

  local dir; dir=$(mktemp -d -t mitosis-sandbox.XXXXXX)
  mkdir "$dir/units" "$dir/run" "$dir/empty"

  # Our units, running the binaries from $bin, and empty stand-ins for the
  # targets that their default dependencies, After= and WantedBy= name.
  local unit target
  for unit in "$HERE"/*.service "$HERE"/*.socket; do
    sed "s|^\(Exec[A-Za-z]*=\)/usr/local/bin/|\1$bin/|" "$unit" > "$dir/units/${unit##*/}"
  done
  for target in default sysinit basic sockets timers paths slices shutdown multi-user network-online; do
    printf '[Unit]\nDescription=stand-in for %s.target\n' "$target" > "$dir/units/$target.target"
  done

  # A child cgroup, to be the root of the sandbox's cgroup namespace.
  local hierarchy; hierarchy=$(cgroup2_root)
  local cgroup=$hierarchy/${dir##*/}
  mkdir "$cgroup"
  echo "$cgroup" > "$dir/cgroup"

  # PID 1 of the new namespaces runs this, then becomes systemd.
  cat > "$dir/init.sh" <<EOF
#!/bin/sh
set -eu
mount --bind '$dir/run' /run            # a private /run, also seen from the host
mount -t cgroup2 cgroup2 /sys/fs/cgroup  # only our subtree
# systemd wants its root cgroup to itself: wait until the host-side unshare
# (pid 0 from here) has been moved out of it.
i=0
while grep -qx 0 /sys/fs/cgroup/cgroup.procs && [ \$i -lt 1000 ]; do sleep 0.01; i=\$((i + 1)); done
mount --bind "\$(tty)" /dev/console      # systemd logs to the console: script's pty
exec env -i container=mitosis-sandbox \\
  SYSTEMD_UNIT_PATH='$dir/units' \\
  SYSTEMD_GENERATOR_PATH='$dir/empty' SYSTEMD_ENVIRONMENT_GENERATOR_PATH='$dir/empty' \\
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
  $SYSTEMD --system --log-target=console --log-level=info --log-color=no --show-status=no
EOF
  chmod +x "$dir/init.sh"

  # script(1) gives the sandbox a pty (its /dev/console) and writes all that
  # is printed on it to console.log. The shell it runs joins the new cgroup
  # first, so that unshare --cgroup roots the namespace there.
  SHELL=/bin/sh setsid script -qfe -c "echo \$\$ > '$cgroup/cgroup.procs' &&
      exec unshare --pid --fork --mount --uts --ipc --cgroup --mount-proc --propagation private '$dir/init.sh'" \
    "$dir/console.log" </dev/null >/dev/null 2>&1 &

  # Find the sandbox's PID 1 among the processes of the new cgroup.
  local pid="" p i
  for i in $(seq 500); do
    for p in $(cat "$cgroup/cgroup.procs" 2>/dev/null); do
      [ "$(inner_pid "$p")" = 1 ] && { pid=$p; break 2; }
    done
    sleep 0.01
  done
  [ -n "$pid" ] || { cleanup "$dir"; die "the sandbox did not start"; }
  echo "$pid" > "$dir/pid"

  # Move the host-side unshare back to our own cgroup; init.sh waits for it.
  local own; own=$(sed -n 's/^0:://p' /proc/self/cgroup)
  for p in $(cat "$cgroup/cgroup.procs"); do
    [ "$p" = "$pid" ] || echo "$p" > "$hierarchy$own/cgroup.procs" 2>/dev/null || true
  done

  # Up once systemd answers and has finished its first transaction.
  local state=""
  for i in $(seq 1000); do
    if [ -S "$dir/run/systemd/private" ]; then
      state=$(timeout 5 nsenter -t "$pid" -m -p systemctl is-system-running 2>/dev/null || true)
      [ "$state" = running ] && break
    fi
    sleep 0.02
  done
  [ "$state" = running ] || { log "$dir" | tail -20 >&2; cleanup "$dir"; die "systemd did not come up (state: '$state')"; }
  echo "$dir"
}

check() { [ -f "${1:-}/init.sh" ] && [ -f "$1/cgroup" ] || die "not a sandbox directory: ${1:-(none given)}"; }

# Run a command inside the sandbox (its mounts, pids, hostname, IPC, cgroups).
run_in() {
  check "${1:-}"; local dir=$1; shift
  [ $# -gt 0 ] || die "exec: which command?"
  nsenter -t "$(cat "$dir/pid")" -m -p -u -i -C -- "$@"
}

# systemd's console log, without the pty's carriage returns.
log() { check "${1:-}"; tr -d '\r' < "$1/console.log"; }

# SIGKILL to the sandbox's PID 1, if that pid is still our sandbox's PID 1;
# the kernel then kills every process in it. Then remove its cgroups.
cleanup() {
  local dir=$1 pid cgroup p i
  cgroup=$(cat "$dir/cgroup" 2>/dev/null || true)
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(inner_pid "$pid")" = 1 ] &&
     grep -q "^0::/${dir##*/}\(/\|\$\)" "/proc/$pid/cgroup" 2>/dev/null; then
    kill -KILL "$pid"
  fi
  [ -n "$cgroup" ] && [ -d "$cgroup" ] || return 0
  # Whatever is left in the cgroup (after a failed start) was started here.
  for p in $(find "$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  for i in $(seq 200); do   # the killed processes take a moment to go
    find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null && break
    sleep 0.05
  done
  [ ! -d "$cgroup" ] || echo "sandbox.sh: could not remove the cgroup $cgroup" >&2
}

stop() { check "${1:-}"; cleanup "$1"; rm -rf -- "$1"; }

case "${1:-}" in
  start) shift; start "$@";;
  exec)  shift; run_in "$@";;
  log)   shift; log "$@";;
  stop)  shift; stop "$@";;
  *) echo "usage: $0 start [BIN_DIR] | exec DIR COMMAND... | log DIR | stop DIR" >&2; exit 2;;
esac
