//! The old process's side: [`split`] starts the new binary and hands the
//! state over in the background; [`Split`] delivers the one outcome.
//!
//! [`Parent::hand_over`] walks PROTOCOL.md's steps in order.

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::error::{Error, SplitError, Step};
use crate::fault::{self, Point, Side};
use crate::fd_channel::{self, FdListener, timespec};
use crate::frame::{Conn, DataFrames, Deadline, Fields, Kind, Payload, Reason};
use crate::handover::{Encoder, Handover, StateSink};
use crate::handshake::{self, Secret};
use crate::spawn::{Launch, Limits, start_path};

/// How long the new process has, from spawn to commit, unless
/// [`SplitOptions::commit_timeout`] says otherwise: 10 seconds, enough for
/// a large program to start and for a 1 GiB state to cross loopback, and
/// short enough that a hung upgrade gives the connections back quickly.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection to the handover port may take to prove the secret
/// before it is dropped, unless [`SplitOptions::hello_timeout`] says
/// otherwise. The real new process proves it in its first write.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// The most state a handover carries, in encoded bytes, unless
/// [`SplitOptions::max_state_bytes`] says otherwise: 4 GiB.
pub const DEFAULT_MAX_STATE_BYTES: u64 = crate::frame::MAX_STATE_BYTES;

/// The most fds a handover carries, unless [`SplitOptions::max_fds`] says
/// otherwise: 1,048,576, Linux's default ceiling on a process's open files.
pub const DEFAULT_MAX_FDS: u64 = crate::frame::MAX_FDS as u64;

/// Hands `state` over to a freshly started copy of this program, with the
/// default [`SplitOptions`].
///
/// It does not block: it starts the binary this process was started from
/// (the file at that path now, so a rebuilt binary runs), with this process's
/// arguments plus `--mitosis=<port>`, and returns a [`Split`] handle whose
/// [`Outcome`] says whether the new process took over. If it did not, the
/// state comes back.
///
/// The state is moved in, so nothing in this process can touch a socket
/// while it is being handed over.
///
/// ```no_run
/// # fn serve(_: &mut u64) {}
/// let mut state: u64 = 0;
/// loop {
///     serve(&mut state);
///     match mitosis::split(state) {
///         Err(refused) => {
///             log::error!("upgrade refused: {}", refused.error);
///             state = refused.state;
///         }
///         Ok(handle) => match handle.wait() {
///             mitosis::Outcome::Done { pid } => {
///                 log::info!("pid {pid} took over");
///                 std::process::exit(0);
///             }
///             mitosis::Outcome::Failed { state: back, error } => {
///                 log::error!("upgrade failed: {error}");
///                 state = back;
///             }
///         },
///     }
/// }
/// ```
pub fn split<S: Handover + Send + 'static>(state: S) -> Result<Split<S>, SplitError<S>> {
    SplitOptions::new().split(state)
}

/// Options for a [`split`]: timeouts, the binary, its arguments and its
/// environment.
///
/// ```no_run
/// use std::time::Duration;
/// # let state = 0u64;
/// let handle = mitosis::SplitOptions::new()
///     .commit_timeout(Duration::from_secs(30))
///     .binary("/usr/local/bin/bot")
///     .arg("--verbose")
///     .env("RUST_LOG", "debug")
///     .split(state);
/// ```
#[derive(Debug, Clone)]
pub struct SplitOptions {
    commit_timeout: Duration,
    hello_timeout: Duration,
    limits: Limits,
    binary: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    extra_args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions::new()
    }
}

impl SplitOptions {
    /// The defaults: [`DEFAULT_COMMIT_TIMEOUT`], [`DEFAULT_HELLO_TIMEOUT`],
    /// the binary this process was started from, its arguments and its
    /// environment.
    ///
    /// ```
    /// let options = mitosis::SplitOptions::new();
    /// ```
    pub fn new() -> SplitOptions {
        SplitOptions {
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            limits: Limits {
                state_bytes: DEFAULT_MAX_STATE_BYTES,
                fds: DEFAULT_MAX_FDS,
            },
            binary: None,
            args: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// How long the new process has from spawn to commit. After that it is
    /// killed and the state comes back.
    ///
    /// ```
    /// mitosis::SplitOptions::new().commit_timeout(std::time::Duration::from_secs(3));
    /// ```
    pub fn commit_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.commit_timeout = timeout;
        self
    }

    /// How long any connection to the handover port has to prove the secret
    /// before it is dropped.
    ///
    /// ```
    /// mitosis::SplitOptions::new().hello_timeout(std::time::Duration::from_millis(200));
    /// ```
    pub fn hello_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.hello_timeout = timeout;
        self
    }

