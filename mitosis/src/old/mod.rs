//! The old process's side: [`prepare`] starts the new binary while the
//! program serves, [`Upgrade`] says when it is ready and hands the state
//! over, and [`Split`] delivers the one [`Outcome`]; [`split`] does all of
//! it in one call.
//!
//! Read it in order: `options` (what a split can be told), `spawn` (step 1),
//! `hand_over` (steps 1 to 5, then 6 to 9, one function each), and
//! `accept` (step 2's wait for the new process among strangers).

mod accept;
mod frames;
mod hand_over;
mod options;
mod priority;
mod spawn;

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Duration;

pub use options::SplitOptions;

use rustix::process::{Signal, pidfd_send_signal};

use crate::error::{Error, Step};
use crate::handover::Handover;
use crate::report::{Listener, Tracker};
use crate::supervisor;
use hand_over::{Own, Parent};

/// Hands `state` over to a freshly started copy of this program, with the
/// default [`SplitOptions`].
///
/// It does not block: it starts the binary this process was started from
/// (the file at that path now, so a rebuilt binary runs), with this process's
/// arguments plus `--mitosis=<port>`, and returns a [`Split`] handle whose
/// [`Outcome`] says whether the new process took over. If it did not, for
/// whatever reason (the binary is missing, it crashed, it refused the state),
/// the state comes back in [`Outcome::Failed`].
///
/// The state is moved in, so nothing in this process can touch a socket
/// while it is being handed over.
///
/// ```no_run
/// # fn serve(_: &mut u64) {}
/// let mut state: u64 = 0;
/// loop {
///     serve(&mut state);
///     state = match mitosis::split(state).wait() {
///         mitosis::Outcome::Done { pid } => {
///             log::info!("pid {pid} took over");
///             return;
///         }
///         mitosis::Outcome::Failed { state, error } => {
///             log::error!("upgrade failed: {error}");
///             state
///         }
///     };
/// }
/// ```
pub fn split<S: Handover + Send + 'static>(state: S) -> Split<S> {
    SplitOptions::new().split(state)
}

/// `split`: prepare, and hand over as soon as the new process is ready.
fn prepare_and_hand_over<S: Handover + Send + 'static>(
    options: &SplitOptions,
    state: S,
) -> Split<S> {
    match prepare_with(options, &state, None) {
        Ok(upgrade) => upgrade.hand_over(state),
        Err(error) => Split::failed(state, error),
    }
}

/// Prepares an upgrade while this process goes on serving, with the
/// default [`SplitOptions`]: the two-phase form of [`split`].
///
/// It starts the new binary and returns at once. The new process starts,
/// connects, proves the handover secret, agrees on the state's schema, and
/// runs its own set-up (see [`Arrival`](crate::Arrival)), all while this
/// process keeps its state and serves. The [`Upgrade`] handle says when the
/// new process is ready, in whichever way the program waits for events: its
/// fd becomes readable (for poll, epoll, mio or tokio's `AsyncFd`),
/// [`Upgrade::is_ready`] checks without blocking, and
/// [`Upgrade::wait_ready`] blocks for at most a given time. Then, between
/// two passes of its loop, the program calls [`Upgrade::hand_over`], and the
/// service pauses only for the transfer itself.
///
/// If the new process fails before it is ready (the binary is missing, it
/// crashes, hangs past the start timeout, or refuses the schema), the
/// readiness check returns the error, naming the step, after the new
/// process has been killed and reaped; this process never stopped serving.
/// Dropping the `Upgrade` before handing over stops the new process.
///
/// `state` is only looked at, to make its fds close-on-exec before the new
/// binary starts, and to learn its type. `Err` means no upgrade could start
/// at all: another one is in flight, the state's type cannot be traced, or
/// the process is out of fds or threads.
///
/// ```no_run
/// # use std::os::fd::AsFd;
/// # fn serve_one_pass(_: &mut u64, _: Option<std::os::fd::BorrowedFd<'_>>) {}
/// let mut state: u64 = 0;
/// let mut upgrade = Some(mitosis::prepare(&state)?);
/// loop {
///     // The program's own poll loop, with the upgrade's fd among its fds.
///     serve_one_pass(&mut state, upgrade.as_ref().map(|u| u.as_fd()));
///     let Some(pending) = upgrade.as_mut() else { continue };
///     match pending.is_ready() {
///         Ok(false) => {} // still starting: keep serving
///         Ok(true) => match upgrade.take().unwrap().hand_over(state).wait() {
///             mitosis::Outcome::Done { .. } => return Ok(()),
///             mitosis::Outcome::Failed { state: back, error } => {
///                 log::error!("upgrade failed: {error}");
///                 state = back;
///             }
///         },
///         Err(error) => {
///             log::error!("the new build did not start: {error}");
///             upgrade = None;
///         }
///     }
/// }
/// # Ok::<(), mitosis::Error>(())
/// ```
pub fn prepare<S: Handover + Send + 'static>(state: &S) -> Result<Upgrade<S>, Error> {
    SplitOptions::new().prepare(state)
}

