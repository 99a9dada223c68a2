//! The service manager's notification protocol (sd_notify(3)), spoken to
//! systemd or to the keeper, whichever `NOTIFY_SOCKET` names: when an
//! upgrade starts, when the main pid moves, and when the service is ready.
//!
//! Only the main process may speak under systemd's default
//! `NotifyAccess=main`, so the order matters: the old process, still main,
//! sends `MAINPID=<new pid>` after TAKEN and before it closes the
//! handover connection; the new process waits for that close before it
//! sends `READY=1` as the new main process.

use std::os::unix::ffi::OsStrExt;

use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use sd_notify::NotifyState;

use crate::env;
use crate::error::Error;

pub(super) fn ready() -> Result<(), Error> {
    send(&[NotifyState::Ready]).map_err(|source| Error::Supervisor {
        action: "tell the service manager READY=1 through $NOTIFY_SOCKET".into(),
        source,
    })
}

/// Whether anyone listens: a new process waits for the old one to let go
/// before its `READY=1` only then.
pub(crate) fn supervised() -> bool {
    env::notify_socket().is_some()
}

/// An upgrade starts: systemd shows the unit as reloading, and a
/// `Type=notify-reload` unit's `systemctl reload` waits for the `READY=1`
/// that ends it.
pub(crate) fn upgrade_starting() {
    if !supervised() {
        return;
    }
    let mut states = vec![NotifyState::Reloading];
    match NotifyState::monotonic_usec_now() {
        Ok(now) => states.push(now),
        Err(error) => log::debug!("mitosis: CLOCK_MONOTONIC: {error}"),
    }
    best_effort("RELOADING=1", &states);
}

/// Step 9, between TAKEN and letting go: the new process becomes the main
/// process.
pub(crate) fn handed_over(new_pid: u32) {
    best_effort("MAINPID", &[NotifyState::MainPid(new_pid)]);
}

/// The upgrade is over. After a rollback this process is still the main
/// one, and serves again.
pub(crate) fn upgrade_ended(done: bool) {
    if !done {
        best_effort("READY=1 after the rollback", &[NotifyState::Ready]);
    }
}

/// The new process has taken over and the old one has let go.
pub(crate) fn took_over() {
    best_effort("READY=1", &[NotifyState::Ready]);
}

/// Sends one notification to `NOTIFY_SOCKET`: through sd-notify for a
/// path, and here for an abstract socket (`@name`, which systemd also
/// allows, and where the keeper listens), which sd-notify 0.5 cannot reach.
pub(super) fn send(states: &[NotifyState<'_>]) -> std::io::Result<()> {
    let Some(target) = env::notify_socket() else {
        return Ok(());
    };
    let Some(name) = target.as_os_str().as_bytes().strip_prefix(b"@") else {
        return sd_notify::notify(states);
    };
    let address = SocketAddrUnix::new_abstract_name(name)?;
    let socket = datagram_socket()?;
    let message: String = states.iter().map(|state| format!("{state}\n")).collect();
    rustix::net::sendto(&socket, message.as_bytes(), SendFlags::NOSIGNAL, &address)?;
    Ok(())
}

/// A Unix datagram socket, close-on-exec: the notification protocol's.
pub(super) fn datagram_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Nothing here is worth failing an upgrade for: a service manager that
/// missed a message at worst shows a stale state, which the log explains.
fn best_effort(what: &str, states: &[NotifyState<'_>]) {
    if let Err(error) = send(states) {
        log::warn!(
            "mitosis: could not tell the service manager {what} through $NOTIFY_SOCKET: {error}"
        );
    }
}
