//! The TCP connection between the two processes: framed reads and writes
//! under the handover's deadline, and corking (PROTOCOL.md, "Frames").
//!
//! Every blocking call goes through [`Conn`], which arms the socket's timeout
//! with what is left of the handover's deadline, so no read or write can
//! outlive it.

use std::io::{self, BufReader, IoSlice, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::SendFlags;

use crate::error::{Error, Step};
use crate::fault::{Side, Tripwire};
use crate::wire::{self, HEADER_LEN, Kind, Message};

/// A point in time after which the handover has failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    /// `None`: no deadline, for a timeout so long (`Duration::MAX`) that
    /// the point in time would not fit in an `Instant`.
    at: Option<Instant>,
    timeout: Duration,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now().checked_add(timeout),
            timeout,
        }
    }

    /// What is left (`None`: no limit), or a timeout error naming `step`.
    pub(crate) fn remaining(&self, step: Step) -> Result<Option<Duration>, Error> {
        let Some(at) = self.at else { return Ok(None) };
        match at.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(self.expired(step)),
        }
    }

    pub(crate) fn expired(&self, step: Step) -> Error {
        Error::Timeout {
            step,
            after: self.timeout,
            in_new_process: false,
        }
    }

    /// Maps an I/O error, reading an expired socket timeout as the deadline.
    pub(crate) fn io_error(&self, step: Step) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.expired(step),
            _ => Error::io(step)(source),
        }
    }
}

