//! [`SplitOptions`]: what a split can be told.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{Split, Upgrade};
use crate::env::{self, Limits};
use crate::handover::Handover;
use crate::lineage;

/// Options for a [`split`](crate::split): timeouts, the binary, its arguments and its
/// environment.
///
/// ```no_run
/// use std::time::Duration;
/// # let state = 0u64;
/// let handle = mitosis::SplitOptions::new()
///     .start_timeout(Duration::from_secs(120))
///     .binary("/usr/local/bin/bot")
///     .arg("--verbose")
///     .env("RUST_LOG", "debug")
///     .split(state);
/// ```
#[derive(Debug, Clone)]
pub struct SplitOptions {
    pub(super) start_timeout: Duration,
    pub(super) transfer_timeout: Duration,
    pub(super) hello_timeout: Duration,
    pub(super) limits: Limits,
    pub(super) binary: Option<PathBuf>,
    pub(super) previous_binary: bool,
    pub(super) args: Option<Vec<OsString>>,
    pub(super) extra_args: Vec<OsString>,
    pub(super) env: Vec<(OsString, Option<OsString>)>,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions::new()
    }
}

impl SplitOptions {
    /// The defaults: a start timeout of 60 seconds, a transfer timeout of 5
    /// seconds, a hello timeout of 1 second, at most 4 GiB of state and 1,048,576 fds, and the binary this
    /// process was started from, with its arguments and its environment.
    ///
    /// ```
    /// let options = mitosis::SplitOptions::new();
    /// ```
    pub fn new() -> SplitOptions {
        SplitOptions {
            start_timeout: env::DEFAULT_START_TIMEOUT,
            transfer_timeout: env::DEFAULT_TRANSFER_TIMEOUT,
            hello_timeout: env::DEFAULT_HELLO_TIMEOUT,
            limits: Limits::default(),
            binary: None,
            previous_binary: false,
            args: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// How long the new process has to become ready: from spawn, through
    /// its own start-up and the handshake, to READY (steps 1 to 5). With
    /// [`prepare`](crate::prepare) this process keeps serving meanwhile, so
    /// the default is generous: 60 seconds. After it the new process is
    /// killed and reaped, and the upgrade fails with
    /// [`Error::Timeout`](crate::Error::Timeout). `Duration::MAX` means no
    /// limit.
    ///
    /// ```
    /// mitosis::SplitOptions::new().start_timeout(std::time::Duration::from_secs(300));
    /// ```
    pub fn start_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.start_timeout = timeout;
        self
    }

    /// How long the transfer may take: from the hand-over to the new
    /// process's COMMIT (steps 6 to 8), the time in which nobody serves.
    /// The default is tight: 5 seconds. After it the new process is killed
    /// and the state comes back. The new process obeys the same timeout
    /// while it waits for this one. `Duration::MAX` means no limit.
    ///
    /// ```
    /// mitosis::SplitOptions::new().transfer_timeout(std::time::Duration::from_secs(20));
    /// ```
    pub fn transfer_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.transfer_timeout = timeout;
        self
    }

