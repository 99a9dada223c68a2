//! Step 2 on the old side: waiting for the new process's connection on the
//! handover port, among any others that arrive.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};

use crate::conn::{Deadline, timespec};
use crate::env::MAX_PENDING;
use crate::error::{Error, Step};
use crate::wire::Hello;
use crate::wire::handshake::{Progress, Secret, check_hello};

struct Pending {
    stream: TcpStream,
    hello: [u8; Hello::LEN],
    filled: usize,
    expires: Instant,
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

/// Step 2: waits for the new process to connect and send a HELLO that proves
/// the secret. Connections are read concurrently, without blocking, so an
/// idle or garbage-sending connection cannot delay the real one; each gets
/// `hello_timeout`, and none is ever sent a byte. Returns the proven
/// connection and the version range it offers.
pub(crate) fn accept_child(
    listener: &TcpListener,
    secret: &Secret,
    child_exited: BorrowedFd<'_>,
    deadline: &Deadline,
    hello_timeout: Duration,
) -> Result<(TcpStream, (u16, u16)), Error> {
    const STEP: Step = Step::Connect;
    listener.set_nonblocking(true).map_err(Error::io(STEP))?;
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        let now = Instant::now();
        pending.retain(|conn| {
            let alive = conn.expires > now;
            if !alive {
                log::warn!("mitosis: dropped a handover connection that sent no HELLO within {hello_timeout:?}");
            }
            alive
        });
        let left = deadline.remaining(STEP)?;
        let wait = pending
            .iter()
            .map(|conn| conn.expires - now)
            .fold(left, Duration::min);

        let (listener_ready, child_gone, readable) = {
            let mut fds = Vec::with_capacity(2 + pending.len());
            fds.push(PollFd::new(listener, PollFlags::IN));
            fds.push(PollFd::new(&child_exited, PollFlags::IN));
            fds.extend(
                pending
                    .iter()
                    .map(|conn| PollFd::new(&conn.stream, PollFlags::IN)),
            );
            match poll(&mut fds, Some(&timespec(wait))) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io(STEP)(e.into())),
            }
            let readable: Vec<bool> = fds[2..].iter().map(|fd| !fd.revents().is_empty()).collect();
            (
                !fds[0].revents().is_empty(),
                !fds[1].revents().is_empty(),
                readable,
            )
        };
        if child_gone {
            return Err(Error::PeerGone { step: STEP });
        }
        for index in (0..pending.len()).rev() {
            if !readable[index] {
                continue;
            }
            match pending[index].advance(secret) {
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
                    conn.stream
                        .set_nonblocking(false)
                        .map_err(Error::io(STEP))?;
                    conn.stream.set_nodelay(true).map_err(Error::io(STEP))?;
                    return Ok((conn.stream, versions));
                }
            }
        }
        if listener_ready {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
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
                            expires: Instant::now() + hello_timeout,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A connection that failed between SYN and accept is
                    // that connection's problem, not the handover's.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                    Err(e) => return Err(Error::io(STEP)(e)),
                }
            }
        }
    }
}
