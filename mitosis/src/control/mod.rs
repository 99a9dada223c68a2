//! Operating upgrades from outside: a control socket that starts an
//! upgrade, waits for its outcome and reports it, and the client side that
//! `mitosisctl`, systemd's `ExecReload=`, a deploy script or the program
//! itself run again (`bot --upgrade`) speak it with.
//!
//! The program opens a [`Control`] at a path of its choosing (by default
//! [`Control::default_path`], under `$XDG_RUNTIME_DIR`), keeps it in its
//! handed-over state so that the socket outlives every upgrade, and polls
//! it with its other fds. [`Control::request`] answers status requests and
//! bad input itself, and hands the program each upgrade request as a
//! [`Request`], which the program starts between two passes of its loop;
//! the client then hears the outcome: `done` with the old and new pids and
//! the generation, or `failed` with the error and its step.
//!
//! On tokio (with the `tokio` feature), `control.recv().await` waits for
//! the next upgrade request in `select!`, serving the socket meanwhile.
//!
//! Only this user and root may connect (the socket is 0600, and each
//! connection's `SO_PEERCRED` uid is checked); a path in a directory that
//! others can write is refused at start.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use mitosis::control::Control;
//! use mitosis::{Handover, Outcome, SplitOptions};
//!
//! #[derive(Handover)]
//! #[handover(version = 1)]
//! struct State {
//!     control: Control,
//!     served: u64,
//! }
//!
//! fn main() -> Result<(), mitosis::Error> {
//!     let mut state = match mitosis::init::<State>()? {
//!         Some(state) => state,
//!         None => State {
//!             control: Control::bind(Control::default_path("myd")?)?,
//!             served: 0,
//!         },
//!     };
//!     loop {
//!         // poll(state.control.as_fd(), ...) with the program's other fds
//!         if let Some(request) = state.control.request() {
//!             state = match request.split(&SplitOptions::new(), state).wait() {
//!                 Outcome::Done { .. } => return Ok(()), // the client hears "done"
//!                 Outcome::Failed { state, .. } => state, // and here "failed"
//!             };
//!         }
//!         # break Ok(());
//!     }
//! }
//! ```
//!
//! From a shell: `mitosisctl --socket $XDG_RUNTIME_DIR/myd.control upgrade`.
//! PROTOCOL.md ("The control socket") has the requests and answers.

#[cfg(feature = "clap")]
mod cli;
mod client;
mod protocol;
mod socket;

pub use client::{send, upgrade_to_this_binary};
pub use protocol::{Answer, Command, Verdict};

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::net::SendFlags;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use crate::error::Error;
use crate::handover::{Decoder, Encoder, Handover, Shapes};
use crate::old::{Split, SplitOptions, Upgrade};
use crate::report::{self, Report};
use crate::schema::{Schema, Shape};
use crate::{lineage, old};
use protocol::MAX_REQUEST;

/// How long a client has to send its request line after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The most clients connected at once; one more is refused at once.
const MAX_CLIENTS: usize = 64;

/// The most rounds of events one call of `Control::request` serves.
const MAX_PASSES: usize = 16;

/// epoll tokens: the listener, the timer, then the clients.
const LISTENER: u64 = 0;
const TIMER: u64 = 1;
const FIRST_CLIENT: u64 = 2;

/// A control socket: upgrade and status requests from `mitosisctl` and
/// the like, as events in the program's own loop.
///
/// Its fd ([`AsFd`]) becomes readable when a client needs attention; then
/// [`request`](Control::request) does what can be done without the
/// program and returns the upgrade requests. Keep it in the state: it
/// crosses each upgrade with its listening socket, so the path answers
/// throughout, and the new process serves it from then on.
///
/// ```no_run
/// use std::os::fd::AsFd;
/// let mut control = mitosis::control::Control::bind("/run/user/1000/myd.control")?;
/// let fd = control.as_fd(); // for poll, epoll or tokio's AsyncFd
/// # Ok::<(), mitosis::Error>(())
/// ```
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
    allowed: Vec<u32>,
    events: Events,
}

/// What each process sets up for itself around the listening socket.
struct Events {
    epoll: OwnedFd,
    timer: OwnedFd,
    clients: Vec<Client>,
    next_id: u64,
    /// An upgrade request has been handed to the program and not answered.
    busy: Arc<AtomicBool>,
}