    /// The most encoded bytes the state may take; default
    /// [`DEFAULT_MAX_STATE_BYTES`]. A bigger state fails the handover with
    /// [`Error::LimitExceeded`] in both processes, and comes back. The new
    /// process enforces the same limit.
    ///
    /// ```
    /// mitosis::SplitOptions::new().max_state_bytes(64 << 20);
    /// ```
    pub fn max_state_bytes(&mut self, bytes: u64) -> &mut Self {
        self.limits.state_bytes = bytes;
        self
    }

    /// The most fds the state may hold; default [`DEFAULT_MAX_FDS`]. More
    /// fail the handover with [`Error::LimitExceeded`] in both processes,
    /// and the state comes back. The new process enforces the same limit.
    ///
    /// ```
    /// mitosis::SplitOptions::new().max_fds(10_000);
    /// ```
    pub fn max_fds(&mut self, fds: u64) -> &mut Self {
        self.limits.fds = fds;
        self
    }

    /// Runs this binary instead of the one this process was started from.
    ///
    /// ```
    /// mitosis::SplitOptions::new().binary("/opt/bot/current/bot");
    /// ```
    pub fn binary(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.binary = Some(path.into());
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

    /// Hands `state` over with these options; see [`split`].
    ///
    /// ```no_run
    /// # let state = 0u64;
    /// let handle = mitosis::SplitOptions::new().split(state);
    /// ```
    pub fn split<S: Handover + Send + 'static>(&self, state: S) -> Result<Split<S>, SplitError<S>> {
        let Some(in_flight) = InFlight::claim() else {
            return Err(SplitError {
                state,
                error: Error::SplitInFlight,
            });
        };
        // The worker exists before the new process does, so that failing to
        // start a thread can still give the state back.
        let (job_sender, job) = mpsc::channel::<(Parent, S, InFlight)>();
        let (outcome_sender, outcome) = mpsc::sync_channel(1);
        let worker = thread::Builder::new()
            .name("mitosis-split".into())
            .spawn(move || {
                if let Ok((parent, state, in_flight)) = job.recv() {
                    let (outcome, handed_over) = parent.run(state);
                    drop(in_flight);
                    if outcome_sender.send(outcome).is_err() {
                        log::warn!(
                            "mitosis: the Split handle was dropped, so the outcome (and, after a \
                             failure, the state) was dropped too"
                        );
                    }
                    // After Done: this process's copy of the handed-over
                    // state, whose fds already point at /dev/null. Freeing a
                    // large state takes long (a million-entry map: a fifth
                    // of a second), and nobody needs to wait for it: the
                    // caller may exit at once, and the kernel frees it all.
                    drop(handed_over);
                }
            });
        if let Err(source) = worker {
            return Err(SplitError {
                state,
                error: Error::Io {
                    step: Step::Spawn,
                    source,
                },
            });
        }
        let parent = match self.start() {
            Ok(parent) => parent,
            Err(error) => return Err(SplitError { state, error }),
        };
        let pid = parent.child.id();
        job_sender
            .send((parent, state, in_flight))
            .unwrap_or_else(|_| unreachable!("the worker waits for its job"));
        Ok(Split { pid, outcome })
    }

