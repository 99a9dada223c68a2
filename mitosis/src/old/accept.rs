//! Step 2 on the old side: waiting for the new process on the fd channel
//! and on the handover port, among any others that arrive.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::Pid;

use crate::conn::{Deadline, timespec};
use crate::env::{MAX_PENDING, Terms};
use crate::error::{Error, Step};
use crate::fd_channel::{self, FdListener};
use crate::wire::handshake::{Progress, Secret, check_hello};
use crate::wire::{Arrival, Hello};

struct Pending {
    stream: TcpStream,
    hello: [u8; Hello::LEN],
    filled: usize,
    /// `None`: never, for a hello timeout too long for an `Instant`.
    expires: Option<Instant>,
}

impl Pending {
    /// Reads what has arrived, without blocking; refuses as soon as the
    /// bytes cannot be a HELLO.
    fn advance(&mut self, secret: &Secret) -> Progress {
        match self.stream.read(&mut self.hello[self.filled..]) {
            Ok(0) => return Progress::Refused("closed before proving the secret"),
            Ok(n) => self.filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Progress::Waiting;
            }
            Err(_) => return Progress::Refused("failed before proving the secret"),
        }
        check_hello(secret, &self.hello[..self.filled])
    }
}

/// The two doors the new process comes through in step 2, and what tells
/// it apart from anyone else who knocks.
pub(crate) struct Doors<'p> {
    /// The handover port.
    pub(crate) listener: &'p TcpListener,
    /// The fd channel, which only the new process's pid may use.
    pub(crate) fd_listener: &'p FdListener,
    pub(crate) child: Pid,
    /// Readable once the new process has exited.
    pub(crate) child_exited: BorrowedFd<'p>,
    /// Readable once the program has dropped its `Upgrade`.
    pub(crate) dropped: BorrowedFd<'p>,
    /// The secret, the timeout and the limits, for KEY.
    pub(crate) terms: &'p Terms,
    /// This process's executable, sent with KEY.
    pub(crate) executable: Option<BorrowedFd<'p>>,
    pub(crate) hello_timeout: Duration,
}

/// Who arrived: the new process's fd channel, which has KEY, and its TCP
/// connection, which proved the secret, with the versions it speaks.
pub(crate) struct Arrived {
    pub(crate) fd_channel: OwnedFd,
    pub(crate) stream: TcpStream,
    pub(crate) versions: (u16, u16),
}