/// The TCP connection between the two processes, after the preambles.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    deadline: Deadline,
    /// Set while a read may wait for as long as the other process lives.
    unbounded: bool,
    /// Counts step 6's bytes for the tests' `state@N` faults; nothing
    /// without the `test-hooks` feature.
    tripwire: Tripwire,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, deadline: Deadline, side: Side) -> Conn {
        Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
            deadline,
            unbounded: false,
            tripwire: Tripwire::new(side),
        }
    }

    fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// The socket, for a `poll` that watches it along with other fds.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.stream().as_fd()
    }

    /// Holds back partly filled segments (`TCP_CORK`) until the returned
    /// guard is dropped. With `TCP_NODELAY` every frame is a segment of its
    /// own, and the other process may wake for each; a burst written
    /// corked leaves in as few segments as its size allows, and the other
    /// process wakes once. Without cork (it cannot fail on a TCP socket),
    /// the frames still go out, one segment each.
    pub(crate) fn cork(&self) -> Corked {
        let fd = self.stream().as_fd().try_clone_to_owned().ok();
        let fd = fd.filter(|fd| set_cork(fd, true));
        Corked { fd }
    }

    /// Sends what a cork holds back now, and corks again: for a frame the
    /// other process must act on before more frames follow.
    pub(crate) fn push(&self) {
        let corked = rustix::net::sockopt::tcp_cork(self.stream()).unwrap_or(false);
        if corked && set_cork(self.stream(), false) {
            set_cork(self.stream(), true);
        }
    }

    fn arm_read(&self, step: Step) -> Result<(), Error> {
        if self.unbounded {
            return Ok(());
        }
        let left = self.deadline.remaining(step)?;
        self.stream()
            .set_read_timeout(left)
            .map_err(Error::io(step))
    }

    fn arm_write(&self, step: Step) -> Result<(), Error> {
        if self.unbounded {
            return Ok(());
        }
        let left = self.deadline.remaining(step)?;
        self.stream()
            .set_write_timeout(left)
            .map_err(Error::io(step))
    }

    pub(crate) fn read_exact(&mut self, step: Step, buf: &mut [u8]) -> Result<(), Error> {
        let allowed = self.allow(step, buf.len());
        let (first, rest) = buf.split_at_mut(allowed);
        self.read_exact_unchecked(step, first)?;
        self.passed(step, allowed);
        if !rest.is_empty() {
            self.read_exact_unchecked(step, rest)?;
            self.passed(step, rest.len());
        }
        Ok(())
    }

    fn read_exact_unchecked(&mut self, step: Step, buf: &mut [u8]) -> Result<(), Error> {
        self.arm_read(step)?;
        self.reader
            .read_exact(buf)
            .map_err(self.deadline.io_error(step))
    }

    pub(crate) fn write_all(&self, step: Step, bytes: &[u8]) -> Result<(), Error> {
        self.write_all_vectored(step, &mut [IoSlice::new(bytes)])
    }

    /// Writes several buffers as one, with as few syscalls as the socket
    /// allows.
    fn write_all_vectored(&self, step: Step, parts: &mut [IoSlice<'_>]) -> Result<(), Error> {
        let len = parts.iter().map(|part| part.len()).sum();
        let allowed = self.allow(step, len);
        if allowed < len {
            // Only with a `state@N` fault armed: stop at exactly byte N.
            let flat: Vec<u8> = parts.iter().flat_map(|part| part.iter().copied()).collect();
            let (first, rest) = flat.split_at(allowed);
            for part in [first, rest] {
                if !part.is_empty() {
                    self.write_all_vectored_unchecked(step, &mut [IoSlice::new(part)])?;
                }
                self.passed(step, part.len());
            }
            return Ok(());
        }
        self.write_all_vectored_unchecked(step, parts)?;
        self.passed(step, len);
        Ok(())
    }

    /// Writes with `sendmsg` and `MSG_NOSIGNAL`, never `write`: a write to a
    /// connection the other process has hung up on raises SIGPIPE, which
    /// kills a host that has not ignored it (a C host, a program built with
    /// `-Zon-broken-pipe=kill`), state and connections with it. With the
    /// flag it is only an `EPIPE` error, and the handover rolls back.
    fn write_all_vectored_unchecked(
        &self,
        step: Step,
        mut parts: &mut [IoSlice<'_>],
    ) -> Result<(), Error> {
        while !parts.is_empty() {
            self.arm_write(step)?;
            let sent = rustix::net::sendmsg(
                self.stream(),
                parts,
                &mut rustix::net::SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            );
            match sent {
                Ok(0) => return Err(Error::PeerGone { step }),
                Ok(n) => IoSlice::advance_slices(&mut parts, n),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.deadline.io_error(step)(e.into())),
            }
        }
        Ok(())
    }

    /// How many of the next `len` bytes may move before a test fault
    /// strikes: all of them but in step 6 under `test-hooks`. Bytes that
    /// cross outside the connection (through the pipe) count too.
    pub(crate) fn allow(&self, step: Step, len: usize) -> usize {
        if step == Step::State {
            self.tripwire.allow(len)
        } else {
            len
        }
    }

    pub(crate) fn passed(&self, step: Step, len: usize) {
        if step == Step::State {
            self.tripwire.passed(len);
        }
    }

    pub(crate) fn write_frame(&self, step: Step, kind: Kind, payload: &[u8]) -> Result<(), Error> {
        debug_assert!(payload.len() <= kind.max_payload() as usize);
        let header = wire::header(kind, payload.len() as u32);
        self.write_all_vectored(step, &mut [IoSlice::new(&header), IoSlice::new(payload)])
    }

    /// Writes one message as a frame.
    pub(crate) fn send<M: Message>(&self, step: Step, message: &M) -> Result<(), Error> {
        self.write_frame(step, M::KIND, &message.encode())
    }

    /// Reads one frame, which must be an `M`.
    pub(crate) fn recv<M: Message>(&mut self, step: Step) -> Result<M, Error> {
        let (_, payload) = self.read_frame(step, &[M::KIND])?;
        M::decode(step, &payload)
    }

    /// Reads a frame header, checking the kind against `expected` and the
    /// length against the kind's limit before anything is allocated.
    pub(crate) fn read_header(
        &mut self,
        step: Step,
        expected: &[Kind],
    ) -> Result<(Kind, u32), Error> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(step, &mut header)?;
        wire::decode_header(step, header, expected)
    }

    /// Reads a payload of `len` bytes, whose header has been read.
    pub(crate) fn read_payload(&mut self, step: Step, len: u32) -> Result<Vec<u8>, Error> {
        let mut payload = vec![0; len as usize];
        self.read_exact(step, &mut payload)?;
        Ok(payload)
    }

    /// Reads a whole frame of one of the `expected` kinds.
    pub(crate) fn read_frame(
        &mut self,
        step: Step,
        expected: &[Kind],
    ) -> Result<(Kind, Vec<u8>), Error> {
        let (kind, len) = self.read_header(step, expected)?;
        Ok((kind, self.read_payload(step, len)?))
    }

    /// From here on, reads and writes have no time limit: for step 9,
    /// where only the other process's decision or its death may end a wait.
    pub(crate) fn drop_deadline(&mut self, step: Step) -> Result<(), Error> {
        self.unbounded = true;
        self.stream()
            .set_read_timeout(None)
            .and_then(|()| self.stream().set_write_timeout(None))
            .map_err(Error::io(step))
    }

    /// The deadline reads and writes run against.
    pub(crate) fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// From here on, reads and writes run against `deadline`: the transfer
    /// timeout, restarted when the transfer begins.
    pub(crate) fn set_deadline(&mut self, deadline: Deadline) {
        self.unbounded = false;
        self.deadline = deadline;
    }

    /// Whether a frame has begun to arrive: bytes are buffered here, or the
    /// socket is readable (or closed) within `wait`. `None` waits for as long
    /// as it takes; `watch` are more fds whose readiness also ends the wait,
    /// reported by index.
    pub(crate) fn wait_readable(
        &self,
        step: Step,
        watch: &[BorrowedFd<'_>],
        wait: Option<Duration>,
    ) -> Result<Readable, Error> {
        if !self.reader.buffer().is_empty() {
            return Ok(Readable::Conn);
        }
        let mut fds: Vec<PollFd<'_>> = std::iter::once(self.stream().as_fd())
            .chain(watch.iter().copied())
            .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut fds, wait.map(timespec).as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io(step)(e.into())),
        }
        if !fds[0].revents().is_empty() {
            return Ok(Readable::Conn);
        }
        Ok(fds[1..]
            .iter()
            .position(|fd| !fd.revents().is_empty())
            .map_or(Readable::Nothing, Readable::Watched))
    }

    /// Appends `len` bytes from the stream to `buf`, reading into its spare
    /// capacity without filling it with zeros first.
    pub(crate) fn read_append(
        &mut self,
        step: Step,
        buf: &mut Vec<u8>,
        len: u32,
    ) -> Result<(), Error> {
        let allowed = self.allow(step, len as usize) as u32;
        self.read_append_unchecked(step, buf, allowed)?;
        self.passed(step, allowed as usize);
        if allowed < len {
            self.read_append_unchecked(step, buf, len - allowed)?;
            self.passed(step, (len - allowed) as usize);
        }
        Ok(())
    }

    fn read_append_unchecked(
        &mut self,
        step: Step,
        buf: &mut Vec<u8>,
        len: u32,
    ) -> Result<(), Error> {
        self.arm_read(step)?;
        let got = (&mut self.reader)
            .take(len.into())
            .read_to_end(buf)
            .map_err(self.deadline.io_error(step))?;
        if got < len as usize {
            return Err(Error::PeerGone { step });
        }
        Ok(())
    }
}

