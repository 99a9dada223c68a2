//! The contract between the two processes outside the wire: the variables
//! the old process puts in the new one's environment (PROTOCOL.md, step 1),
//! and the limits both enforce, with their defaults and hard ceilings.
//!
//! The old side writes it with [`Contract::apply`]; the new side reads it
//! back, and removes it, with [`Contract::take`]. Nothing else in the crate
//! names a variable.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::error::Error;
use crate::wire::handshake::Secret;

/// The secret's 128 hex digits: the new process's token, then the old one's.
const SECRET_VAR: &str = "MITOSIS_SECRET";
/// The path of the old process's fd channel socket.
const FD_SOCKET_VAR: &str = "MITOSIS_FD_SOCKET";
/// The commit timeout, in milliseconds, which the new process also obeys.
const TIMEOUT_VAR: &str = "MITOSIS_TIMEOUT_MS";
/// The handover's limits, which the new process enforces too.
const MAX_STATE_BYTES_VAR: &str = "MITOSIS_MAX_STATE_BYTES";
const MAX_FDS_VAR: &str = "MITOSIS_MAX_FDS";

/// Every variable of the contract.
const ALL: [&str; 5] = [
    SECRET_VAR,
    FD_SOCKET_VAR,
    TIMEOUT_VAR,
    MAX_STATE_BYTES_VAR,
    MAX_FDS_VAR,
];

/// How long the new process has, from spawn to commit, by default: enough
/// for a large program to start and for a 1 GiB state to cross loopback, and
/// short enough that a hung upgrade gives the connections back quickly.
pub(crate) const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What the old process tells the new one through its environment.
pub(crate) struct Contract {
    pub(crate) secret: Secret,
    pub(crate) fd_socket: PathBuf,
    pub(crate) timeout: Duration,
    pub(crate) limits: Limits,
}

impl Contract {
    /// Puts the contract in `command`'s environment.
    pub(crate) fn apply(&self, command: &mut Command) {
        command
            .env(SECRET_VAR, self.secret.to_hex())
            .env(FD_SOCKET_VAR, &self.fd_socket)
            .env(TIMEOUT_VAR, self.timeout.as_millis().to_string())
            .env(MAX_STATE_BYTES_VAR, self.limits.state_bytes.to_string())
            .env(MAX_FDS_VAR, self.limits.fds.to_string());
    }

    /// Reads the contract and removes it from the environment, so that it
    /// reaches no process this one starts.
    pub(crate) fn take() -> Result<Contract, Error> {
        let secret = std::env::var(SECRET_VAR).ok();
        let fd_socket = std::env::var_os(FD_SOCKET_VAR);
        let timeout = std::env::var(TIMEOUT_VAR).ok();
        let limit = |var: &'static str, default: u64| match std::env::var(var) {
            // Absent: an old process that predates limits; the defaults.
            Err(std::env::VarError::NotPresent) => Ok(default),
            Ok(value) => value.parse().map_err(|_| Error::MissingEnvironment { var }),
            Err(_) => Err(Error::MissingEnvironment { var }),
        };
        let defaults = Limits::default();
        let state_bytes = limit(MAX_STATE_BYTES_VAR, defaults.state_bytes);
        let fds = limit(MAX_FDS_VAR, defaults.fds);
        remove_all();
        Ok(Contract {
            secret: secret
                .as_deref()
                .and_then(Secret::from_hex)
                .ok_or(Error::MissingEnvironment { var: SECRET_VAR })?,
            fd_socket: fd_socket
                .map(PathBuf::from)
                .ok_or(Error::MissingEnvironment { var: FD_SOCKET_VAR })?,
            timeout: timeout
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis)
                .filter(|timeout| !timeout.is_zero())
                .ok_or(Error::MissingEnvironment { var: TIMEOUT_VAR })?,
            limits: Limits {
                state_bytes: state_bytes?,
                fds: fds?,
            },
        })
    }
}

fn remove_all() {
    if !single_threaded() {
        log::warn!(
            "mitosis: init was called after other threads started, so the handover's variables \
             stay in the environment; call mitosis::init first thing in main"
        );
        return;
    }
    for var in ALL {
        // SAFETY: `remove_var` is only unsound when another thread reads or
        // writes the environment at the same time; this process has exactly
        // one thread, checked just above, and it is this one.
        unsafe { std::env::remove_var(var) };
    }
}

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count() == 1)
        .unwrap_or(false)
}
