//! Upgrades, hand-overs and triggers that are awaited on tokio.
//!
//! Nothing here adds a new mechanism: each future waits, through the
//! runtime's reactor, for the same fd or outcome that the blocking API
//! waits for, so the two APIs cannot disagree about when something is
//! ready.
//!
//! - [`Upgrade::ready`] watches a duplicate of the `Upgrade`'s fd with an
//!   `AsyncFd`, and asks [`Upgrade::is_ready`] each time it turns readable.
//!   A duplicate rather than the fd itself: the future needs `&mut` access
//!   to the `Upgrade` for `is_ready` while the registration lives, and two
//!   futures on one fd would collide in epoll (`EEXIST`).
//! - `Split` has no fd to watch once the handover runs (the handover thread
//!   closes the bell before it delivers), so [`SplitFuture`] waits for it
//!   with [`Split::wait`] on tokio's blocking pool, and hands the outcome
//!   over through a slot that outlives the future: a future dropped after
//!   the hand-over started cannot make an outcome, or a state carried back,
//!   vanish without a log record.
//! - [`Trigger::recv`] watches a duplicate of the trigger's fd, and asks
//!   [`Trigger::fired`].

use std::future::{Future, IntoFuture};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::error::{Error, Step};
use crate::supervisor::Trigger;
use crate::{Outcome, Split, Upgrade};

/// Registers a duplicate of `fd` with the current runtime's reactor, for
/// readability.
// tokio 1.53.3 deprecates `with_interest` because an arbitrary `AsRawFd`
// may close or swap its fd while registered. An `OwnedFd` cannot: it owns
// the fd until the `AsyncFd` drops it. Its replacement, `unsafe` for that
// reason, only exists from 1.53.3, and this crate supports tokio 1.44.
#[allow(deprecated)]
fn watch(fd: impl AsFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd.as_fd().try_clone_to_owned()?, Interest::READABLE)
}