/// A connection whose request line has not come whole yet.
struct Client {
    id: u64,
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

impl Control {
    /// Listens at `path`: a Unix socket, mode 0600, which only this user
    /// and root may use. Fails if the directory is writable by anyone else
    /// or owned by another user (someone could replace the socket), if
    /// something other than a socket is at the path, or if a running
    /// program listens there already; a socket that a program which is gone
    /// left behind is replaced. The file stays when the program exits.
    ///
    /// ```no_run
    /// let control = mitosis::control::Control::bind(
    ///     mitosis::control::Control::default_path("ircbot")?,
    /// )?;
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn bind(path: impl Into<PathBuf>) -> Result<Control, Error> {
        let path = path.into();
        let listener = socket::bind(&path)?;
        let me = rustix::process::geteuid().as_raw();
        let allowed = if me == 0 { vec![0] } else { vec![me, 0] };
        Control::around(listener, path, allowed)
    }

    /// The documented default path for a program called `name`:
    /// `$XDG_RUNTIME_DIR/<name>.control`; for root without
    /// `XDG_RUNTIME_DIR` (a system service), `/run/<name>.control`;
    /// otherwise `/run/user/<uid>/<name>.control` if that directory
    /// exists. `name` is the program's, not its binary's file name, so
    /// that a new build under another file name finds the same socket.
    ///
    /// ```
    /// // SAFETY: no other thread reads the environment in this example.
    /// unsafe { std::env::set_var("XDG_RUNTIME_DIR", "/run/user/1000") };
    /// let path = mitosis::control::Control::default_path("ircbot")?;
    /// assert_eq!(path, std::path::Path::new("/run/user/1000/ircbot.control"));
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn default_path(name: &str) -> Result<PathBuf, Error> {
        socket::default_path(name)
    }

    /// Also lets processes of `uid` use the socket (a deploy user, say).
    /// By default only this process's user and root may.
    ///
    /// ```no_run
    /// let mut control = mitosis::control::Control::bind("/run/myd.control")?;
    /// control.allow_uid(1001);
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn allow_uid(&mut self, uid: u32) -> &mut Control {
        if !self.allowed.contains(&uid) {
            self.allowed.push(uid);
        }
        self
    }

    /// The socket's path.
    ///
    /// ```no_run
    /// let control = mitosis::control::Control::bind("/run/myd.control")?;
    /// assert_eq!(control.path(), std::path::Path::new("/run/myd.control"));
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the socket without blocking, and returns the next upgrade
    /// request, if one came. Status requests, requests from users not
    /// allowed, malformed or oversized lines, clients silent for 5 seconds
    /// and upgrade requests while an upgrade runs are answered here, and
    /// never reach the program. Call it whenever its fd is readable; more
    /// often does no harm.
    ///
    /// ```no_run
    /// # let mut control = mitosis::control::Control::bind("/run/myd.control")?;
    /// # let state = 0u64;
    /// if let Some(request) = control.request() {
    ///     let upgrade = request.prepare(&mitosis::SplitOptions::new(), &state);
    /// }
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn request(&mut self) -> Option<Request> {
        let mut found = None;
        // Until nothing is left to do (bounded, for a listener that stays
        // readable because the process is out of fds), so that an
        // edge-triggered watcher of this fd (tokio's) misses nothing; an
        // upgrade request ends the pass, and the next call goes on.
        for _ in 0..MAX_PASSES {
            let mut ready = Vec::with_capacity(16);
            match epoll::wait(
                &self.events.epoll,
                rustix::buffer::spare_capacity(&mut ready),
                Some(&Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => log::warn!("mitosis: control socket: epoll_wait: {error}"),
            }
            if ready.is_empty() {
                break;
            }
            for event in &ready {
                match event.data.u64() {
                    LISTENER => self.accept(),
                    TIMER => {
                        let mut expirations = [0u8; 8];
                        let _ = rustix::io::read(&self.events.timer, &mut expirations);
                    }
                    id => {
                        if let Some(request) = self.read(id) {
                            found = Some(request);
                        }
                    }
                }
            }
            self.expire();
            if found.is_some() {
                break;
            }
        }
        found
    }

    fn around(listener: UnixListener, path: PathBuf, allowed: Vec<u32>) -> Result<Control, Error> {
        let failed = |error: io::Error| Error::Control {
            action: format!("serve the control socket at {}", path.display()),
            reason: error.to_string(),
        };
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| failed(e.into()))?;
        let timer = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(|e| failed(e.into()))?;
        for (fd, token) in [(listener.as_fd(), LISTENER), (timer.as_fd(), TIMER)] {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::IN,
            )
            .map_err(|e| failed(e.into()))?;
        }
        Ok(Control {
            listener,
            path,
            allowed,
            events: Events {
                epoll,
                timer,
                clients: Vec::new(),
                next_id: FIRST_CLIENT,
                busy: Arc::new(AtomicBool::new(false)),
            },
        })
    }

