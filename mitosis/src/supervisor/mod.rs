//! Living under a supervisor: systemd, a container's PID 1, a terminal, or
//! a supervisor that watches a pid (runit, s6, daemontools).
//!
//! Most of it needs nothing from the program:
//!
//! - **systemd, `Type=notify`.** When `NOTIFY_SOCKET` is set, the old
//!   process says `RELOADING=1` when an upgrade starts, hands the main pid
//!   over with `MAINPID=<new pid>` once the new process has taken over and
//!   before it lets go, and says `READY=1` again after a rollback; the new
//!   process says `READY=1` once the old one has let go. systemd accepts
//!   each of these from the main process under the default
//!   `NotifyAccess=main`. The program says [`ready`] once, at first start.
//! - **Socket activation.** The sockets systemd passes are taken, by name,
//!   with [`activated`], into the state; later generations receive them in
//!   the handover like any other fd.
//! - **PID 1, and supervisors that watch a pid.** Their pid must outlive
//!   every upgrade, so the first process becomes a *keeper*: it starts the
//!   program as its child, holds the pid, reaps orphans, forwards signals
//!   to the generation that serves, and exits with that generation's
//!   status. It is automatic as PID 1, under systemd without
//!   `NOTIFY_SOCKET`, and as the child of tini (`docker run --init`),
//!   dumb-init, catatonit, runit's `runsv`, s6's `s6-supervise` or
//!   daemontools' `supervise`; `MITOSIS_KEEPER=on` asks for it anywhere
//!   else (a pid file, another supervisor), `MITOSIS_KEEPER=off` never.
//! - **Terminals.** Every new process starts a session of its own, so the
//!   end of the old process's terminal session (a session leader's exit,
//!   tmux closing its pane, `ssh -t` disconnecting) does not send it
//!   SIGHUP. Its stdout and stderr stay where the old process's went.
//!
//! A [`Trigger`] turns a signal (by convention `SIGUSR2`) into an event the
//! program waits for in its own loop, to start an upgrade.

mod activation;
mod keeper;
mod notify;
mod trigger;

pub use activation::activated;
pub use trigger::Trigger;

pub(crate) use notify::{handed_over, supervised, took_over, upgrade_ended, upgrade_starting};
pub(crate) use trigger::trigger_signals;

use crate::env::{self, KeeperSwitch};
use crate::error::Error;

/// Tells the service manager that the program serves: `READY=1` on
/// `NOTIFY_SOCKET`. Call it once, at first start, when the program
/// accepts requests; a process started by an upgrade need not call it,
/// because mitosis says it for it. Without `NOTIFY_SOCKET` (no systemd,
/// no keeper) it does nothing.
///
/// ```no_run
/// # fn main() -> Result<(), mitosis::Error> {
/// let state = match mitosis::init::<u64>()? {
///     Some(state) => state,
///     None => {
///         // bind, connect, load...
///         mitosis::supervisor::ready()?;
///         0
///     }
/// };
/// # Ok(()) }
/// ```
pub fn ready() -> Result<(), Error> {
    notify::ready()
}

/// What the new process does first, before it connects: leave the old
/// process's terminal session, and ignore the signals that start upgrades
/// until the program sets up its own trigger.
pub(crate) fn arriving(trigger_signals: Option<&[i32]>) {
    terminal_session_of_its_own();
    trigger::ignore_until_claimed(&env::take_trigger_signals(trigger_signals));
}

/// What a process does at first start, when no upgrade started it: become
/// a keeper if asked or needed (in the keeper, this never returns), and
/// take the sockets systemd passed.
pub(crate) fn first_start() -> Result<(), Error> {
    let (switch, kept_by) = env::take_keeper_switch()?;
    if kept_by.is_some() {
        // Started by a keeper: out of the keeper's process group and
        // terminal, like every later generation, so that signals reach it
        // once, through the keeper.
        terminal_session_of_its_own();
    } else if keeper_wanted(switch) {
        keeper::become_keeper()?;
    }
    let this = std::process::id();
    activation::take_passed_sockets(
        &[Some(this), kept_by]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
    );
    Ok(())
}

/// The safe choice: a keeper where the pid must outlive the process that
/// holds it and nothing else would carry it over.
fn keeper_wanted(switch: KeeperSwitch) -> bool {
    match switch {
        KeeperSwitch::On => true,
        KeeperSwitch::Off => false,
        // As PID 1 its exit ends the namespace. Under systemd without a
        // notification socket (Type=simple or exec), the main pid cannot
        // be handed over, and its exit stops the unit. Under tini or a
        // runit-style supervisor, the parent takes its exit for the
        // service's.
        KeeperSwitch::Auto => {
            rustix::process::getpid().is_init()
                || (env::under_systemd() && env::notify_socket().is_none())
                || env::parent_watches_the_pid()
        }
    }
}

/// `setsid`: a session, and a process group, of its own, without a
/// controlling terminal. It fails only for a process group leader, which a
/// freshly started process is not.
fn terminal_session_of_its_own() {
    if let Err(error) = rustix::process::setsid() {
        log::debug!("mitosis: setsid: {error}; staying in the old process's session");
    }
}