    /// Step 1: listen, then start the new binary.
    fn start(&self) -> Result<Parent, Error> {
        const STEP: Step = Step::Spawn;
        let deadline = Deadline::after(self.commit_timeout);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::io(STEP))?;
        let port = listener.local_addr().map_err(Error::io(STEP))?.port();
        let fd_listener = FdListener::bind().map_err(Error::io(STEP))?;
        let secret = Secret::generate().map_err(Error::io(STEP))?;
        let launch = Launch {
            binary: self
                .binary
                .clone()
                .unwrap_or_else(|| start_path().to_path_buf()),
            args: self.args.as_deref(),
            extra_args: &self.extra_args,
            env: &self.env,
        };
        let mut child = launch
            .spawn(
                port,
                &secret.to_hex(),
                fd_listener.path(),
                self.commit_timeout,
                self.limits,
            )
            .map_err(|source| Error::Spawn {
                binary: launch.binary.clone(),
                source,
            })?;
        let pid = Pid::from_child(&child);
        let child_exited = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::io(STEP)(e.into()));
            }
        };
        log::debug!(
            "mitosis: step 1: started {} as pid {}, handover port {port}",
            launch.binary.display(),
            child.id()
        );
        Ok(Parent {
            child,
            child_exited,
            listener: Some(listener),
            fd_listener: Some(fd_listener),
            secret,
            deadline,
            hello_timeout: self.hello_timeout,
            limits: self.limits,
            conn: None,
            fd_conn: None,
            handed_over: Vec::new(),
        })
    }
}

/// At most one split per process at a time: a second one while the first
/// has not delivered its outcome is refused.
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

/// A split in progress. It yields exactly one [`Outcome`].
///
/// Keep it until the outcome arrives: after a failure, the outcome carries
/// the state back.
///
/// ```no_run
/// # let state = 0u64;
/// let mut handle = mitosis::split(state).map_err(|e| e.error)?;
/// println!("new process: pid {}", handle.pid());
/// match handle.wait() {
///     mitosis::Outcome::Done { .. } => std::process::exit(0),
///     mitosis::Outcome::Failed { state, error } => { /* carry on with state */ }
/// }
/// # Ok::<(), mitosis::Error>(())
/// ```
pub struct Split<S> {
    pid: u32,
    outcome: mpsc::Receiver<Outcome<S>>,
}

impl<S> Split<S> {
    /// The new process's pid.
    ///
    /// ```no_run
    /// # let handle = mitosis::split(0u64).map_err(|e| e.error)?;
    /// println!("started pid {}", handle.pid());
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Blocks until the outcome is known.
    ///
    /// ```no_run
    /// # let handle = mitosis::split(0u64).map_err(|e| e.error)?;
    /// let outcome = handle.wait();
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn wait(self) -> Outcome<S> {
        self.outcome
            .recv()
            .expect("the handover thread always delivers an outcome")
    }

    /// The outcome, if it is known; `None` while the handover runs, and
    /// after the outcome has been taken.
    ///
    /// ```no_run
    /// # let mut handle = mitosis::split(0u64).map_err(|e| e.error)?;
    /// while handle.try_wait().is_none() { /* keep doing other work */ }
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn try_wait(&mut self) -> Option<Outcome<S>> {
        self.outcome.try_recv().ok()
    }

    /// Waits at most `timeout` for the outcome.
    ///
    /// ```no_run
    /// # let mut handle = mitosis::split(0u64).map_err(|e| e.error)?;
    /// let outcome = handle.wait_timeout(std::time::Duration::from_millis(100));
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome<S>> {
        self.outcome.recv_timeout(timeout).ok()
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

/// The old process's side of one handover.
struct Parent {
    child: Child,
    /// A pidfd: readable once the new process has exited.
    child_exited: OwnedFd,
    listener: Option<TcpListener>,
    fd_listener: Option<FdListener>,
    secret: Secret,
    deadline: Deadline,
    hello_timeout: Duration,
    limits: Limits,
    /// Kept open until the new process has been dealt with, because the new
    /// process reads the connection closing after its COMMIT as "the old
    /// process is gone, take over".
    conn: Option<Conn>,
    fd_conn: Option<OwnedFd>,
    /// The numbers of the state's fds that crossed in step 6.
    handed_over: Vec<RawFd>,
}

impl Parent {
    /// Runs the handover. On success, the state comes back too: disarmed
    /// (its fds point at `/dev/null`), for the caller to drop after it has
    /// reported `Done`.
    fn run<S: Handover>(mut self, state: S) -> (Outcome<S>, Option<S>) {
        let result =
            catch_unwind(AssertUnwindSafe(|| self.hand_over(&state))).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(not a string)".into());
                Err(Error::EncodePanicked { message })
            });
        let pid = self.child.id();
        match result {
            Ok(()) => {
                log::info!("mitosis: pid {pid} took over");
                (Outcome::Done { pid }, Some(state))
            }
            Err(error) => {
                let error = self.stop_child(error);
                log::warn!("mitosis: handover to pid {pid} failed: {error}");
                (Outcome::Failed { state, error }, None)
            }
        }
    }