/// Prepares an upgrade with `options`: the worker thread first, then the
/// new process. What fails before the new process is started fails here;
/// what fails after arrives through the readiness check. Once the new
/// process is being started, `listener` hears how the upgrade ended,
/// before the program does; an `Err` from here it never hears.
pub(crate) fn prepare_with<S: Handover + Send + 'static>(
    options: &SplitOptions,
    state: &S,
    listener: Option<Listener>,
) -> Result<Upgrade<S>, Error> {
    let in_flight = InFlight::claim().ok_or(Error::SplitInFlight)?;
    spawn::close_on_exec(state)?;
    let own = Own::of::<S>()?;
    let (bell, worker_bell) = UnixStream::pair().map_err(Error::io(Step::Spawn))?;
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            readiness: Readiness::Preparing,
            state: None,
            dropped: false,
            finished: false,
            bell: None,
        }),
        changed: Condvar::new(),
    });
    let (job_sender, job) = mpsc::channel::<(Parent, InFlight, UnixStream, Tracker)>();
    let (outcome_sender, outcome) = mpsc::sync_channel(1);
    let transfer_timeout = options.transfer_timeout;
    let worker = {
        let shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("mitosis-upgrade".into())
            .spawn(move || {
                if let Ok((parent, in_flight, bell, tracker)) = job.recv() {
                    let worker = Worker {
                        shared,
                        bell,
                        own,
                        transfer_timeout,
                        outcome: outcome_sender,
                    };
                    worker.run(parent, in_flight, tracker);
                }
            })
            .map_err(Error::io(Step::Spawn))?
    };
    drop(worker);
    let mut child = None;
    let target = options.target();
    let mut tracker = Tracker::new(target.name.clone(), listener);
    let pid = match Parent::start(options, target) {
        Ok(parent) => {
            let pid = parent.pid();
            child = parent.pidfd().try_clone_to_owned().ok();
            tracker.started(Some(pid));
            job_sender
                .send((parent, in_flight, worker_bell, tracker))
                .unwrap_or_else(|_| unreachable!("the worker waits for its job"));
            Some(pid)
        }
        // The new build could not even start: that is the new build's
        // failure, reported like any other, through the readiness check.
        Err((error, pid)) => {
            drop(in_flight);
            log::warn!("mitosis: could not start the new process: {error}");
            tracker.started(pid);
            tracker.failed(&error);
            // No handover thread will ever run: nothing is left to stop
            // when the program drops the `Upgrade`.
            let mut slot = shared.lock();
            slot.readiness = Readiness::Failed(error);
            slot.finished = true;
            drop(slot);
            // The worker never gets this end: ring it, and close it.
            ring(&worker_bell);
            drop(worker_bell);
            pid
        }
    };
    Ok(Upgrade {
        pid,
        child,
        bell,
        shared,
        outcome: Some(outcome),
    })
}

/// The handover thread's half of an upgrade.
struct Worker<S> {
    shared: Arc<Shared<S>>,
    /// The other end of the program's `Upgrade` fd: written to when the
    /// readiness is known; closed by the program when it drops the
    /// `Upgrade`.
    bell: UnixStream,
    own: Own,
    transfer_timeout: Duration,
    outcome: mpsc::SyncSender<Outcome<S>>,
}

