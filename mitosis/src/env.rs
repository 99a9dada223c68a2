//! The contract between the two processes outside the TCP stream, and the
//! limits both enforce, with their defaults and hard ceilings.
//!
//! It has two parts (PROTOCOL.md, steps 1 and 2):
//!
//! - the environment holds only where the fd channel is
//!   ([`apply`] on the old side, [`take`] on the new), which is no secret:
//!   the channel lives in a 0700 directory and serves only the new
//!   process's pid;
//! - the [`Terms`] (the secret, the transfer timeout and the limits) travel
//!   as the fd channel's first message, KEY, once the kernel has shown
//!   that the new process is the one connected.
//!
//! Around the handover, the environment also carries what supervisors
//! set (systemd's `NOTIFY_SOCKET` and `LISTEN_*`), the keeper's switch
//! (`MITOSIS_KEEPER`), and which signals start an upgrade, so that the new
//! process never dies of one before it has its own trigger.
//!
//! Nothing else in the crate names a variable.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::Error;
use crate::wire::Key;
use crate::wire::handshake::Secret;

/// The path of the old process's fd channel socket.
const FD_SOCKET_VAR: &str = "MITOSIS_FD_SOCKET";

/// How long the new process has, from spawn to READY, by default. The
/// service is not paused meanwhile (with `prepare`), so this can be
/// generous: enough for a large program to start, load its configuration
/// and warm its caches.
pub(crate) const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the transfer may take, from the hand-over to COMMIT, by
/// default. The service is paused meanwhile, so this is tight: a 4 GiB
/// state (the default limit) crosses in about 3 s on a small machine, and
/// a new process that hangs while decoding gives the connections back
/// after at most this long.
pub(crate) const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection to the handover port may take to prove the secret
/// by default. The real new process proves it in its first write.
pub(crate) const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// The most state a handover carries by default, in encoded bytes: 4 GiB.
pub(crate) const MAX_STATE_BYTES: u64 = 4 << 30;

/// The most fds a handover carries, by default and at most: 1,048,576,
/// Linux's default ceiling on one process's open files (`nr_open`).
pub(crate) const MAX_FDS: u64 = 1 << 20;

/// Connections to the handover port that have not proven the secret yet,
/// held at once; past this the oldest is dropped, so that a flood cannot
/// exhaust fds. Also the fd channel's backlog.
pub(crate) const MAX_PENDING: usize = 64;

/// How much a handover may carry; both processes enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) state_bytes: u64,
    pub(crate) fds: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            state_bytes: MAX_STATE_BYTES,
            fds: MAX_FDS,
        }
    }
}

/// The signals that start an upgrade in the old process: the new one
/// ignores them until it sets up its own trigger.
const TRIGGER_SIGNALS_VAR: &str = "MITOSIS_TRIGGER_SIGNALS";

/// The keeper's switch: `auto` (the default), `on` or `off`.
const KEEPER_VAR: &str = "MITOSIS_KEEPER";

/// Set by the keeper for the program it starts: the keeper's pid.
const KEPT_VAR: &str = "MITOSIS_KEPT";

/// Where systemd, or the keeper, listens for notifications
/// (sd_notify(3)); `sd_notify` reads it too.
const NOTIFY_SOCKET_VAR: &str = "NOTIFY_SOCKET";

/// Set by systemd for every process it starts as a service.
const INVOCATION_ID_VAR: &str = "INVOCATION_ID";

/// Socket activation (sd_listen_fds(3)).
const LISTEN_PID_VAR: &str = "LISTEN_PID";
const LISTEN_FDS_VAR: &str = "LISTEN_FDS";
const LISTEN_FDNAMES_VAR: &str = "LISTEN_FDNAMES";

/// Clears mitosis's variables from `command`'s environment, in case this
/// process inherited them and could not remove them (it had threads):
/// those of an older build's old process, which carried in the environment
/// what the flag carries now, and the keeper's, which only concern the
/// first generation.
pub(crate) fn apply(command: &mut Command) {
    for var in [FD_SOCKET_VAR, TRIGGER_SIGNALS_VAR, KEEPER_VAR, KEPT_VAR] {
        command.env_remove(var);
    }
}