    /// Every step of a handover, as PROTOCOL.md numbers them.
    fn hand_over<S: Handover>(&mut self, state: &S) -> Result<(), Error> {
        fault::at(Side::Old, Point::Spawned);
        // Step 2: the new process connects and proves the secret. No byte
        // goes to a connection before that.
        let listener = self.listener.take().expect("hand_over runs once");
        let (stream, versions) = handshake::accept_child(
            &listener,
            &self.secret,
            self.child_exited.as_fd(),
            &self.deadline,
            self.hello_timeout,
        )?;
        drop(listener);
        let conn = self
            .conn
            .insert(Conn::new(stream, self.deadline, Side::Old));
        fault::at(Side::Old, Point::Hello);
        // Steps 3 to 5 leave as one burst: for a small state, WELCOME,
        // STATE, the data and END share a segment.
        let burst = conn.cork();

        // Step 3: prove the secret back and choose the protocol version.
        let chosen = handshake::choose_version(versions);
        conn.write_all(
            Step::Hello,
            &handshake::welcome(&self.secret, chosen.unwrap_or(0)),
        )?;
        if chosen.is_none() {
            return Err(Error::ProtocolVersion {
                ours: crate::frame::VERSIONS,
                theirs: versions,
            });
        }

        // Step 4: send the state only if the new process accepts its schema.
        let (_, offer) = conn.read_frame(Step::Offer, &[Kind::Offer])?;
        let accepted = handshake::parse_offer(&offer)?;
        fault::at(Side::Old, Point::Offer);
        if !accepted
            .iter()
            .any(|schema| schema.fingerprint == S::SCHEMA.fingerprint)
        {
            let error = Error::SchemaMismatch {
                sent: S::SCHEMA.into(),
                accepted,
            };
            return Err(reject::<S>(conn, Step::Offer, Reason::Schema, error));
        }
        conn.write_frame(
            Step::Offer,
            Kind::State,
            &Payload::default().schema(&S::SCHEMA).bytes(),
        )?;

        // Step 5: stream the encoded state, then its lengths and fd count;
        // or, over a limit, a REJECT that tells the new process why.
        let mut frames = Limited {
            frames: DataFrames { conn },
            max: self.limits.state_bytes,
            sent: 0,
        };
        let encoded = match Encoder::encode(&mut frames, state) {
            Ok(encoded) if encoded.fds.len() as u64 > self.limits.fds => {
                Err(Error::LimitExceeded {
                    step: Step::State,
                    what: "fds",
                    found: encoded.fds.len() as u64,
                    max: self.limits.fds,
                })
            }
            encoded => encoded,
        };
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(error @ Error::LimitExceeded { .. }) => {
                return Err(reject::<S>(conn, Step::State, Reason::Limit, error));
            }
            Err(error) => return Err(error),
        };
        let end = Payload::default()
            .u64(encoded.total_bytes)
            .u64(encoded.out_of_line_bytes)
            .u32(encoded.fds.len() as u32)
            .bytes();
        conn.write_frame(Step::State, Kind::End, &end)?;
        drop(burst);
        log::debug!(
            "mitosis: step 5: sent {} bytes of state and {} out of line, {} fds to follow",
            encoded.total_bytes,
            encoded.out_of_line_bytes,
            encoded.fds.len()
        );

        // Step 6: the fds, over the channel only the new process can reach.
        let fd_listener = self.fd_listener.take().expect("hand_over runs once");
        let fd_conn = fd_listener.accept_child(
            Pid::from_child(&self.child),
            self.child_exited.as_fd(),
            &self.deadline,
        )?;
        drop(fd_listener);
        fd_channel::send_fds(fd_conn.as_fd(), &encoded.fds, &self.deadline)?;
        self.fd_conn = Some(fd_conn);
        self.handed_over = encoded.fds.iter().map(AsRawFd::as_raw_fd).collect();
        drop(encoded);

