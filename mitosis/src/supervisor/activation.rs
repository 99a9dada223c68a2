//! Socket activation (sd_listen_fds(3)): the sockets systemd opened for
//! the service, taken by name.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};

use crate::env;

/// systemd passes its sockets from fd 3 on.
const FIRST_FD: RawFd = 3;

/// The passed sockets not taken yet, with their names.
static PASSED: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());

/// Takes the socket that systemd passed under `name` (its `.socket`
/// unit's `FileDescriptorName=`, which defaults to the unit's name), as a
/// `TcpListener`, `UnixListener`, `UdpSocket` or `OwnedFd`. `None` when it
/// passed none by that name, or it was taken already.
///
/// systemd's order of the sockets is not stable between boots when a
/// service has several socket units, so they are matched by name, never by
/// position. They are close-on-exec, and `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` are gone from the environment once [`init`](crate::init)
/// (or [`arrive`](crate::arrive)) has run, so that no later process mistakes
/// them for its own. Only the first process takes them: put the listener in
/// the state, and every later generation receives it in the handover.
///
/// ```no_run
/// use std::net::{TcpListener, SocketAddr};
///
/// let listener = match mitosis::supervisor::activated::<TcpListener>("http") {
///     Some(listener) => listener,
///     None => TcpListener::bind("127.0.0.1:8080")?,
/// };
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn activated<T: From<OwnedFd>>(name: &str) -> Option<T> {
    let mut passed = lock();
    let at = passed
        .iter()
        .position(|(passed_name, _)| passed_name == name)?;
    let (_, fd) = passed.remove(at);
    Some(T::from(fd))
}

/// At first start: adopts the sockets passed to one of `pids` (this
/// process, or the keeper that started it), for [`activated`].
pub(super) fn take_passed_sockets(pids: &[u32]) {
    lock().extend(passed_sockets(pids));
}

/// The sockets passed to one of `pids`, with their names, close-on-exec;
/// the variables that name them are removed either way.
pub(super) fn passed_sockets(pids: &[u32]) -> Vec<(String, OwnedFd)> {
    let Some((count, names)) = env::take_listen_fds(pids) else {
        return Vec::new();
    };
    let mut passed = Vec::new();
    for (offset, name) in (0..count).zip(names) {
        let Some(raw) = RawFd::try_from(offset)
            .ok()
            .and_then(|n| n.checked_add(FIRST_FD))
        else {
            break;
        };
        // SAFETY: fds from 3 to 3 + LISTEN_FDS - 1 were opened by the
        // service manager for this process (LISTEN_PID names it or its
        // keeper), and nothing in it has claimed them: this runs once, at
        // first start, before `init` returns. An fd that is not open is
        // skipped before it is wrapped.
        let open = fcntl_getfd(unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) }).is_ok();
        if !open {
            log::warn!("mitosis: socket activation passed fd {raw} ({name}), which is not open");
            continue;
        }
        // SAFETY: as above; it is open, and from here on only this OwnedFd
        // closes it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Err(error) = fcntl_setfd(&fd, FdFlags::CLOEXEC) {
            log::warn!("mitosis: could not make passed fd {raw} close-on-exec: {error}");
        }
        log::debug!("mitosis: socket activation passed fd {raw} as {name:?}");
        passed.push((name, fd));
    }
    passed
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(String, OwnedFd)>> {
    PASSED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
