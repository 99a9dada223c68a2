//! The old process's side: [`split`] starts the new binary and hands the
//! state over in the background; [`Split`] delivers the one [`Outcome`].
//!
//! Read it in order: `options` (what a split can be told), `spawn` (step 1),
//! `hand_over` (steps 1 to 8, one function), and `accept` (step 2's wait for
//! the new process among strangers).

mod accept;
mod hand_over;
mod options;
mod spawn;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

pub use options::SplitOptions;
pub(crate) use spawn::start_path;

use crate::error::{Error, Step};
use crate::handover::Handover;
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

/// Starts a split with `options`: the worker thread first, so that failing
/// to start a thread can still give the state back, then the new process.
fn start<S: Handover + Send + 'static>(options: &SplitOptions, state: S) -> Split<S> {
    let Some(in_flight) = InFlight::claim() else {
        return Split::failed(state, Error::SplitInFlight);
    };
    if let Err(error) = spawn::close_on_exec(&state) {
        return Split::failed(state, error);
    }
    let own = match Own::of::<S>() {
        Ok(own) => own,
        Err(error) => return Split::failed(state, error),
    };
    let (job_sender, job) = mpsc::channel::<(Parent, S, InFlight)>();
    let (outcome_sender, outcome) = mpsc::sync_channel(1);
    let worker = thread::Builder::new()
        .name("mitosis-split".into())
        .spawn(move || {
            if let Ok((parent, state, in_flight)) = job.recv() {
                let (outcome, handed_over) = parent.run(state, &own);
                drop(in_flight);
                if outcome_sender.send(outcome).is_err() {
                    log::warn!(
                        "mitosis: the Split handle was dropped, so the outcome (and, after a \
                         failure, the state) was dropped too"
                    );
                }
                // After Done: this process's copy of the handed-over state,
                // whose fds already point at /dev/null. Freeing a large
                // state takes long (a million-entry map: a fifth of a
                // second), and nobody needs to wait for it: the caller may
                // exit at once, and the kernel frees it all.
                drop(handed_over);
            }
        });
    if let Err(source) = worker {
        return Split::failed(
            state,
            Error::Io {
                step: Step::Spawn,
                source,
            },
        );
    }
    let parent = match Parent::start(options) {
        Ok(parent) => parent,
        Err((error, pid)) => {
            let mut split = Split::failed(state, error);
            split.pid = pid;
            return split;
        }
    };
    let pid = parent.pid();
    job_sender
        .send((parent, state, in_flight))
        .unwrap_or_else(|_| unreachable!("the worker waits for its job"));
    Split {
        pid: Some(pid),
        outcome: Delivery::Pending(outcome),
    }
}

/// At most one split per process at a time: a second one while the first
/// has not delivered its outcome fails at once.
static SPLIT_IN_FLIGHT: AtomicBool = AtomicBool::new(false);

struct InFlight;

impl InFlight {
    fn claim() -> Option<InFlight> {
        SPLIT_IN_FLIGHT
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| InFlight)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
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
    fn failed(state: S, error: Error) -> Split<S> {
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