    /// Sets both the start and the transfer timeout, which together
    /// replace the one commit timeout of earlier versions.
    ///
    /// ```
    /// # #![allow(deprecated)]
    /// mitosis::SplitOptions::new().commit_timeout(std::time::Duration::from_secs(3));
    /// ```
    #[deprecated(note = "use start_timeout and transfer_timeout")]
    pub fn commit_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.start_timeout(timeout).transfer_timeout(timeout)
    }

    /// How long any connection to the handover port has to prove the secret
    /// before it is dropped. `Duration::MAX` means no limit (the start
    /// timeout still bounds the wait for the new process).
    ///
    /// ```
    /// mitosis::SplitOptions::new().hello_timeout(std::time::Duration::from_millis(200));
    /// ```
    pub fn hello_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.hello_timeout = timeout;
        self
    }

    /// The most encoded bytes the state may take; default 4 GiB. A bigger
    /// state fails the handover with
    /// [`Error::LimitExceeded`](crate::Error::LimitExceeded) in both
    /// processes, and comes back. The new process enforces the same limit.
    ///
    /// ```
    /// mitosis::SplitOptions::new().max_state_bytes(64 << 20);
    /// ```
    pub fn max_state_bytes(&mut self, bytes: u64) -> &mut Self {
        self.limits.state_bytes = bytes;
        self
    }

    /// The most fds the state may hold; by default, and at most, 1,048,576
    /// (Linux's default `nr_open`): a larger value counts as that. More fail
    /// the handover with
    /// [`Error::LimitExceeded`](crate::Error::LimitExceeded) in both
    /// processes, and the state comes back. The new process enforces the
    /// same limit.
    ///
    /// ```
    /// mitosis::SplitOptions::new().max_fds(10_000);
    /// ```
    pub fn max_fds(&mut self, fds: u64) -> &mut Self {
        self.limits.fds = fds.min(env::MAX_FDS);
        self
    }

    /// Runs this binary instead of the one this process was started from.
    ///
    /// ```
    /// mitosis::SplitOptions::new().binary("/opt/bot/current/bot");
    /// ```
    pub fn binary(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.binary = Some(path.into());
        self.previous_binary = false;
        self
    }

    /// Runs the build this process was upgraded from, to undo a bad
    /// upgrade, even after its file on disk has been replaced or deleted:
    /// every generation receives its predecessor's executable as an open
    /// handle. The new process upgrades later from the path that build
    /// upgraded from, as it did. A process that started fresh, or whose predecessor's
    /// build of mitosis sent no handle, has no previous build: the upgrade
    /// then fails with [`Error::NoPreviousBinary`](crate::Error::NoPreviousBinary).
    ///
    /// ```no_run
    /// # let state = 0u64;
    /// let outcome = mitosis::SplitOptions::new().previous_binary().split(state).wait();
    /// ```
    pub fn previous_binary(&mut self) -> &mut Self {
        self.previous_binary = true;
        self.binary = None;
        self
    }

    /// Replaces this process's arguments (without the program name).
    ///
    /// ```
    /// mitosis::SplitOptions::new().args(["--server", "irc.example.net:6667"]);
    /// ```
    pub fn args<I, A>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an argument after the original (or replaced) ones.
    ///
    /// ```
    /// mitosis::SplitOptions::new().arg("--upgraded");
    /// ```
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Sets an environment variable for the new process.
    ///
    /// ```
    /// mitosis::SplitOptions::new().env("RUST_LOG", "info");
    /// ```
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable for the new process.
    ///
    /// ```
    /// mitosis::SplitOptions::new().env_remove("DEBUG_ONCE");
    /// ```
    pub fn env_remove(&mut self, key: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), None));
        self
    }

    /// Hands `state` over with these options; see [`split`](crate::split).
    ///
    /// ```no_run
    /// # let state = 0u64;
    /// let outcome = mitosis::SplitOptions::new().split(state).wait();
    /// ```
    pub fn split<S: Handover + Send + 'static>(&self, state: S) -> Split<S> {
        super::prepare_and_hand_over(self, state)
    }

    /// Prepares an upgrade with these options; see [`prepare`](crate::prepare).
    ///
    /// ```no_run
    /// # let state = 0u64;
    /// let upgrade = mitosis::SplitOptions::new()
    ///     .start_timeout(std::time::Duration::from_secs(300))
    ///     .prepare(&state)?;
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn prepare<S: Handover + Send + 'static>(
        &self,
        state: &S,
    ) -> Result<Upgrade<S>, crate::Error> {
        super::prepare_with(self, state, None)
    }

    /// What an upgrade with these options runs, decided once: the path to
    /// start (none when there is no previous build to go back to), the path
    /// the new process upgrades from later, and the name reports give it.
    /// The previous build runs from this process's handle; the new process
    /// then upgrades from the path that build upgraded from, as it did, and
    /// goes back in turn to this one.
    pub(super) fn target(&self) -> Target {
        match (&self.binary, self.previous_binary) {
            (_, true) => Target {
                run: lineage::previous_path(),
                upgrades_from: lineage::previous_binary().to_path_buf(),
                name: lineage::previous_name()
                    .unwrap_or_else(|| PathBuf::from("(the previous build)")),
            },
            (Some(binary), false) => Target::path(binary),
            (None, false) => Target::path(lineage::binary()),
        }
    }
}

/// See [`SplitOptions::target`].
pub(super) struct Target {
    pub(super) run: Option<PathBuf>,
    pub(super) upgrades_from: PathBuf,
    pub(super) name: PathBuf,
}

impl Target {
    fn path(binary: &std::path::Path) -> Target {
        Target {
            run: Some(binary.to_path_buf()),
            upgrades_from: binary.to_path_buf(),
            name: binary.to_path_buf(),
        }
    }
}