/// Sends what [`Conn::cork`] held back, when dropped, on every path out of
/// the burst, errors included.
pub(crate) struct Corked {
    fd: Option<OwnedFd>,
}

impl Drop for Corked {
    fn drop(&mut self) {
        if let Some(fd) = &self.fd {
            set_cork(fd, false);
        }
    }
}

fn set_cork(fd: impl AsFd, on: bool) -> bool {
    rustix::net::sockopt::set_tcp_cork(fd, on)
        .inspect_err(|error| log::debug!("mitosis: TCP_CORK {on}: {error}"))
        .is_ok()
}

/// What [`Conn::wait_readable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    /// The connection has bytes, or has closed.
    Conn,
    /// The watched fd at this index is ready.
    Watched(usize),
    /// The wait ran out, or a signal ended it.
    Nothing,
}

/// A duration as `poll` takes it.
pub(crate) fn timespec(duration: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: duration.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: duration.subsec_nanos().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A connected pair: the raw sending end and a `Conn` reading.
    fn pair() -> (TcpStream, Conn) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let raw = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (
            raw,
            Conn::new(accepted, Deadline::after(Duration::from_secs(5)), Side::New),
        )
    }

    #[test]
    fn a_timeout_too_long_for_an_instant_is_no_deadline() {
        let deadline = Deadline::after(Duration::MAX);
        assert_eq!(deadline.remaining(Step::Commit).unwrap(), None);
        // A long one that fits still counts down.
        let left = Deadline::after(Duration::from_secs(1 << 40))
            .remaining(Step::Commit)
            .unwrap()
            .unwrap();
        assert!(left > Duration::from_secs((1 << 40) - 60), "{left:?}");
        // A connection under no deadline reads and writes without one.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        let conn = Conn::new(near, deadline, Side::Old);
        conn.write_frame(Step::State, Kind::End, &[4, 5]).unwrap();
        let mut far_conn = Conn::new(far, deadline, Side::New);
        let (_, payload) = far_conn.read_frame(Step::State, &[Kind::End]).unwrap();
        assert_eq!(payload, vec![4, 5]);
        assert_eq!(conn.stream().write_timeout().unwrap(), None);
        assert_eq!(far_conn.stream().read_timeout().unwrap(), None);
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let (mut raw, mut conn) = pair();
        raw.write_all(&[Kind::Data as u8, 0xff, 0xff, 0xff, 0xff])
            .unwrap();
        let err = conn.read_frame(Step::State, &[Kind::Data]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::FrameTooLarge {
                    len: 4294967295,
                    max: 1048576,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_and_unexpected_kinds_are_refused() {
        let (mut raw, mut conn) = pair();
        raw.write_all(&[0x42, 0, 0, 0, 0]).unwrap();
        let err = conn.read_frame(Step::Offer, &[Kind::Offer]).unwrap_err();
        assert!(err.to_string().contains("unknown frame kind 0x42"), "{err}");
        let (mut raw, mut conn) = pair();
        raw.write_all(&[Kind::Ack as u8, 0, 0, 0, 0]).unwrap();
        let err = conn
            .read_frame(Step::Commit, &[Kind::Commit, Kind::Abort])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected COMMIT or ABORT, got ACK"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_frame_is_the_peer_gone() {
        let (mut raw, mut conn) = pair();
        raw.write_all(&[Kind::Offer as u8, 10, 0, 0, 0, 1, 2])
            .unwrap();
        drop(raw);
        let err = conn.read_frame(Step::Offer, &[Kind::Offer]).unwrap_err();
        assert!(
            matches!(err, Error::PeerGone { step: Step::Offer }),
            "{err:?}"
        );
    }
}
