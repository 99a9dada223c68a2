//! Where this process comes from: its generation, the binary path it
//! upgrades from, and the build before it, kept as an open handle.
//!
//! Each old process sends its own executable to the new one, as an open
//! read-only handle with KEY (PROTOCOL.md, step 2), and the generation and
//! binary path in LINEAGE (step 4, protocol version 3). The handle keeps
//! that build runnable after `cargo build` or a deploy has replaced or
//! deleted its file: "upgrade to the previous binary" runs it through
//! `/proc/self/fd`. Each process holds at most that one extra fd; its own
//! executable it opens only when it starts a new process, through
//! `/proc/self/exe`, which the kernel keeps working for a deleted file.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::env;

/// What a new process learned from the old one. Unset in a process that
/// started fresh.
struct Lineage {
    generation: u64,
    binary: PathBuf,
    previous: Option<OwnedFd>,
    /// The path the previous build upgraded from, for a generation that
    /// goes back to it to upgrade from again.
    previous_binary: PathBuf,
}

static LINEAGE: OnceLock<Lineage> = OnceLock::new();

/// In a new process, once the old one has said where it comes from: its
/// generation plus one, and the path later upgrades run.
pub(crate) fn arrived(
    generation: u64,
    binary: PathBuf,
    previous: Option<OwnedFd>,
    previous_binary: PathBuf,
) {
    let or_start_path = |path: PathBuf| match path.as_os_str().is_empty() {
        true => env::start_path().to_path_buf(),
        false => path,
    };
    let _ = LINEAGE.set(Lineage {
        generation,
        binary: or_start_path(binary),
        previous,
        previous_binary: or_start_path(previous_binary),
    });
}

/// 1 for a process that started fresh; one more at each upgrade.
pub(crate) fn generation() -> u64 {
    LINEAGE.get().map_or(1, |lineage| lineage.generation)
}

/// The path an upgrade runs by default: the one this process's first
/// generation was started from (or the one an upgrade was explicitly
/// given), as it was given to `execve`. A generation started from the
/// previous build's handle has a `/proc/self/fd` path in `AT_EXECFN`, so
/// the old process's path is carried over instead.
pub(crate) fn binary() -> &'static Path {
    match LINEAGE.get() {
        Some(lineage) => &lineage.binary,
        None => env::start_path(),
    }
}

/// The path the previous build upgraded from: what a generation that goes
/// back to it upgrades from in turn, so that going back after a run-again
/// (`v3 --upgrade`) restores the program's path too.
pub(crate) fn previous_binary() -> &'static Path {
    match LINEAGE.get() {
        Some(lineage) => &lineage.previous_binary,
        None => env::start_path(),
    }
}

/// The previous build's executable, if the old process sent it.
pub(crate) fn previous() -> Option<BorrowedFd<'static>> {
    LINEAGE.get()?.previous.as_ref().map(AsFd::as_fd)
}

/// The path that runs the previous build, through this process's handle:
/// `/proc/self/fd/N`, which `execve` opens before it closes close-on-exec
/// fds, so the handle never leaks into the new process.
pub(crate) fn previous_path() -> Option<PathBuf> {
    previous().map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
}

/// Where the previous build's file was, for status reports: the kernel's
/// name for the handle (with ` (deleted)` once the file is gone).
pub(crate) fn previous_name() -> Option<PathBuf> {
    let path = previous_path()?;
    std::fs::read_link(path).ok()
}

/// This process's own executable, opened read-only and close-on-exec, to
/// send to the new process as its previous build. `/proc/self/exe` opens
/// the file this process runs, even once it has been replaced or deleted.
pub(crate) fn own_executable() -> Option<OwnedFd> {
    match File::open("/proc/self/exe") {
        Ok(file) => Some(file.into()),
        Err(error) => {
            log::debug!(
                "mitosis: cannot open /proc/self/exe ({error}); the new process will have no \
                 previous build to go back to"
            );
            None
        }
    }
}