impl<S: Handover> Worker<S> {
    fn run(self, mut parent: Parent, in_flight: InFlight, mut tracker: Tracker) {
        let pid = parent.pid();
        let mut finished = Finished {
            shared: Arc::clone(&self.shared),
            in_flight: Some(in_flight),
        };
        if let Err(error) = parent.prepare(&self.own, self.bell.as_fd()) {
            let error = parent.give_up(error);
            // Its sockets and pidfd close before anyone hears of the
            // failure: the program then holds exactly the fds it held.
            drop(parent);
            finished.in_flight = None;
            tracker.failed(&error);
            let shared = Arc::clone(&self.shared);
            let mut slot = shared.lock();
            match slot.state.take() {
                // split(): the state is here already; give it back.
                Some(state) => {
                    drop(slot);
                    log::warn!("mitosis: handover to pid {pid} failed: {error}");
                    self.deliver(Outcome::Failed { state, error });
                }
                None if slot.dropped => {
                    log::info!("mitosis: stopped pid {pid}: {error}");
                }
                None => {
                    log::warn!(
                        "mitosis: the new process, pid {pid}, did not become ready: {error}"
                    );
                    slot.readiness = Readiness::Failed(error);
                    // Rung and closed under the lock, which the readiness
                    // check takes: a program that hears of the failure
                    // holds exactly the fds it held before.
                    let Worker { bell, .. } = self;
                    ring(&bell);
                    drop(bell);
                    drop(slot);
                    shared.changed.notify_all();
                }
            }
            return;
        }
        tracker.ready();
        self.shared.lock().readiness = Readiness::Ready;
        self.shared.changed.notify_all();
        self.ring();
        // Wait, without a deadline, for the program to hand over (or to
        // drop the Upgrade). The new process waits too, for as long as
        // this process lives.
        let state = {
            let mut slot = self.shared.lock();
            loop {
                if let Some(state) = slot.state.take() {
                    break Some(state);
                }
                if slot.dropped {
                    break None;
                }
                slot = self
                    .shared
                    .changed
                    .wait(slot)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let Some(state) = state else {
            let error = parent.give_up(accept::abandoned(Step::Ready));
            log::info!("mitosis: stopped pid {pid}: {error}");
            drop(finished);
            tracker.failed(&error);
            return;
        };
        tracker.handed_over();
        let (outcome, handed_over) = parent.hand_over(state, &self.own, self.transfer_timeout);
        if let (Outcome::Done { .. }, Some(in_flight)) = (&outcome, finished.in_flight.as_mut()) {
            in_flight.handed_over = true;
        }
        drop(finished);
        // Whoever asked hears it before the program does: after `Done` the
        // program may exit at once.
        match &outcome {
            Outcome::Done { .. } => tracker.done(),
            Outcome::Failed { error, .. } => tracker.failed(error),
        }
        self.deliver(outcome);
        // After Done: this process's copy of the handed-over state, whose
        // fds already point at /dev/null. Freeing a large state takes long
        // (a million-entry map: a fifth of a second), and nobody needs to
        // wait for it: the caller may exit at once, and the kernel frees it
        // all.
        drop(handed_over);
    }

    /// Sends the outcome. The bell is not needed any more: both ends close
    /// first, so that a program that lists its fds once it has the outcome
    /// finds none of the handover's.
    fn deliver(self, outcome: Outcome<S>) {
        self.shared.lock().bell = None;
        let Worker {
            bell,
            outcome: sender,
            ..
        } = self;
        drop(bell);
        if sender.send(outcome).is_err() {
            log::warn!(
                "mitosis: the Split handle was dropped, so the outcome (and, after a failure, \
                 the state) was dropped too"
            );
        }
    }

    fn ring(&self) {
        self.shared.changed.notify_all();
        ring(&self.bell);
    }
}

/// Makes the program's `Upgrade` fd readable, through either end of the
/// bell. `MSG_NOSIGNAL`: the program may have dropped its end, and SIGPIPE
/// must not kill it for that.
fn ring(bell: &UnixStream) {
    let _ = rustix::net::send(bell, b"!", rustix::net::SendFlags::NOSIGNAL);
}

/// Marks the handover thread done with the new process, whichever way its
/// run ends, after it has let go of the in-flight claim: a program that
/// dropped its `Upgrade` may prepare again at once.
struct Finished<S> {
    shared: Arc<Shared<S>>,
    in_flight: Option<InFlight>,
}

impl<S> Drop for Finished<S> {
    fn drop(&mut self) {
        self.in_flight = None;
        self.shared.lock().finished = true;
        self.shared.changed.notify_all();
    }
}

/// What the program's `Upgrade` (or `Split`) and the handover thread share.
struct Shared<S> {
    slot: Mutex<Slot<S>>,
    changed: Condvar,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Slot<S>> {
        // Nothing panics while holding it; and if something did, the slot
        // is still whole.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Slot<S> {
    readiness: Readiness,
    /// The state, once the program has handed it over.
    state: Option<S>,
    /// The program dropped its `Upgrade` without handing over.
    dropped: bool,
    /// The handover thread is done with the new process: it has been
    /// reaped, or has taken over.
    finished: bool,
    /// The program's end of the bell, once it has handed over: kept open
    /// here, so that dropping the `Split` does not call the handover off.
    bell: Option<UnixStream>,
}

enum Readiness {
    Preparing,
    Ready,
    Failed(Error),
    /// The failure was returned to the program.
    Reported,
}

/// An upgrade being prepared: the new process is starting while this one
/// serves. See [`prepare`].
///
/// Its fd ([`AsFd`]) becomes readable, and stays readable, once the new
/// process is ready or has failed; then [`is_ready`](Upgrade::is_ready)
/// says which. Dropping it before [`hand_over`](Upgrade::hand_over) stops
/// the new process.
///
/// ```no_run
/// # let state = 0u64;
/// let mut upgrade = mitosis::prepare(&state)?;
/// // A program without an event loop can simply block:
/// if upgrade.wait_ready(std::time::Duration::from_secs(60))? {
///     let outcome = upgrade.hand_over(state).wait();
/// }
/// # Ok::<(), mitosis::Error>(())
/// ```
#[must_use = "dropping an Upgrade stops the new process"]
pub struct Upgrade<S> {
    pid: Option<u32>,
    /// A pidfd of the new process, to stop it when the `Upgrade` is
    /// dropped.
    child: Option<OwnedFd>,
    bell: UnixStream,
    shared: Arc<Shared<S>>,
    /// Taken by `hand_over`.
    outcome: Option<mpsc::Receiver<Outcome<S>>>,
}

impl<S> Upgrade<S> {
    /// The new process's pid; `None` when it could not be started.
    ///
    /// ```no_run
    /// let upgrade = mitosis::prepare(&0u64)?;
    /// println!("starting pid {:?}", upgrade.pid());
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether the new process is ready, without blocking: `Ok(true)` when
    /// it is (hand over now), `Ok(false)` while it is still starting, and
    /// the error, once, if it failed; it has then been killed and reaped.
    /// Asked again after that, it says [`Error::AlreadyFailed`].
    ///
    /// ```no_run
    /// let mut upgrade = mitosis::prepare(&0u64)?;
    /// while !upgrade.is_ready()? { /* serve */ }
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn is_ready(&mut self) -> Result<bool, Error> {
        self.wait_ready(Duration::ZERO)
    }

    /// Like [`is_ready`](Upgrade::is_ready), but waits up to `timeout` for
    /// the new process to become ready or fail.
    ///
    /// ```no_run
    /// let mut upgrade = mitosis::prepare(&0u64)?;
    /// let ready = upgrade.wait_ready(std::time::Duration::from_millis(100))?;
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<bool, Error> {
        let slot = self.shared.lock();
        let (mut slot, _) = self
            .shared
            .changed
            .wait_timeout_while(slot, timeout, |slot| {
                matches!(slot.readiness, Readiness::Preparing)
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match std::mem::replace(&mut slot.readiness, Readiness::Reported) {
            Readiness::Preparing => {
                slot.readiness = Readiness::Preparing;
                Ok(false)
            }
            Readiness::Ready => {
                slot.readiness = Readiness::Ready;
                Ok(true)
            }
            Readiness::Failed(error) => Err(error),
            Readiness::Reported => Err(Error::AlreadyFailed),
        }
    }

    /// Hands `state` over: the pause. It does not block; the returned
    /// [`Split`] delivers the [`Outcome`]. Called before the new process is
    /// ready, the handover starts as soon as it is, as with [`split`].
    /// After a failure the state comes back in [`Outcome::Failed`].
    ///
    /// ```no_run
    /// # let state = 0u64;
    /// let mut upgrade = mitosis::prepare(&state)?;
    /// if upgrade.wait_ready(std::time::Duration::from_secs(60))? {
    ///     match upgrade.hand_over(state).wait() {
    ///         mitosis::Outcome::Done { .. } => std::process::exit(0),
    ///         mitosis::Outcome::Failed { state, error } => { /* carry on */ }
    ///     }
    /// }
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn hand_over(mut self, state: S) -> Split<S> {
        let outcome = self.outcome.take().expect("hand_over takes the Upgrade");
        let mut slot = self.shared.lock();
        let error = match std::mem::replace(&mut slot.readiness, Readiness::Reported) {
            Readiness::Failed(error) => error,
            Readiness::Reported => Error::AlreadyFailed,
            readiness => {
                slot.readiness = readiness;
                slot.state = Some(state);
                slot.bell = self.bell.try_clone().ok();
                drop(slot);
                self.shared.changed.notify_all();
                return Split {
                    pid: self.pid,
                    outcome: Delivery::Pending(outcome),
                };
            }
        };
        // The new process is gone already (reaped); its pid stays known.
        Split {
            pid: self.pid,
            outcome: Delivery::Ready(Some(Outcome::Failed { state, error })),
        }
    }
}

impl<S> Drop for Upgrade<S> {
    /// Stops the new process, and returns once it has been reaped.
    fn drop(&mut self) {
        if self.outcome.is_none() {
            return; // handed over: the handover thread carries on
        }
        {
            let mut slot = self.shared.lock();
            if slot.finished {
                return;
            }
            slot.dropped = true;
        }
        self.shared.changed.notify_all();
        // Killed at once, wherever it is; the handover thread, wherever it
        // waits, sees it die (or the bell close) and reaps it.
        if let Some(child) = &self.child {
            let _ = pidfd_send_signal(child, Signal::KILL);
        }
        let _ = self.bell.shutdown(std::net::Shutdown::Both);
        let slot = self.shared.lock();
        let (slot, _) = self
            .shared
            .changed
            .wait_timeout_while(slot, STOP_TIMEOUT, |slot| !slot.finished)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !slot.finished {
            log::warn!(
                "mitosis: the new process, pid {:?}, was killed but not reaped within {STOP_TIMEOUT:?}",
                self.pid
            );
        }
    }
}

/// How long dropping an `Upgrade` waits for the killed new process to be
/// reaped; only a wedged kernel takes more than milliseconds.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl<S> AsFd for Upgrade<S> {
    /// Readable once the new process is ready or has failed.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }
}

impl<S> AsRawFd for Upgrade<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }
}

impl<S> fmt::Debug for Upgrade<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrade")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// At most one upgrade per process at a time: a second one while the first
/// has not delivered its outcome fails at once.
static SPLIT_IN_FLIGHT: AtomicBool = AtomicBool::new(false);

/// The claim on that one upgrade. A service manager hears that an upgrade
/// starts when it is claimed, and that the service is ready again when it
/// ends in anything but a handover.
struct InFlight {
    handed_over: bool,
}

/// Whether an upgrade runs in this process now, however it was started.
pub(crate) fn upgrade_in_flight() -> bool {
    SPLIT_IN_FLIGHT.load(Ordering::Acquire)
}

impl InFlight {
    fn claim() -> Option<InFlight> {
        SPLIT_IN_FLIGHT
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        supervisor::upgrade_starting();
        Some(InFlight { handed_over: false })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        supervisor::upgrade_ended(self.handed_over);
        SPLIT_IN_FLIGHT.store(false, Ordering::Release);
    }
}

/// A split in progress. It yields exactly one [`Outcome`], and a split that
/// could not even start yields [`Outcome::Failed`] at once, with the state.
///
/// Keep it until the outcome arrives: after a failure, the outcome carries
/// the state back.
///
/// ```no_run
/// # let state = 0u64;
/// let mut handle = mitosis::split(state);
/// if let Some(pid) = handle.pid() {
///     println!("new process: pid {pid}");
/// }
/// match handle.wait() {
///     mitosis::Outcome::Done { .. } => std::process::exit(0),
///     mitosis::Outcome::Failed { state, error } => { /* carry on with state */ }
/// }
/// ```
#[must_use = "the outcome, and after a failure the state, arrive through the handle"]
pub struct Split<S> {
    pid: Option<u32>,
    outcome: Delivery<S>,
}

enum Delivery<S> {
    /// The split failed before the new process ran; taken once.
    Ready(Option<Outcome<S>>),
    /// The handover thread sends it.
    Pending(mpsc::Receiver<Outcome<S>>),
}

impl<S> Split<S> {
    pub(crate) fn failed(state: S, error: Error) -> Split<S> {
        log::warn!("mitosis: split refused: {error}");
        Split {
            pid: None,
            outcome: Delivery::Ready(Some(Outcome::Failed { state, error })),
        }
    }

    /// The new process's pid; `None` when it could not be started.
    ///
    /// ```no_run
    /// let handle = mitosis::split(0u64);
    /// println!("started pid {:?}", handle.pid());
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Blocks until the outcome is known.
    ///
    /// ```no_run
    /// let outcome = mitosis::split(0u64).wait();
    /// ```
    pub fn wait(mut self) -> Outcome<S> {
        match &mut self.outcome {
            Delivery::Ready(outcome) => outcome.take(),
            Delivery::Pending(receiver) => receiver.recv().ok(),
        }
        .expect("a Split yields its outcome once, and wait takes the handle")
    }

    /// The outcome, if it is known; `None` while the handover runs, and
    /// after the outcome has been taken.
    ///
    /// ```no_run
    /// let mut handle = mitosis::split(0u64);
    /// while handle.try_wait().is_none() { /* keep doing other work */ }
    /// ```
    pub fn try_wait(&mut self) -> Option<Outcome<S>> {
        match &mut self.outcome {
            Delivery::Ready(outcome) => outcome.take(),
            Delivery::Pending(receiver) => receiver.try_recv().ok(),
        }
    }

    /// Waits at most `timeout` for the outcome.
    ///
    /// ```no_run
    /// let mut handle = mitosis::split(0u64);
    /// let outcome = handle.wait_timeout(std::time::Duration::from_millis(100));
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome<S>> {
        match &mut self.outcome {
            Delivery::Ready(outcome) => outcome.take(),
            Delivery::Pending(receiver) => receiver.recv_timeout(timeout).ok(),
        }
    }
}

impl<S> fmt::Debug for Split<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// How a split ended.
///
/// ```
/// # fn handle<S>(outcome: mitosis::Outcome<S>) -> Option<S> {
/// match outcome {
///     mitosis::Outcome::Done { pid } => { println!("{pid} took over"); None }
///     mitosis::Outcome::Failed { state, error } => { eprintln!("{error}"); Some(state) }
/// }
/// # }
/// ```
#[derive(Debug)]
pub enum Outcome<S> {
    /// The new process committed: it owns the state and its connections.
    /// None of this process's fd numbers refers to a handed-over connection
    /// any more: each now points at `/dev/null`, so no destructor can write
    /// to the new process's connections. This process may exit.
    ///
    /// The old copy of the state is dropped on the handover thread right
    /// after this is reported, which closes those placeholders and frees
    /// its memory; a process that exits first leaves that to the kernel.
    Done {
        /// The new process's pid.
        pid: u32,
    },
    /// The new process did not take over. It has exited or been killed, and
    /// has been reaped; the state is back, with the same fds as before.
    Failed {
        /// The state, as it was passed to `split`.
        state: S,
        /// Why the new process did not take over.
        error: Error,
    },
}
