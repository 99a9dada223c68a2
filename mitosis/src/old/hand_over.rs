//! The old process's handover, step by step, in PROTOCOL.md's order:
//! [`Parent::start`] is step 1, [`Parent::prepare`] walks steps 2 to 5 while
//! the program serves, and [`Parent::hand_over`] steps 6 to 9, the pause.

use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Child;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use super::accept::{Doors, abandoned, accept_child};
use super::frames::DataFrames;
use super::options::Target;
use super::priority;
use super::spawn::{Launch, without_panics};
use super::{Outcome, SplitOptions};
use crate::conn::{Conn, Deadline, Readable, timespec};
use crate::env::Terms;
use crate::error::{Error, Step};
use crate::fault::{self, Point, Side};
use crate::fd_channel::{self, FdListener};
use crate::handover::Shapes;
use crate::handover::{Encoder, Handover, StateSink};
use crate::lineage;
use crate::pipe::PipeSender;
use crate::schema::{self, Schema, Shape};
use crate::wire::handshake::{self, Secret};
use crate::wire::{self, Ack, Commit, End, Lineage, Message, Offer, Ready, Reason, Reject, Taken};

/// The old process's side of one handover.
pub(super) struct Parent {
    child: Child,
    /// A pidfd: readable once the new process has exited.
    child_exited: OwnedFd,
    listener: Option<TcpListener>,
    fd_listener: Option<FdListener>,
    /// The secret, the transfer timeout and the limits, for KEY.
    terms: Terms,
    /// The start deadline until READY; then the transfer deadline, from the
    /// hand-over.
    deadline: Deadline,
    hello_timeout: Duration,
    /// Kept open until the new process has been dealt with, because the new
    /// process reads the connection closing after its COMMIT as "the old
    /// process is gone, take over".
    conn: Option<Conn>,
    fd_conn: Option<OwnedFd>,
    /// The protocol version chosen in step 3.
    version: u16,
    /// The numbers of the state's fds that crossed in step 7.
    handed_over: Vec<RawFd>,
    /// The new process starts at idle priority; the policy it gets back once
    /// it is ready.
    idle: Option<priority::IdleStart>,
    /// What the new process learns in LINEAGE.
    lineage: Lineage,
    /// This process's own executable, for KEY: the new process's previous
    /// build.
    executable: Option<OwnedFd>,
}