/// The signals that started upgrades in the old process: from the flag, or,
/// from an old process of an earlier build, from the environment, which
/// is then cleared.
pub(crate) fn take_trigger_signals(from_flag: Option<&[i32]>) -> Vec<i32> {
    if let Some(signals) = from_flag {
        return signals.to_vec();
    }
    let list = std::env::var(TRIGGER_SIGNALS_VAR).unwrap_or_default();
    remove(TRIGGER_SIGNALS_VAR);
    list.split(',').filter_map(|n| n.parse().ok()).collect()
}

/// Whether to run under a keeper, as asked in `MITOSIS_KEEPER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeeperSwitch {
    Auto,
    On,
    Off,
}

/// Reads and removes the keeper's switch, and the keeper's mark on the
/// program it started: `(switch, Some(keeper pid))` in that program.
pub(crate) fn take_keeper_switch() -> Result<(KeeperSwitch, Option<u32>), Error> {
    let switch = std::env::var(KEEPER_VAR).unwrap_or_default();
    let kept = std::env::var(KEPT_VAR)
        .ok()
        .and_then(|pid| pid.parse().ok());
    remove(KEEPER_VAR);
    remove(KEPT_VAR);
    let switch = match switch.trim() {
        "" | "auto" => KeeperSwitch::Auto,
        "on" | "1" | "yes" | "true" => KeeperSwitch::On,
        "off" | "0" | "no" | "false" => KeeperSwitch::Off,
        other => {
            return Err(Error::Supervisor {
                action: format!("use {KEEPER_VAR}={other:?}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "it must be auto, on or off",
                ),
            });
        }
    };
    Ok((switch, kept))
}

/// What the keeper sets for the program it starts: its own notification
/// socket, and its mark.
pub(crate) fn apply_keeper(command: &mut Command, notify_socket: &str) {
    command
        .env(NOTIFY_SOCKET_VAR, notify_socket)
        .env(KEPT_VAR, std::process::id().to_string())
        .env_remove(KEEPER_VAR);
}

/// The service manager's notification socket, if any.
pub(crate) fn notify_socket() -> Option<PathBuf> {
    std::env::var_os(NOTIFY_SOCKET_VAR)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// The parent watches this process's pid and would take its exit for the
/// service's: a container's init shim (`docker run --init` runs tini as
/// `docker-init`), or a runit, s6 or daemontools supervisor.
pub(crate) fn parent_watches_the_pid() -> bool {
    const WATCHERS: [&[u8]; 7] = [
        b"tini",
        b"docker-init",
        b"dumb-init",
        b"catatonit",
        b"runsv",
        b"s6-supervise",
        b"supervise",
    ];
    parent_name().is_some_and(|name| WATCHERS.contains(&name.as_slice()))
}

fn parent_name() -> Option<Vec<u8>> {
    let parent = rustix::process::getppid()?;
    let mut comm = std::fs::read(format!("/proc/{}/comm", parent.as_raw_nonzero())).ok()?;
    comm.truncate(comm.trim_ascii_end().len());
    Some(comm)
}

/// Started by systemd as a service's main process (of any `Type=`): it set
/// `INVOCATION_ID`, and it is the parent. The variable alone is inherited
/// by everything a service starts, such as the shells of a terminal that
/// runs as a user service.
pub(crate) fn under_systemd() -> bool {
    let invoked = std::env::var_os(INVOCATION_ID_VAR).is_some_and(|id| !id.is_empty());
    invoked && parent_name().is_some_and(|name| name == b"systemd")
}

/// The sockets passed by socket activation, with their names, if they are
/// meant for `pid` (this process, or the keeper that started it); the
/// variables are removed either way, so that no later process sees stale
/// ones. `None` without socket activation.
pub(crate) fn take_listen_fds(pids: &[u32]) -> Option<(u32, Vec<String>)> {
    let listen_pid = std::env::var(LISTEN_PID_VAR).ok();
    let count = std::env::var(LISTEN_FDS_VAR).ok();
    let names = std::env::var(LISTEN_FDNAMES_VAR).ok();
    for var in [LISTEN_PID_VAR, LISTEN_FDS_VAR, LISTEN_FDNAMES_VAR] {
        remove(var);
    }
    let listen_pid: u32 = listen_pid?.trim().parse().ok()?;
    if !pids.contains(&listen_pid) {
        return None;
    }
    let count: u32 = count?.trim().parse().ok()?;
    // sd_listen_fds_with_names(3): "unknown" for each fd when unnamed.
    let mut names: Vec<String> = match names {
        Some(names) => names.split(':').map(str::to_owned).collect(),
        None => Vec::new(),
    };
    names.resize(count as usize, "unknown".to_owned());
    Some((count, names))
}

/// Reads the fd channel's path and removes it from the environment, so that
/// it reaches no process this one starts.
pub(crate) fn take(from_flag: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(fd_socket) = from_flag {
        return Ok(fd_socket.to_path_buf());
    }
    let fd_socket = std::env::var_os(FD_SOCKET_VAR);
    remove(FD_SOCKET_VAR);
    fd_socket
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .ok_or(Error::MissingEnvironment { var: FD_SOCKET_VAR })
}

/// What the old process tells the new one in KEY.
pub(crate) struct Terms {
    pub(crate) secret: Secret,
    /// The transfer timeout: how long either side waits for the other's
    /// next message in steps 3 and 4, and for the whole of steps 6 to 8.
    pub(crate) timeout: Duration,
    pub(crate) limits: Limits,
}

impl Terms {
    pub(crate) fn key(&self) -> Key {
        Key {
            secret: *self.secret.bytes(),
            // Milliseconds to spare: u64::MAX of them is half a billion
            // years, so saturating loses nothing anyone waits for.
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            max_state_bytes: self.limits.state_bytes,
            max_fds: self.limits.fds,
        }
    }

    pub(crate) fn from_key(key: Key) -> Terms {
        Terms {
            secret: Secret::from_bytes(key.secret),
            timeout: Duration::from_millis(key.timeout_ms),
            limits: Limits {
                state_bytes: key.max_state_bytes,
                // A newer old process may allow more; this one's ceiling
                // is what its fd transfer can take.
                fds: key.max_fds.min(MAX_FDS),
            },
        }
    }
}

fn remove(var: &str) {
    // Reading is safe with threads; only a variable that is there needs
    // removing, and only then is a threaded process worth a warning.
    if std::env::var_os(var).is_none() {
        return;
    }
    if !single_threaded() {
        log::warn!(
            "mitosis: init was called after other threads started, so {var} stays in the \
             environment (it holds no secret); call mitosis::init first thing in main"
        );
        return;
    }
    // SAFETY: `remove_var` is only unsound when another thread reads or
    // writes the environment at the same time; this process has exactly one
    // thread, checked just above, and it is this one.
    unsafe { std::env::remove_var(var) };
}

/// Whether this process has exactly one thread, so that it may change its
/// environment or signal mask for all of it.
pub(crate) fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count() == 1)
        .unwrap_or(false)
}