    /// Accepts every waiting connection: refused at once if its user is
    /// not allowed or too many are connected, else read as it comes.
    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    log::warn!("mitosis: control socket: accept: {error}");
                    return;
                }
            };
            let refusal = match socket::peer_uid(&stream) {
                Ok(uid) if self.allowed.contains(&uid) => None,
                Ok(uid) => Some(format!(
                    "uid {uid} may not control this program (allowed: {}); run as its user or \
                     root",
                    self.allowed
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Err(error) => Some(format!("cannot tell who is connected: {error}")),
            }
            .or_else(|| {
                (self.events.clients.len() >= MAX_CLIENTS).then(|| {
                    format!("{MAX_CLIENTS} control connections are open already; try again")
                })
            });
            if let Some(refusal) = refusal {
                log::warn!("mitosis: control socket: refused a connection: {refusal}");
                reply(&stream, &Answer::error(refusal));
                continue;
            }
            let id = self.events.next_id;
            self.events.next_id += 1;
            let registered = stream.set_nonblocking(true).and_then(|()| {
                epoll::add(
                    &self.events.epoll,
                    &stream,
                    epoll::EventData::new_u64(id),
                    epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
                )
                .map_err(io::Error::from)
            });
            if let Err(error) = registered {
                log::warn!("mitosis: control socket: {error}");
                continue;
            }
            self.events.clients.push(Client {
                id,
                stream,
                line: Vec::new(),
                deadline: Instant::now() + REQUEST_TIMEOUT,
            });
        }
    }

    /// Reads what client `id` sent; once its line is whole, answers it or
    /// returns it as a request. One request per connection.
    fn read(&mut self, id: u64) -> Option<Request> {
        let at = self.events.clients.iter().position(|c| c.id == id)?;
        let client = &mut self.events.clients[at];
        let mut bytes = [0u8; 1024];
        let line = loop {
            match (&client.stream).read(&mut bytes) {
                Ok(0) if client.line.is_empty() => break None,
                // A client that closes its end after the line may leave
                // out the newline.
                Ok(0) => break Some(Ok(std::mem::take(&mut client.line))),
                Ok(n) => {
                    client.line.extend_from_slice(&bytes[..n]);
                    if let Some(end) = client.line.iter().position(|&b| b == b'\n') {
                        client.line.truncate(end);
                        break Some(Ok(std::mem::take(&mut client.line)));
                    }
                    if client.line.len() >= MAX_REQUEST {
                        break Some(Err(format!(
                            "the request is longer than {MAX_REQUEST} bytes; a request is one \
                             short line"
                        )));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => break None,
            }
        };
        let client = self.events.clients.remove(at);
        let _ = epoll::delete(&self.events.epoll, &client.stream);
        let command = match line? {
            Ok(line) => Command::parse(&line),
            Err(error) => Err(error),
        };
        match command {
            Err(error) => {
                log::warn!("mitosis: control socket: {error}");
                reply(&client.stream, &Answer::error(error));
                None
            }
            Ok(Command::Status) => {
                reply(&client.stream, &self.status());
                None
            }
            Ok(command) => self.upgrade_request(command, client.stream),
        }
    }

    fn upgrade_request(&mut self, command: Command, stream: UnixStream) -> Option<Request> {
        if old::upgrade_in_flight() || self.events.busy.swap(true, Ordering::AcqRel) {
            reply(
                &stream,
                &Answer::error(
                    "an upgrade is already running; wait for its outcome (mitosisctl status), \
                     then ask again",
                ),
            );
            return None;
        }
        log::info!("mitosis: control socket: asked to {}", command.action());
        Some(Request {
            command,
            reply: Some(stream),
            busy: Arc::clone(&self.events.busy),
        })
    }

    /// Answers and drops clients silent past their deadline, and sets the
    /// timer for the next one.
    fn expire(&mut self) {
        let now = Instant::now();
        let events = &mut self.events;
        events.clients.retain(|client| {
            if client.deadline > now {
                return true;
            }
            let _ = epoll::delete(&events.epoll, &client.stream);
            reply(
                &client.stream,
                &Answer::error(format!(
                    "no whole request line within {REQUEST_TIMEOUT:?} of connecting"
                )),
            );
            false
        });
        let next = events.clients.iter().map(|client| client.deadline).min();
        let after = next.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(now)
                .max(Duration::from_millis(1))
        });
        let timer = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: after.as_secs() as i64,
                tv_nsec: after.subsec_nanos().into(),
            },
        };
        if let Err(error) =
            rustix::time::timerfd_settime(&events.timer, TimerfdTimerFlags::empty(), &timer)
        {
            log::warn!("mitosis: control socket: timerfd_settime: {error}");
        }
    }

    fn status(&self) -> Answer {
        let running = std::fs::read_link("/proc/self/exe")
            .map_or_else(|_| "unknown".into(), |path| path.display().to_string());
        let mut answer = Answer::new(Verdict::Status)
            .with("pid", std::process::id())
            .with("generation", lineage::generation())
            .with("binary", running)
            .with("upgrades-from", lineage::binary().display())
            .with(
                "previous-binary",
                lineage::previous_name()
                    .map_or_else(|| "none".into(), |path| path.display().to_string()),
            )
            .with(
                "upgrading",
                if old::upgrade_in_flight() || self.events.busy.load(Ordering::Acquire) {
                    "yes"
                } else {
                    "no"
                },
            );
        match report::last() {
            None => answer = answer.with("last-upgrade", "none"),
            Some(last) => {
                let verdict = if last.result.is_ok() {
                    "done"
                } else {
                    "failed"
                };
                answer = answer.with("last-upgrade", verdict);
                for (key, value) in outcome_fields(&last) {
                    answer = answer.with(&format!("last-{key}"), value);
                }
            }
        }
        answer
    }
}

