//! A signal that starts an upgrade, delivered as an event in the
//! program's own loop.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use signal_hook::SigId;

use crate::error::Error;

/// The signals that triggers wait for now, in this process, for the next
/// generation to ignore until it has its own triggers.
static TRIGGERS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A signal turned into an event: its fd becomes readable when the signal
/// arrives, for the program's own `poll`, epoll or async loop, and
/// [`fired`](Trigger::fired) says whether it has. The signal handler only
/// writes a byte; the upgrade runs in the program's loop, between two
/// passes, like any other event.
///
/// The convention for binary upgrades is `SIGUSR2` (nginx, unicorn, puma);
/// under systemd, `ExecReload=kill -USR2 $MAINPID` sends it. Signals that
/// arrive while the program is already upgrading are merged into one event;
/// a program that drains it then starts no second upgrade.
///
/// A process started by an upgrade ignores its predecessor's trigger
/// signals from its first instruction until it sets up its own trigger, so
/// that a signal meant to start an upgrade never kills a new generation.
///
/// ```no_run
/// use rustix::event::{PollFd, PollFlags, poll};
///
/// let trigger = mitosis::supervisor::Trigger::signal(libc::SIGUSR2)?;
/// loop {
///     let mut fds = [PollFd::new(&trigger, PollFlags::IN)];
///     poll(&mut fds, None).ok();
///     if trigger.fired() {
///         // start an upgrade: mitosis::prepare(&state), ...
///     }
/// }
/// # Ok::<(), mitosis::Error>(())
/// ```
#[derive(Debug)]
pub struct Trigger {
    signal: i32,
    events: UnixStream,
    registration: SigId,
}

impl Trigger {
    /// Waits for `signal` from now on, instead of its default action. Fails
    /// for the signals no handler may take (`SIGKILL`, `SIGSTOP`) and the
    /// ones that report faults (`SIGSEGV`, `SIGILL`, `SIGFPE`).
    ///
    /// ```no_run
    /// let trigger = mitosis::supervisor::Trigger::signal(libc::SIGUSR2)?;
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn signal(signal: i32) -> Result<Trigger, Error> {
        let failed = |source| Error::Supervisor {
            action: format!("wait for signal {signal} as an upgrade trigger"),
            source,
        };
        let (events, wake) = UnixStream::pair().map_err(failed)?;
        events.set_nonblocking(true).map_err(failed)?;
        let registration = signal_hook::low_level::pipe::register(signal, wake).map_err(failed)?;
        lock().push(signal);
        Ok(Trigger {
            signal,
            events,
            registration,
        })
    }

    /// Whether the signal arrived since the last call; it does not block.
    /// Several signals in between count as one.
    ///
    /// ```no_run
    /// # let trigger = mitosis::supervisor::Trigger::signal(libc::SIGUSR2)?;
    /// if trigger.fired() {
    ///     // start an upgrade
    /// }
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn fired(&self) -> bool {
        let mut fired = false;
        let mut bytes = [0u8; 64];
        loop {
            match (&self.events).read(&mut bytes) {
                Ok(0) => return fired,
                Ok(_) => fired = true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return fired,
            }
        }
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.registration);
        let mut triggers = lock();
        if let Some(at) = triggers.iter().position(|&signal| signal == self.signal) {
            triggers.remove(at);
        }
    }
}

impl AsFd for Trigger {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

impl AsRawFd for Trigger {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<i32>> {
    TRIGGERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The signals the next generation should ignore until it has its own
/// triggers.
pub(crate) fn trigger_signals() -> Vec<i32> {
    let mut signals = lock().clone();
    signals.sort_unstable();
    signals.dedup();
    signals
}

/// In a process started by an upgrade, before anything else: the old
/// process's trigger signals are ignored (`SIG_IGN`) until this process
/// registers its own trigger, which replaces that disposition. Without
/// this, their default action (for `SIGUSR2`: terminate) would kill a new
/// generation that a signal reaches before its program has set up.
pub(crate) fn ignore_until_claimed(signals: &[i32]) {
    for &signal in signals {
        if signal <= 0 || signal_hook::consts::FORBIDDEN.contains(&signal) {
            continue;
        }
        // SAFETY: SIG_IGN runs no code in this process; nothing else here
        // has a handler for this signal yet (no Trigger exists before
        // `arrive` returns), so no registration is overwritten.
        let previous = unsafe { libc::signal(signal, libc::SIG_IGN) };
        if previous == libc::SIG_ERR {
            log::debug!("mitosis: could not ignore signal {signal} until the program's trigger");
        }
    }
}