        // Step 7: the new process decodes and commits, or says why not.
        let conn = self.conn.as_mut().expect("connected in step 2");
        let (kind, payload) = conn.read_frame(Step::Commit, &[Kind::Commit, Kind::Abort])?;
        if kind == Kind::Abort {
            let mut fields = Fields::new(Step::Commit, Kind::Abort, &payload);
            let _reason = fields.u8()?;
            return Err(Error::Aborted {
                step: Step::Commit,
                reason: fields.str()?,
            });
        }
        Fields::new(Step::Commit, Kind::Commit, &payload).end()?;
        fault::at(Side::Old, Point::Commit);

        // Step 8: acknowledge, then wait for the new process to say it has
        // taken over. Until TAKEN arrives, the new process's death leaves
        // the connections with this process, which then rolls back. There
        // is no deadline here: after ACK, a live new process is never
        // killed, because it may already be serving.
        conn.write_frame(Step::Ack, Kind::Ack, &[])?;
        fault::at(Side::Old, Point::Ack);
        conn.drop_deadline(Step::Ack)?;
        conn.read_frame(Step::Ack, &[Kind::Taken])?;
        fault::at(Side::Old, Point::Taken);
        // From here on this process must not touch a handed-over
        // connection, not even from a destructor.
        if let Err(error) = fd_channel::redirect_to_dev_null(&self.handed_over) {
            log::warn!(
                "mitosis: could not detach the old copies of the handed-over fds ({error}); \
                 a destructor that writes (such as BufWriter's flush) may still reach them"
            );
        }
        fault::at(Side::Old, Point::Done);
        Ok(())
    }

    /// Makes sure the new process is gone and reaped before the state goes
    /// back, so that two processes never serve the same connections.
    ///
    /// When the new process knows the handover failed (it was told, it gave
    /// up, or it died), it gets until the deadline to exit by itself, so its
    /// own error report is not cut off; otherwise it is killed at once.
    fn stop_child(&mut self, error: Error) -> Error {
        let child_knows = matches!(
            error,
            Error::SchemaMismatch { .. }
                | Error::ProtocolVersion { .. }
                | Error::Aborted { .. }
                | Error::LimitExceeded { .. }
                | Error::PeerGone { .. }
        );
        if !(child_knows && self.wait_for_exit()) {
            let _ = self.child.kill();
        }
        let status = self.child.wait();
        self.conn = None;
        self.fd_conn = None;
        match (error, status) {
            (Error::PeerGone { step }, Ok(status)) => Error::ChildExited { step, status },
            (error, _) => error,
        }
    }

    /// Waits until the new process exits or the deadline passes.
    fn wait_for_exit(&self) -> bool {
        loop {
            let Ok(left) = self.deadline.remaining(Step::Commit) else {
                return false;
            };
            let mut fds = [PollFd::new(&self.child_exited, PollFlags::IN)];
            match poll(&mut fds, Some(&timespec(left))) {
                Ok(_) if !fds[0].revents().is_empty() => return true,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Tells the new process, with REJECT, why the state will not come, and
/// returns the error for the old process's own outcome. If even the REJECT
/// cannot be written, that error is the one to report.
fn reject<S: Handover>(conn: &Conn, step: Step, reason: Reason, error: Error) -> Error {
    let reject = Payload::default()
        .u8(reason as u8)
        .schema(&S::SCHEMA)
        .str(&error.to_string())
        .bytes();
    match conn.write_frame(step, Kind::Reject, &reject) {
        Ok(()) => error,
        Err(write_error) => write_error,
    }
}

/// The state's frames, stopped at the handover's byte limit: a state over
/// it fails before the excess is sent.
struct Limited<'c> {
    frames: DataFrames<'c>,
    max: u64,
    sent: u64,
}

impl Limited<'_> {
    fn admit(&mut self, len: usize) -> Result<(), Error> {
        self.sent += len as u64;
        if self.sent > self.max {
            return Err(Error::LimitExceeded {
                step: Step::State,
                what: "state bytes",
                found: self.sent,
                max: self.max,
            });
        }
        Ok(())
    }
}

impl StateSink for Limited<'_> {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.admit(bytes.len())?;
        self.frames.data(bytes)
    }

    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.admit(bytes.len())?;
        self.frames.out_of_line(bytes)
    }
}