impl<S> Upgrade<S> {
    /// Waits, without blocking the runtime, until the new process is ready
    /// (when [`is_ready`](Upgrade::is_ready) would say `Ok(true)`): then
    /// hand over with [`hand_over`](Upgrade::hand_over). With the `tokio`
    /// feature.
    ///
    /// Meant for `tokio::select!`, next to the program's own work. It is
    /// cancellation-safe: a future dropped before it resolves leaves the
    /// `Upgrade` as it was, and the next call picks up where it left off
    /// (a readiness or failure that arrived meanwhile is not lost). To call
    /// the upgrade off, drop the `Upgrade`: the new process is killed and
    /// reaped (dropping blocks for those milliseconds), and the state,
    /// which [`prepare`](crate::prepare) only borrowed, never left the
    /// program.
    ///
    /// `Err` is, as with `is_ready`, the new process's failure, once: it
    /// has been killed and reaped, and asked again, `ready` says
    /// [`Error::AlreadyFailed`]. Or, rarely, [`Error::Io`]: the runtime
    /// could not watch the `Upgrade`'s fd (the process is out of fds); the
    /// new process then still runs, and dropping the `Upgrade` stops it.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled (`#[tokio::main]` enables
    /// it), as tokio's own sockets do.
    ///
    /// ```no_run
    /// # async fn serve_one(_: &mut u64) {}
    /// # async fn demo() -> Result<(), mitosis::Error> {
    /// let mut state: u64 = 0;
    /// let mut upgrade = mitosis::prepare(&state)?;
    /// let ready = loop {
    ///     tokio::select! {
    ///         ready = upgrade.ready() => break ready,
    ///         () = serve_one(&mut state) => {}
    ///     }
    /// };
    /// match ready {
    ///     Ok(()) => match upgrade.hand_over(state).await {
    ///         mitosis::Outcome::Done { .. } => std::process::exit(0),
    ///         mitosis::Outcome::Failed { state, error } => { /* carry on with state */ }
    ///     },
    ///     // The new process did not start; the state never left.
    ///     Err(error) => log::error!("upgrade failed: {error}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ready(&mut self) -> Result<(), Error> {
        // Already known: no registration, and no fd is duplicated, which
        // matters in a loop that makes a new future on every pass.
        if self.is_ready()? {
            return Ok(());
        }
        let bell = watch(&*self).map_err(Error::io(Step::Ready))?;
        loop {
            let mut guard = bell.readable().await.map_err(Error::io(Step::Ready))?;
            // The handover thread records the readiness before it rings,
            // so a readable fd means `is_ready` knows; `false` here is a
            // spurious wake-up, and the ring to come is a new edge.
            if self.is_ready()? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

impl Trigger {
    /// Waits, without blocking the runtime, until the signal arrives, and
    /// consumes it like [`fired`](Trigger::fired): signals that arrived
    /// before the call count, several count as one. With the `tokio`
    /// feature.
    ///
    /// Meant for `tokio::select!`, next to the program's own work, and
    /// cancellation-safe: a future dropped before it resolves consumes
    /// nothing, so the signal is still there for the next call. `Err` means
    /// the runtime could not watch the trigger's fd (the process is out of
    /// fds); the trigger itself still works.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled, as tokio's own sockets do.
    ///
    /// ```no_run
    /// # async fn serve_one() {}
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let trigger = mitosis::supervisor::Trigger::signal(libc::SIGUSR2)?;
    /// loop {
    ///     tokio::select! {
    ///         fired = trigger.recv() => {
    ///             fired?;
    ///             // start an upgrade: mitosis::prepare(&state), ...
    ///         }
    ///         () = serve_one() => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn recv(&self) -> io::Result<()> {
        if self.fired() {
            return Ok(());
        }
        let events = watch(self)?;
        loop {
            let mut guard = events.readable().await?;
            if self.fired() {
                return Ok(());
            }
            // Drained (by `fired` here or elsewhere): wait for the next
            // byte, which the signal handler writes as a new edge.
            guard.clear_ready();
        }
    }
}

#[cfg(feature = "control")]
impl crate::control::Control {
    /// Waits, without blocking the runtime, for the next upgrade request,
    /// serving the socket meanwhile as [`request`](Self::request) does
    /// (status, bad input, silent clients). With the `tokio` and `control`
    /// features.
    ///
    /// Meant for `tokio::select!`; it is cancellation-safe: a request is
    /// returned in the same poll that reads it, so a dropped future loses
    /// none. `Err` means the runtime could not watch the socket's fd (the
    /// process is out of fds).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled, as tokio's own sockets do.
    ///
    /// ```no_run
    /// # async fn serve_one() {}
    /// # async fn demo(mut control: mitosis::control::Control) -> std::io::Result<()> {
    /// let state = 0u64;
    /// loop {
    ///     tokio::select! {
    ///         request = control.recv() => {
    ///             let upgrade = request?.prepare(&mitosis::SplitOptions::new(), &state);
    ///             // serve while `upgrade.ready().await`, then hand over
    ///         }
    ///         () = serve_one() => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> io::Result<crate::control::Request> {
        if let Some(request) = self.request() {
            return Ok(request);
        }
        let events = watch(&*self)?;
        loop {
            let mut guard = events.readable().await?;
            // Cleared before serving, never after: whatever arrives while
            // `request` runs is either served by it or marks the fd ready
            // again.
            guard.clear_ready();
            if let Some(request) = self.request() {
                return Ok(request);
            }
        }
    }
}

impl<S: Send + 'static> IntoFuture for Split<S> {
    type Output = Outcome<S>;
    type IntoFuture = SplitFuture<S>;

    /// Awaits the outcome without blocking the runtime; see
    /// [`SplitFuture`].
    fn into_future(self) -> SplitFuture<S> {
        SplitFuture {
            pid: self.pid(),
            stage: Stage::Start(Some(self)),
            handoff: Arc::new(Mutex::new(Handoff {
                outcome: None,
                dropped: false,
            })),
        }
    }
}

/// A [`Split`] being awaited: `mitosis::split(state).await` and
/// `upgrade.hand_over(state).await` resolve to its [`Outcome`], without
/// blocking the runtime. With the `tokio` feature.
///
/// It waits with [`Split::wait`] on tokio's blocking pool, from its first
/// poll on (a split that failed at once resolves without it). It works in
/// both runtime flavours, and panics outside a tokio runtime.
///
/// # Dropping it
///
/// The hand-over started when the state was moved in (by [`split`] or
/// [`Upgrade::hand_over`]), so dropping this future does not call it off:
/// the new process takes over or fails all the same, and the program no
/// longer hears which. If it took over, this process holds a state whose
/// connections now point at `/dev/null`, and should exit. If it failed, the
/// state came back, with no one to give it to: it is dropped, closing its
/// connections. Both are logged (`info` and `warn`), with the new process's
/// pid. So do not drop it: await it outside `select!`, and to bound how
/// long the transfer may take, set
/// [`SplitOptions::transfer_timeout`](crate::SplitOptions::transfer_timeout)
/// rather than wrapping it in `tokio::time::timeout`. Before the hand-over
/// there is nothing to lose: the state stays with the program while
/// [`Upgrade::ready`] is awaited or dropped.
///
/// [`split`]: crate::split
///
/// ```no_run
/// # async fn demo(state: u64) {
/// let state = match mitosis::split(state).await {
///     mitosis::Outcome::Done { .. } => std::process::exit(0),
///     mitosis::Outcome::Failed { state, error } => {
///         log::error!("upgrade failed: {error}");
///         state
///     }
/// };
/// # }
/// ```
#[must_use = "futures do nothing unless awaited; dropping it loses the outcome (see Dropping it)"]
pub struct SplitFuture<S> {
    pid: Option<u32>,
    stage: Stage<S>,
    handoff: Arc<Mutex<Handoff<S>>>,
}