/// A report's fields, as `done` and `failed` answers carry them.
fn outcome_fields(report: &Report) -> Vec<(&'static str, String)> {
    let ms = |duration: Option<Duration>| {
        duration.map_or_else(
            || "-".into(),
            |d| format!("{:.1}", d.as_secs_f64() * 1000.0),
        )
    };
    let mut fields = vec![
        ("old-pid", report.old_pid.to_string()),
        (
            "new-pid",
            report
                .new_pid
                .map_or_else(|| "-".into(), |pid| pid.to_string()),
        ),
        ("generation", report.generation.to_string()),
        ("binary", report.binary.display().to_string()),
        ("start-ms", ms(report.start)),
        ("pause-ms", ms(report.pause)),
    ];
    if let Err((error, step)) = &report.result {
        fields.push((
            "step",
            step.map_or_else(|| "-".into(), |step| step.to_string()),
        ));
        fields.push(("error", error.clone()));
    }
    fields
}

/// Writes an answer without ever blocking or raising SIGPIPE: a client
/// that went away, or reads nothing, loses its answer and nothing else.
fn reply(stream: &UnixStream, answer: &Answer) {
    let bytes = answer.encode();
    match rustix::net::send(stream, &bytes, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
        Ok(n) if n == bytes.len() => {}
        Ok(n) => log::warn!(
            "mitosis: control socket: the client took {n} of {} bytes of its answer",
            bytes.len()
        ),
        Err(error) => log::info!("mitosis: control socket: could not answer the client: {error}"),
    }
}

impl AsFd for Control {
    /// Readable when a client needs attention: call
    /// [`request`](Control::request).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.epoll.as_fd()
    }
}

impl AsRawFd for Control {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.events.epoll.as_raw_fd()
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("path", &self.path)
            .field("allowed", &self.allowed)
            .field("clients", &self.events.clients.len())
            .finish_non_exhaustive()
    }
}

/// A control socket crosses with its listening socket, its path and its
/// allowed users. Clients whose request line had not come whole stay with
/// the old process, which closes them as it exits; they see the
/// connection close without an answer, and may ask again.
///
/// ```
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<mitosis::control::Control>();
/// ```
impl Handover for Control {
    const SCHEMA: Schema = Schema::new("mitosis::control::Control", 1);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Struct {
            name: "Control".into(),
            fields: vec![
                ("listener".into(), UnixListener::shape(shapes)?),
                ("path".into(), shapes.serde::<PathBuf>()?),
                ("allowed".into(), shapes.serde::<Vec<u32>>()?),
            ],
        })
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        self.listener.encode(out)?;
        out.value(&self.path)?;
        out.value(&self.allowed)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let listener = UnixListener::decode(input)?;
        let path: PathBuf = input.value()?;
        let allowed = input.value()?;
        Control::around(listener, path, allowed).map_err(|error| Error::Decode {
            detail: error.to_string(),
        })
    }
}