impl Parent {
    /// Step 1: listen, then start the new binary. Fails with the error and,
    /// if the new process had started, its pid.
    pub(super) fn start(
        options: &SplitOptions,
        target: Target,
    ) -> Result<Parent, (Error, Option<u32>)> {
        let not_started = |error| (error, None);
        const STEP: Step = Step::Spawn;
        let deadline = Deadline::after(options.start_timeout);
        let listener = handover_port()
            .map_err(Error::io(STEP))
            .map_err(not_started)?;
        let port = listener
            .local_addr()
            .map_err(Error::io(STEP))
            .map_err(not_started)?
            .port();
        let fd_listener = FdListener::bind()
            .map_err(Error::io(STEP))
            .map_err(not_started)?;
        let secret = Secret::generate()
            .map_err(Error::io(STEP))
            .map_err(not_started)?;
        let binary = target
            .run
            .ok_or(Error::NoPreviousBinary)
            .map_err(not_started)?;
        let launch = Launch {
            binary,
            args: options.args.as_deref(),
            extra_args: &options.extra_args,
            env: &options.env,
        };
        let terms = Terms {
            secret,
            timeout: options.transfer_timeout,
            limits: options.limits,
        };
        let mut child = launch
            .spawn(port, fd_listener.path())
            .map_err(|source| Error::Spawn {
                binary: launch.binary.clone(),
                source,
            })
            .map_err(not_started)?;
        let pid = Pid::from_child(&child);
        let child_exited = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            // Already exited and reaped: this process ignores SIGCHLD, so
            // no zombie kept the pid for us.
            Err(rustix::io::Errno::SRCH) => {
                let status = child.wait().ok();
                return Err((Error::ChildExited { step: STEP, status }, Some(child.id())));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err((Error::io(STEP)(e.into()), Some(child.id())));
            }
        };
        let idle = priority::IdleStart::begin(pid);
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
            terms,
            deadline,
            hello_timeout: options.hello_timeout,
            conn: None,
            fd_conn: None,
            version: 0,
            handed_over: Vec::new(),
            idle,
            lineage: Lineage {
                generation: lineage::generation() + 1,
                binary: target.upgrades_from,
                previous_binary: lineage::binary().to_path_buf(),
            },
            executable: lineage::own_executable(),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The new process's pidfd.
    pub(super) fn pidfd(&self) -> BorrowedFd<'_> {
        self.child_exited.as_fd()
    }

    /// Steps 2 to 5, while the program goes on serving: the new process
    /// connects, both prove the secret, the schema is agreed, and the new
    /// process sets itself up and says READY. `dropped` becomes readable
    /// when the program drops its [`Upgrade`](super::Upgrade), which ends
    /// the wait at once.
    pub(super) fn prepare(&mut self, own: &Own, dropped: BorrowedFd<'_>) -> Result<(), Error> {
        without_panics(|| self.walk_to_ready(own, dropped))
    }

    fn walk_to_ready(&mut self, own: &Own, dropped: BorrowedFd<'_>) -> Result<(), Error> {
        fault::at(Side::Old, Point::Spawned);
        // Step 2: the new process connects to the fd channel, where the
        // kernel says who it is (SO_PEERCRED), and only then learns the
        // secret and the terms, in KEY. Then it connects over TCP and
        // proves the secret. No byte goes to anyone else.
        let listener = self.listener.take().expect("prepare runs once");
        let fd_listener = self.fd_listener.take().expect("prepare runs once");
        let arrived = accept_child(
            &Doors {
                listener: &listener,
                fd_listener: &fd_listener,
                child: Pid::from_child(&self.child),
                child_exited: self.child_exited.as_fd(),
                dropped,
                terms: &self.terms,
                executable: self.executable.as_ref().map(AsFd::as_fd),
                hello_timeout: self.hello_timeout,
            },
            &self.deadline,
        )?;
        drop((listener, fd_listener, self.executable.take()));
        let versions = arrived.versions;
        self.fd_conn = Some(arrived.fd_channel);
        let conn = self
            .conn
            .insert(Conn::new(arrived.stream, self.deadline, Side::Old));
        fault::at(Side::Old, Point::Hello);
        // Steps 3 and 4 leave as one burst.
        let burst = conn.cork();

        // Step 3: prove the secret back and choose the protocol version.
        let chosen = handshake::choose_version(versions);
        conn.write_all(
            Step::Hello,
            &handshake::welcome(&self.terms.secret, chosen.unwrap_or(0)),
        )?;
        let Some(version) = chosen else {
            return Err(Error::ProtocolVersion {
                ours: fault::versions(Side::Old),
                theirs: versions,
            });
        };
        self.version = version;

        // Step 4: agree on the schema; if the new process does not accept
        // this one, say why, and what differs, in both processes.
        let Offer {
            accepted,
            description,
        } = conn.recv(Step::Offer)?;
        fault::at(Side::Old, Point::Offer);
        if !accepted
            .iter()
            .any(|schema| schema.fingerprint == own.schema.fingerprint)
        {
            let error = Error::SchemaMismatch {
                sent: own.schema.clone(),
                accepted,
                differences: description
                    .map(|new| schema::differences(&own.shape, &new))
                    .unwrap_or_default(),
            };
            return Err(reject(conn, own, Step::Offer, Reason::Schema, error));
        }
        conn.send(
            Step::Offer,
            &wire::State {
                schema: own.schema.clone(),
            },
        )?;
        if version >= wire::LINEAGE_VERSION {
            conn.send(Step::Offer, &self.lineage)?;
        }
        drop(burst);

        // Step 5: the new process sets itself up, as slowly as it must,
        // while this process serves; then it says READY. A new process of
        // protocol version 1 has no READY: it waits for the state already.
        if version >= wire::READY_VERSION {
            wait_for_ready(conn, self.child_exited.as_fd(), dropped, &self.deadline)?;
        }
        if let Some(idle) = self.idle.take() {
            idle.end();
        }
        fault::at(Side::Old, Point::Ready);
        log::debug!("mitosis: step 5: pid {} is ready", self.child.id());
        Ok(())
    }

    /// Steps 6 to 9, the pause: the state, its fds, the commit and the
    /// acknowledgement, under the transfer timeout. On success the state
    /// comes back too: disarmed (its fds point at `/dev/null`), for the
    /// caller to drop after it has reported `Done`.
    pub(super) fn hand_over<S: Handover>(
        mut self,
        state: S,
        own: &Own,
        transfer_timeout: Duration,
    ) -> (Outcome<S>, Option<S>) {
        self.deadline = Deadline::after(transfer_timeout);
        let result = without_panics(|| self.transfer(&state, own));
        let pid = self.child.id();
        match result {
            Ok(()) => {
                log::info!("mitosis: pid {pid} took over");
                (Outcome::Done { pid }, Some(state))
            }
            Err(error) => {
                let error = self.give_up(error);
                log::warn!("mitosis: handover to pid {pid} failed: {error}");
                (Outcome::Failed { state, error }, None)
            }
        }
    }

    fn transfer<S: Handover>(&mut self, state: &S, own: &Own) -> Result<(), Error> {
        let conn = self.conn.as_mut().expect("prepared");
        conn.set_deadline(self.deadline);
        let fd_conn = self.fd_conn.as_ref().expect("prepared");
        // For a small state, the data and END share a segment.
        let burst = conn.cork();

        // Step 6: stream the encoded state, then its lengths and fd count;
        // or, over a limit, a REJECT that tells the new process why. Large
        // byte buffers take the pipe, where the version has it. The pipe
        // lives to the end of this function, which empties it on every way
        // out: until then the new process may still be reading it.
        let mut pipe = (self.version >= wire::PIPE_VERSION)
            .then(|| PipeSender::new(fd_conn.as_fd(), self.child_exited.as_fd()));
        let mut frames = Limited {
            frames: DataFrames {
                conn,
                pipe: pipe.as_mut(),
            },
            max: self.terms.limits.state_bytes,
            sent: 0,
        };
        let encoded = match Encoder::encode(&mut frames, state) {
            Ok(encoded) if encoded.fds.len() as u64 > self.terms.limits.fds => {
                Err(Error::LimitExceeded {
                    step: Step::State,
                    what: "fds",
                    found: encoded.fds.len() as u64,
                    max: self.terms.limits.fds,
                })
            }
            encoded => encoded,
        };
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(error @ (Error::LimitExceeded { .. } | Error::UnreadBytes { .. })) => {
                return Err(reject(conn, own, Step::State, Reason::Limit, error));
            }
            Err(gone @ Error::PeerGone { .. }) => return Err(said_why(conn, Step::State, gone)),
            Err(error) => return Err(error),
        };
        let end = End {
            stream_bytes: encoded.total_bytes,
            out_of_line_bytes: encoded.out_of_line_bytes,
            fds: encoded.fds.len() as u32,
        };
        conn.send(Step::State, &end)?;
        drop(burst);
        log::debug!(
            "mitosis: step 6: sent {} bytes of state and {} out of line, {} fds to follow",
            encoded.total_bytes,
            encoded.out_of_line_bytes,
            encoded.fds.len()
        );

        // Step 7: the fds, over the channel only the new process can reach.
        let fds: Vec<BorrowedFd<'_>> = encoded.fds.iter().map(AsFd::as_fd).collect();
        let sent = fd_channel::send_fds(fd_conn.as_fd(), &fds, &self.deadline);
        if sent.is_ok() {
            // Only the state's own: a secret's pipe is closed with `encoded`.
            self.handed_over = encoded
                .fds
                .iter()
                .filter(|fd| fd.is_state())
                .map(|fd| fd.as_fd().as_raw_fd())
                .collect();
        }
        drop(fds);
        drop(encoded);
        sent.map_err(|error| said_why(conn, Step::Fds, error))?;
        if let Some(pipe) = &pipe {
            log::debug!(
                "mitosis: step 6: {} of the out-of-line bytes went through the pipe",
                pipe.sent
            );
        }

        // Step 8: the new process decodes, checks and commits, or says why
        // not.
        let (kind, payload) = conn.read_frame(Step::Commit, &[Commit::KIND, wire::Abort::KIND])?;
        if kind == wire::Abort::KIND {
            let abort = wire::Abort::decode(Step::Commit, &payload)?;
            return Err(Error::Aborted {
                step: Step::Commit,
                reason: abort.message,
            });
        }
        Commit::decode(Step::Commit, &payload)?;
        fault::at(Side::Old, Point::Commit);

        // Step 9: acknowledge, then wait for the new process to say it has
        // taken over. Until TAKEN arrives, the new process's death leaves
        // the connections with this process, which then rolls back. There
        // is no deadline here: after ACK, a live new process is never
        // killed, because it may already be serving.
        conn.send(Step::Ack, &Ack)?;
        fault::at(Side::Old, Point::Ack);
        conn.drop_deadline(Step::Ack)?;
        conn.recv::<Taken>(Step::Ack)?;
        fault::at(Side::Old, Point::Taken);
        // Still the main process for a service manager: name the new one
        // before letting go (the connection closes after this).
        crate::supervisor::handed_over(self.child.id());
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
    pub(super) fn give_up(&mut self, error: Error) -> Error {
        // Its idle start's timer must not touch the pid once it is reaped.
        self.idle = None;
        let child_knows = matches!(
            error,
            Error::SchemaMismatch { .. }
                | Error::ProtocolVersion { .. }
                | Error::Aborted { .. }
                | Error::LimitExceeded { .. }
                | Error::UnreadBytes { .. }
                | Error::PeerGone { .. }
        );
        if !(child_knows && self.wait_for_exit()) {
            // Through the pidfd, not the pid: when this process ignores
            // SIGCHLD, the kernel reaps the child as it exits, and its pid
            // may already name another process.
            let _ = pidfd_send_signal(&self.child_exited, Signal::KILL);
        }
        // Err only when the kernel reaped it first (SIGCHLD ignored): its
        // exit status is gone, but it has exited all the same.
        let status = self.child.wait().ok();
        self.conn = None;
        self.fd_conn = None;
        match error {
            Error::PeerGone { step } => Error::ChildExited { step, status },
            error => error,
        }
    }

    /// Waits until the new process exits or the deadline passes.
    fn wait_for_exit(&self) -> bool {
        loop {
            let Ok(left) = self.deadline.remaining(Step::Ready) else {
                return false;
            };
            let mut fds = [PollFd::new(&self.child_exited, PollFlags::IN)];
            match poll(&mut fds, left.map(timespec).as_ref()) {
                Ok(_) if !fds[0].revents().is_empty() => return true,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Step 5 on this side: waits for READY, or ABORT (the new process's
/// set-up failed, and it says why), while watching for the new process's
/// exit and for the program dropping its `Upgrade`.
fn wait_for_ready(
    conn: &mut Conn,
    child_exited: BorrowedFd<'_>,
    dropped: BorrowedFd<'_>,
    deadline: &Deadline,
) -> Result<(), Error> {
    const STEP: Step = Step::Ready;
    loop {
        let left = deadline.remaining(STEP)?;
        match conn.wait_readable(STEP, &[child_exited, dropped], left)? {
            Readable::Conn => break,
            // Its connection may still hold READY, sent just before it
            // exited: read that first.
            Readable::Watched(0) => match conn.wait_readable(STEP, &[], Some(Duration::ZERO))? {
                Readable::Conn => break,
                _ => return Err(Error::PeerGone { step: STEP }),
            },
            Readable::Watched(_) => return Err(abandoned(STEP)),
            Readable::Nothing => {}
        }
    }
    let (kind, payload) = conn.read_frame(STEP, &[Ready::KIND, wire::Abort::KIND])?;
    if kind == wire::Abort::KIND {
        let abort = wire::Abort::decode(STEP, &payload)?;
        return Err(Error::Aborted {
            step: STEP,
            reason: abort.message,
        });
    }
    Ready::decode(STEP, &payload)?;
    Ok(())
}

/// The new process stopped taking the state (the fd channel closed before
/// the last batch, or the pipe's wait saw its connection or its pidfd turn
/// readable): if it said why with ABORT, already waiting on the
/// connection, that is the error, rather than only "it went away". It
/// gives up that way when its open-file limit is too low for the fds, say.
fn said_why(conn: &mut Conn, step: Step, gone: Error) -> Error {
    if !matches!(gone, Error::PeerGone { .. })
        || !matches!(
            conn.wait_readable(step, &[], Some(Duration::ZERO)),
            Ok(Readable::Conn)
        )
    {
        return gone;
    }
    match conn.read_frame(step, &[wire::Abort::KIND]) {
        Ok((_, payload)) => match wire::Abort::decode(step, &payload) {
            Ok(abort) => Error::Aborted {
                step,
                reason: abort.message,
            },
            Err(_) => gone,
        },
        Err(_) => gone,
    }
}

/// The handover port: a loopback listener on an ephemeral port, with a
/// backlog as deep as the system allows (std's is 128), so that a flood of
/// connections from strangers, which step 2 closes as fast as they come,
/// rarely leaves the new process's connection waiting for room.
fn handover_port() -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, listen, socket_with};
    let socket = socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    bind(
        &socket,
        &std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
    )?;
    // The kernel caps it at net.core.somaxconn (4096 by default).
    listen(&socket, 4096)?;
    Ok(TcpListener::from(socket))
}

/// The old process's own schema and shape, worked out before step 1.
pub(super) struct Own {
    pub(super) schema: Schema,
    pub(super) shape: Shape,
}

impl Own {
    /// `S`'s, traced once; an untraceable type fails here, before any
    /// process starts.
    pub(super) fn of<S: Handover>() -> Result<Own, Error> {
        without_panics(|| {
            let shapes = &mut Shapes::new();
            let shape = S::shape(shapes)?;
            Ok(Own {
                schema: shapes.schema_with::<S>(&shape),
                shape,
            })
        })
    }
}

/// Tells the new process, with REJECT, why the state will not come, and
/// returns the error for the old process's own outcome. If even the REJECT
/// cannot be written, that error is the one to report.
fn reject(conn: &Conn, own: &Own, step: Step, reason: Reason, error: Error) -> Error {
    let reject = Reject {
        reason,
        schema: own.schema.clone(),
        message: error.to_string(),
        // The new process names what differs, from its side.
        description: (reason == Reason::Schema).then(|| own.shape.clone()),
    };
    match conn.send(step, &reject) {
        Ok(()) => error,
        Err(write_error) => write_error,
    }
}

/// The state's frames, stopped at the handover's byte limit: a state over
/// it fails before the excess is sent.
struct Limited<'c, 'p> {
    frames: DataFrames<'c, 'p>,
    max: u64,
    sent: u64,
}

impl Limited<'_, '_> {
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

impl StateSink for Limited<'_, '_> {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.admit(bytes.len())?;
        self.frames.data(bytes)
    }

    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.admit(bytes.len())?;
        self.frames.out_of_line(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    fn pair() -> (Conn, Conn) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let new = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (old, _) = listener.accept().unwrap();
        let deadline = Deadline::after(Duration::from_secs(5));
        (
            Conn::new(old, deadline, Side::Old),
            Conn::new(new, deadline, Side::New),
        )
    }

    #[test]
    fn a_new_process_that_stops_taking_the_state_is_heard_out() {
        let gone = || Error::PeerGone { step: Step::State };
        // It said why.
        let (mut old, new) = pair();
        let abort = wire::Abort {
            reason: Reason::Io,
            message: "out of fds".into(),
        };
        new.send(Step::State, &abort).unwrap();
        drop(new);
        let error = said_why(&mut old, Step::State, gone());
        assert!(
            matches!(&error, Error::Aborted { step: Step::State, reason } if reason == "out of fds"),
            "{error:?}"
        );
        // It only went away; or it has not closed its connection yet (its
        // pidfd said it exited): no wait either way.
        let (mut old, new) = pair();
        drop(new);
        assert!(matches!(
            said_why(&mut old, Step::State, gone()),
            Error::PeerGone { .. }
        ));
        let (mut old, _new) = pair();
        assert!(matches!(
            said_why(&mut old, Step::State, gone()),
            Error::PeerGone { .. }
        ));
    }
}
