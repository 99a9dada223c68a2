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
//! Nothing else in the crate names a variable.

use std::path::{Path, PathBuf};
use std::process::Command;
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

/// Puts the fd channel's path in `command`'s environment.
pub(crate) fn apply(command: &mut Command, fd_socket: &Path) {
    command.env(FD_SOCKET_VAR, fd_socket);
}

/// Reads the fd channel's path and removes it from the environment, so that
/// it reaches no process this one starts.
pub(crate) fn take() -> Result<PathBuf, Error> {
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

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count() == 1)
        .unwrap_or(false)
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