enum Stage<S> {
    /// Not polled yet; taken by the first poll.
    Start(Option<Split<S>>),
    /// The blocking task waits for the outcome, then puts it in the
    /// handoff.
    Waiting(JoinHandle<()>),
    /// The outcome was returned.
    Done,
}

/// Where the blocking task leaves the outcome, and where it learns that
/// nobody will take it.
struct Handoff<S> {
    outcome: Option<Outcome<S>>,
    /// The future was dropped before it took the outcome.
    dropped: bool,
}

fn lock<S>(handoff: &Mutex<Handoff<S>>) -> MutexGuard<'_, Handoff<S>> {
    // Nothing panics while holding it, and the slot is whole if something
    // did.
    handoff
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs what became of an outcome that the program no longer waited for,
/// and lets it go.
fn unheard<S>(pid: Option<u32>, outcome: Outcome<S>) {
    match outcome {
        Outcome::Done { pid } => log::info!(
            "mitosis: pid {pid} took over, but the program had dropped the future awaiting the \
             hand-over; this process should exit"
        ),
        Outcome::Failed { state, error } => {
            log::warn!(
                "mitosis: the hand-over to pid {pid:?} failed ({error}), but the program had \
                 dropped the future awaiting it, so the state that came back is dropped and its \
                 connections close; await the hand-over to the end to keep it"
            );
            drop(state);
        }
    }
}

// Nothing in it is ever pinned in place: the state sits in a `Split` (or in
// the handoff) and moves as a value, and the JoinHandle is Unpin itself.
impl<S> Unpin for SplitFuture<S> {}

impl<S: Send + 'static> Future for SplitFuture<S> {
    type Output = Outcome<S>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<S>> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Start(split) => {
                    let mut split = split.take().expect("a Split is started once");
                    if let Some(outcome) = split.try_wait() {
                        this.stage = Stage::Done;
                        return Poll::Ready(outcome);
                    }
                    let handoff = Arc::clone(&this.handoff);
                    let pid = this.pid;
                    let task = tokio::task::spawn_blocking(move || {
                        let outcome = split.wait();
                        let mut slot = lock(&handoff);
                        if slot.dropped {
                            drop(slot);
                            unheard(pid, outcome);
                        } else {
                            slot.outcome = Some(outcome);
                        }
                    });
                    this.stage = Stage::Waiting(task);
                }
                Stage::Waiting(task) => {
                    let finished = ready!(Pin::new(task).poll(cx));
                    this.stage = Stage::Done;
                    if let Err(error) = finished {
                        if error.is_panic() {
                            std::panic::resume_unwind(error.into_panic());
                        }
                        // Only a runtime that shuts down cancels a blocking
                        // task before it runs, and then this future's own
                        // task is dropped with it rather than polled.
                        panic!(
                            "mitosis: the hand-over's blocking task was cancelled (the runtime is \
                             shutting down), so its outcome is lost: {error}"
                        );
                    }
                    let outcome = lock(&this.handoff).outcome.take();
                    return Poll::Ready(outcome.expect("the blocking task leaves the outcome"));
                }
                Stage::Done => panic!("a SplitFuture polled after it returned its outcome"),
            }
        }
    }
}

impl<S> Drop for SplitFuture<S> {
    fn drop(&mut self) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        // Not started: dropping the Split below is the same as dropping it
        // unawaited, which the handover thread logs.
        let mut slot = lock(&self.handoff);
        slot.dropped = true;
        // Finished but not taken: the last poll raced with the drop.
        if let Some(outcome) = slot.outcome.take() {
            drop(slot);
            unheard(self.pid, outcome);
        }
    }
}

impl<S> std::fmt::Debug for SplitFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitFuture")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "upgrade_tests.rs"]
mod tests;
