//! Starting the new binary (PROTOCOL.md, step 1).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use rustix::io::{FdFlags, fcntl_setfd};

use crate::args;
use crate::env;
use crate::error::{Error, Step};
use crate::handover::{Encoder, Handover};

/// Makes every fd in `state` close-on-exec before the new process is
/// started. The new process receives them in step 7; one that it also
/// inherited at spawn (a socket systemd passed with `LISTEN_FDS`, an
/// `OwnedFd` from a C library) would stay open in it, and in every later
/// generation, after the state had let it go.
pub(crate) fn close_on_exec<S: Handover>(state: &S) -> Result<(), Error> {
    without_panics(|| {
        // A state that its own encode refuses is refused here, in step 1,
        // before any process starts.
        let fds = Encoder::fds_of(state).map_err(|error| match error {
            Error::UnreadBytes { unread, max, .. } => Error::UnreadBytes {
                step: Step::Spawn,
                unread,
                max,
            },
            error => error,
        })?;
        let mut numbers: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        numbers.sort_unstable();
        numbers.dedup();
        // One system call for each run of consecutive numbers, which is
        // how a program's fds usually lie: 10,000 of them in one or a few.
        for run in numbers.chunk_by(|a, b| b - a == 1) {
            let (first, last) = (run[0], run[run.len() - 1]);
            set_close_on_exec(first, last).map_err(Error::io(Step::Spawn))?;
        }
        Ok(())
    })
}

/// Sets close-on-exec on the fds `first..=last`, each of which the state
/// owns: with `close_range` (Linux 5.11), or one `fcntl` each before that.
fn set_close_on_exec(first: RawFd, last: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only
    // sets the close-on-exec flag of the open fds in the range, all of which
    // belong to the state being handed over, which this process owns.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if done == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if !matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(error);
    }
    for raw in first..=last {
        // SAFETY: `raw` is an fd of the state, open for as long as this
        // borrow, which the caller's `state` outlives.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        fcntl_setfd(fd, FdFlags::CLOEXEC)?;
    }
    Ok(())
}

/// Runs the state's own code (its `Handover::encode`), turning a panic into
/// an error, so that the state is never lost to it.
pub(crate) fn without_panics<T>(run: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(not a string)".into());
        Err(Error::EncodePanicked { message })
    })
}

/// What the new process is started with.
pub(crate) struct Launch<'o> {
    pub(crate) binary: PathBuf,
    pub(crate) args: Option<&'o [OsString]>,
    pub(crate) extra_args: &'o [OsString],
    pub(crate) env: &'o [(OsString, Option<OsString>)],
}

impl Launch<'_> {
    /// Starts the binary with `--mitosis=<port>:<signals>:<fd channel>`
    /// first, so that it comes before any `--` in the original arguments.
    pub(crate) fn spawn(&self, port: u16, fd_socket: &Path) -> std::io::Result<Child> {
        let mut original = std::env::args_os();
        let arg0 = original.next();
        let args = match self.args {
            Some(args) => args.to_vec(),
            None => args::without_flag(original.collect()),
        };
        let mut command = Command::new(&self.binary);
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        // Everything the new process needs rides the flag, which its own
        // children never see; the environment would pass it on to them.
        let flag = args::value(port, &crate::supervisor::trigger_signals(), fd_socket);
        command.arg(flag).args(args).args(self.extra_args);
        for (key, value) in self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        env::apply(&mut command);
        command.spawn()
    }
}