/// The path this process was started from, as it was given to `execve`,
/// made absolute against the working directory it had when first asked.
///
/// Not `/proc/self/exe` or `std::env::current_exe()`: after a rebuild those
/// name the old, deleted file (with a ` (deleted)` suffix), and through a
/// symlink they name its target, so a `current -> release-N` switch would be
/// missed. The `execve` path names whatever is at that path now.
pub(crate) fn start_path() -> &'static Path {
    static START: OnceLock<PathBuf> = OnceLock::new();
    START.get_or_init(|| {
        let execfn = Path::new(OsStr::from_bytes(rustix::param::linux_execfn().to_bytes()));
        if execfn.as_os_str().is_empty() {
            return exe_without_deleted_suffix();
        }
        if execfn.is_absolute() {
            return execfn.to_path_buf();
        }
        // Without `.` components (`./bot` started in /srv/bot is
        // /srv/bot/bot); `..` stays, since a symlink may precede it.
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(execfn).components().collect(),
            Err(_) => exe_without_deleted_suffix(),
        }
    })
}

/// The fallback when the `execve` path is unknown: `/proc/self/exe` without
/// the ` (deleted)` suffix the kernel adds once the file is replaced.
fn exe_without_deleted_suffix() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(path) => PathBuf::from(OsStr::from_bytes(path)),
        None => exe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_of_duration_max_crosses_as_no_limit() {
        let terms = Terms {
            secret: Secret::generate().unwrap(),
            timeout: Duration::MAX,
            limits: Limits::default(),
        };
        let key = terms.key();
        assert_eq!(key.timeout_ms, u64::MAX);
        let back = Terms::from_key(key);
        // 584 million years: no deadline on either side.
        assert_eq!(back.timeout, Duration::from_millis(u64::MAX));
        assert_eq!(back.limits, Limits::default());
    }
}