/// Step 2: waits for the new process at both doors. On the fd channel the
/// kernel names the pid of each connection: the child's gets KEY, any
/// other is closed. On the port, connections are read concurrently, without
/// blocking, so that an idle or garbage-sending one cannot delay the real
/// one; each gets `hello_timeout`, and none is ever sent a byte. The child
/// is the one whose HELLO proves the secret, which only KEY told it.
pub(crate) fn accept_child(doors: &Doors<'_>, deadline: &Deadline) -> Result<Arrived, Error> {
    const STEP: Step = Step::Connect;
    let hello_timeout = doors.hello_timeout;
    doors
        .listener
        .set_nonblocking(true)
        .map_err(Error::io(STEP))?;
    let mut fd_channel: Option<OwnedFd> = None;
    // The address the child's TCP connection comes from, once its ARRIVAL
    // has come; from then on every other connection is closed as it arrives.
    let mut arrival: Option<SocketAddr> = None;
    let mut strangers: u64 = 0;
    let mut pending: Vec<Pending> = Vec::new();
    let result = 'accept: loop {
        let now = Instant::now();
        pending.retain(|conn| {
            let alive = conn.expires.is_none_or(|expires| expires > now);
            if !alive {
                log::warn!("mitosis: dropped a handover connection that sent no HELLO within {hello_timeout:?}");
            }
            alive
        });
        let left = deadline.remaining(STEP)?;
        // The earliest of the deadline and every expiry; `None`: no limit.
        let wait = pending
            .iter()
            .filter_map(|conn| conn.expires)
            .map(|expires| expires.saturating_duration_since(now))
            .chain(left)
            .min();

        const PORT: usize = 0;
        const EXITED: usize = 1;
        const CHANNEL: usize = 2;
        const DROPPED: usize = 3;
        const FIRST_PENDING: usize = 4;
        let (ready, readable) = {
            let mut fds = Vec::with_capacity(FIRST_PENDING + pending.len());
            fds.push(PollFd::new(doors.listener, PollFlags::IN));
            fds.push(PollFd::new(&doors.child_exited, PollFlags::IN));
            // Before KEY, the fd channel's listener, for the child's
            // connection; after, that connection, for its ARRIVAL.
            match (&fd_channel, arrival) {
                (None, _) => fds.push(PollFd::new(doors.fd_listener, PollFlags::IN)),
                (Some(channel), None) => fds.push(PollFd::new(channel, PollFlags::IN)),
                (Some(channel), Some(_)) => fds.push(PollFd::new(channel, PollFlags::empty())),
            }
            fds.push(PollFd::new(&doors.dropped, PollFlags::IN));
            fds.extend(
                pending
                    .iter()
                    .map(|conn| PollFd::new(&conn.stream, PollFlags::IN)),
            );
            match poll(&mut fds, wait.map(timespec).as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io(STEP)(e.into())),
            }
            let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
            let readable = ready[FIRST_PENDING..].to_vec();
            (ready, readable)
        };
        if ready[EXITED] {
            break 'accept Err(Error::PeerGone { step: STEP });
        }
        if ready[DROPPED] {
            break 'accept Err(abandoned(STEP));
        }
        if ready[CHANNEL] {
            match &fd_channel {
                None => {
                    if let Some(conn) = doors.fd_listener.accept_child(doors.child)? {
                        fd_channel::send_key(
                            conn.as_fd(),
                            &doors.terms.key(),
                            doors.executable,
                            deadline,
                        )?;
                        fd_channel = Some(conn);
                    }
                }
                Some(channel) => {
                    strangers += learn_arrival(channel, &mut arrival, &mut pending)?;
                }
            }
        }
        for index in (0..pending.len()).rev() {
            if !readable[index] {
                continue;
            }
            match pending[index].advance(&doors.terms.secret) {
                Progress::Waiting => {}
                Progress::Refused(why) => {
                    let conn = pending.swap_remove(index);
                    log::warn!(
                        "mitosis: refused a handover connection from {:?} that {why}",
                        conn.stream.peer_addr().ok()
                    );
                }
                Progress::Proven(versions) => {
                    let conn = pending.swap_remove(index);
                    // Only KEY, sent on the child's channel, holds the
                    // secret this HELLO proves.
                    let fd_channel = fd_channel.take().ok_or_else(|| {
                        Error::protocol(STEP, "a HELLO proved the secret before KEY was sent")
                    })?;
                    conn.stream
                        .set_nonblocking(false)
                        .map_err(Error::io(STEP))?;
                    conn.stream.set_nodelay(true).map_err(Error::io(STEP))?;
                    break 'accept Ok(Arrived {
                        fd_channel,
                        stream: conn.stream,
                        versions,
                    });
                }
            }
        }
        if ready[PORT] {
            loop {
                match doors.listener.accept() {
                    Ok((stream, from)) => {
                        // A full list would drop its oldest, which may be
                        // the child's, accepted before its ARRIVAL was read:
                        // read it now (it was sent before the child
                        // connected), and drop strangers instead.
                        if pending.len() == MAX_PENDING
                            && let Some(channel) = &fd_channel
                        {
                            strangers += learn_arrival(channel, &mut arrival, &mut pending)?;
                        }
                        if arrival.is_some_and(|child| child != from) {
                            // Not the child's: closed unread, at once.
                            strangers += 1;
                            continue;
                        }
                        stream.set_nonblocking(true).map_err(Error::io(STEP))?;
                        if pending.len() == MAX_PENDING {
                            log::warn!(
                                "mitosis: too many unproven handover connections; dropped the oldest"
                            );
                            pending.remove(0);
                        }
                        pending.push(Pending {
                            stream,
                            hello: [0; Hello::LEN],
                            filled: 0,
                            expires: Instant::now().checked_add(hello_timeout),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A connection that failed between SYN and accept is
                    // that connection's problem, not the handover's.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                    Err(e) => break 'accept Err(Error::io(STEP)(e)),
                }
            }
        }
    };
    if strangers > 0 {
        log::warn!(
            "mitosis: closed {strangers} connections to the handover port from other processes, \
             unread"
        );
    }
    result
}

/// Reads the child's ARRIVAL, if it has come and was not read yet, and then
/// closes every pending connection from any other address. Returns how many it
/// closed.
fn learn_arrival(
    channel: &OwnedFd,
    arrival: &mut Option<SocketAddr>,
    pending: &mut Vec<Pending>,
) -> Result<u64, Error> {
    if arrival.is_some() {
        return Ok(0);
    }
    let Some(Arrival { port }) = fd_channel::try_recv_arrival(channel.as_fd())? else {
        return Ok(0);
    };
    // The child binds 127.0.0.1; the whole address counts, because anyone
    // can connect from the same port on 127.0.0.2.
    let child = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    *arrival = Some(child);
    let before = pending.len();
    pending.retain(|conn| conn.stream.peer_addr().ok() == Some(child));
    Ok((before - pending.len()) as u64)
}

/// What ends a preparation whose `Upgrade` the program dropped; only
/// logged, since nobody is left to receive it.
pub(super) fn abandoned(step: Step) -> Error {
    Error::Aborted {
        step,
        reason: "the program dropped its mitosis::Upgrade before handing over".into(),
    }
}