/// An upgrade that a client asked for, with the binary it named. Start it
/// with [`prepare`](Request::prepare) or [`split`](Request::split): the
/// client then hears the outcome when it is known, and nothing else is
/// needed. Dropping a request answers the client that the program did not
/// act on it.
///
/// ```no_run
/// # let mut control = mitosis::control::Control::bind("/run/myd.control")?;
/// if let Some(request) = control.request() {
///     println!("asked to {}", request.command());
/// }
/// # Ok::<(), mitosis::Error>(())
/// ```
pub struct Request {
    command: Command,
    reply: Option<UnixStream>,
    busy: Arc<AtomicBool>,
}

impl Request {
    /// What the client asked for: [`Command::Upgrade`],
    /// [`Command::UpgradeTo`] or [`Command::Previous`].
    ///
    /// ```no_run
    /// # let request: mitosis::control::Request = unimplemented!();
    /// if request.command() == &mitosis::control::Command::Previous {
    ///     log::warn!("going back to the previous build");
    /// }
    /// ```
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// Prepares the upgrade with `options` and the binary the client asked
    /// for, as [`SplitOptions::prepare`] does. The client hears the
    /// outcome: `done` once the new process has taken over, `failed` if it
    /// fails (here, through the readiness check, or after the hand-over),
    /// or if the program drops the [`Upgrade`].
    ///
    /// ```no_run
    /// # let request: mitosis::control::Request = unimplemented!();
    /// # let state = 0u64;
    /// let upgrade = request.prepare(&mitosis::SplitOptions::new(), &state)?;
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn prepare<S: Handover + Send + 'static>(
        mut self,
        options: &SplitOptions,
        state: &S,
    ) -> Result<Upgrade<S>, Error> {
        let options = self.options(options);
        let prepared = old::prepare_with(&options, state, Some(self.listener()));
        match &prepared {
            // The listener answers from now on.
            Ok(_) => self.reply = None,
            Err(error) => self.refused(error),
        }
        prepared
    }

    /// Hands `state` over with `options` and the binary the client asked
    /// for, as [`SplitOptions::split`] does; the client hears the outcome.
    ///
    /// ```no_run
    /// # let request: mitosis::control::Request = unimplemented!();
    /// # let state = 0u64;
    /// match request.split(&mitosis::SplitOptions::new(), state).wait() {
    ///     mitosis::Outcome::Done { .. } => std::process::exit(0),
    ///     mitosis::Outcome::Failed { state, .. } => { /* serve on */ }
    /// }
    /// ```
    pub fn split<S: Handover + Send + 'static>(self, options: &SplitOptions, state: S) -> Split<S> {
        match self.prepare(options, &state) {
            Ok(upgrade) => upgrade.hand_over(state),
            Err(error) => Split::failed(state, error),
        }
    }

    fn options(&self, options: &SplitOptions) -> SplitOptions {
        let mut options = options.clone();
        match &self.command {
            Command::UpgradeTo(binary) => {
                options.binary(binary);
            }
            Command::Previous => {
                options.previous_binary();
            }
            Command::Upgrade | Command::Status => {}
        }
        options
    }

    /// Answers the client from the upgrade's report, and lets the next
    /// request in.
    fn listener(&self) -> report::Listener {
        let stream = self
            .reply
            .as_ref()
            .and_then(|stream| stream.try_clone().ok());
        let busy = Arc::clone(&self.busy);
        Box::new(move |report: &Report| {
            let verdict = match report.result {
                Ok(()) => Verdict::Done,
                Err(_) => Verdict::Failed,
            };
            let answer = outcome_fields(report)
                .into_iter()
                .fold(Answer::new(verdict), |answer, (key, value)| {
                    answer.with(key, value)
                });
            if let Some(stream) = &stream {
                reply(stream, &answer);
            }
            busy.store(false, Ordering::Release);
        })
    }

    /// The upgrade could not start at all: the client hears why.
    fn refused(&mut self, error: &Error) {
        let mut answer = Answer::new(Verdict::Failed)
            .with("old-pid", std::process::id())
            .with("new-pid", "-");
        if let Some(step) = error.step() {
            answer = answer.with("step", step);
        }
        answer = answer.with("error", error);
        if let Some(stream) = self.reply.take() {
            reply(&stream, &answer);
        }
        self.busy.store(false, Ordering::Release);
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(stream) = self.reply.take() {
            reply(
                &stream,
                &Answer::error("the program did not act on the request"),
            );
            self.busy.store(false, Ordering::Release);
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}
