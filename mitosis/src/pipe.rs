//! The pipe that carries large byte buffers in protocol version 2
//! (PROTOCOL.md, step 6): a buffer of [`PIPE_BYTES`] or more reaches the new
//! process's `Vec` at close to the cost of one copy into fresh memory.
//!
//! Over loopback TCP a buffer is copied twice, into the socket and out of
//! it, and the reader wakes for every segment. Here the old process
//! `vmsplice`s the pages of the state's own buffer into a pipe, which refers
//! to them and copies nothing, and the new process copies them once, out of
//! the pipe into its `Vec`. Measured with 256 MiB between two processes, on
//! two cores, with or without transparent huge pages, the pipe was as fast
//! as TCP or faster (1.6 to 2.1 times as fast as one process copying the
//! bytes into a fresh `Vec`, TCP 1.4 to 1.9), for a quarter to a half less
//! CPU. A memfd, written by one process and read by the other, was slower
//! than both (two copies); `process_vm_readv` was no faster, and works only
//! where the new process may ptrace the old one.
//!
//! Because the pipe refers to the old process's pages rather than copying
//! them, what it holds would change with them. The old process leaves its
//! state untouched until the handover's outcome, and before it lets go of
//! the state (it comes back, or is dropped) it empties the pipe itself: it
//! keeps the read end too, closes the write end, and reads whatever the new
//! process did not. An empty pipe without a writer never refers to this
//! process's memory again, however long the new process keeps its end.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvFlags, ReturnFlags, recvmsg, sockopt};
use rustix::pipe::{IoSliceRaw, PipeFlags, SpliceFlags};

use crate::conn::{Conn, Deadline, timespec};
use crate::error::{Error, Step};
use crate::fd_channel;
use crate::wire::{BytesPiped, Pipe};

/// Byte buffers of this size or more come through the pipe. Below it, the
/// pipe's set-up and the extra frame cost more than TCP's second copy
/// saves, and the tests' fault matrix, whose buffers are smaller, strikes
/// inside TCP frames as before.
pub(crate) const PIPE_BYTES: usize = 1 << 20;

/// What the old process asks for as the pipe's capacity: as much as
/// `fs.pipe-max-size` allows (1 MiB by default), up to this. A bigger pipe
/// means fewer wake-ups; it holds page references, not copies.
const MAX_CAPACITY: usize = 16 << 20;

/// The new process reads at most this much at a time. A read holds the
/// pipe's lock throughout and wakes the writer only at its end: reading the
/// whole pipe at once would leave it empty before the old process could
/// refill it, and the two would take turns instead of working at once.
const READ_CHUNK: usize = 256 << 10;

const STEP: Step = Step::State;

/// The old process's side: opens the pipe when the first large buffer
/// comes, passes its read end to the new process over the fd channel
/// (PIPE), then sends each large buffer as BYTES_PIPED and the bytes.
pub(crate) struct PipeSender<'a> {
    fd_channel: BorrowedFd<'a>,
    /// The new process's pidfd: readable once it has exited.
    child_exited: BorrowedFd<'a>,
    pipe: Setup,
    /// Bytes sent through the pipe so far.
    pub(crate) sent: u64,
}

enum Setup {
    NotYet,
    Open {
        read: OwnedFd,
        write: OwnedFd,
    },
    /// The pipe could not be made: large buffers go over TCP.
    Unavailable,
}

impl<'a> PipeSender<'a> {
    pub(crate) fn new(fd_channel: BorrowedFd<'a>, child_exited: BorrowedFd<'a>) -> Self {
        PipeSender {
            fd_channel,
            child_exited,
            pipe: Setup::NotYet,
            sent: 0,
        }
    }

    /// Sends `bytes` as BYTES_PIPED and then through the pipe; `Ok(false)`,
    /// having sent nothing, when there is no pipe and they must go over TCP.
    pub(crate) fn send(&mut self, conn: &Conn, bytes: &[u8]) -> Result<bool, Error> {
        if !self.open(conn)? {
            return Ok(false);
        }
        let size = bytes.len() as u64;
        conn.send(STEP, &BytesPiped { size })?;
        // The new process must see this frame to know that the pipe comes
        // next, and the transfer corks the connection.
        conn.push();
        self.splice_all(conn, bytes)?;
        self.sent += size;
        Ok(true)
    }

    /// Opens the pipe and sends its read end, the first time. A pipe that
    /// cannot be made (no fd left, say) leaves TCP; one that cannot be sent
    /// means the fd channel, and so step 7, is broken.
    fn open(&mut self, conn: &Conn) -> Result<bool, Error> {
        if let Setup::NotYet = self.pipe {
            self.pipe = match rustix::pipe::pipe_with(PipeFlags::CLOEXEC) {
                Ok((read, write)) => {
                    enlarge(&write);
                    // PIPE, with the pipe's read end.
                    fd_channel::send_message(
                        self.fd_channel,
                        STEP,
                        "PIPE",
                        &Pipe.encode(),
                        &[read.as_fd()],
                        &conn.deadline(),
                    )?;
                    Setup::Open { read, write }
                }
                Err(error) => {
                    log::debug!("mitosis: no pipe for large byte buffers ({error}); using TCP");
                    Setup::Unavailable
                }
            };
        }
        Ok(matches!(self.pipe, Setup::Open { .. }))
    }

    fn splice_all(&self, conn: &Conn, mut rest: &[u8]) -> Result<(), Error> {
        let Setup::Open { write, .. } = &self.pipe else {
            unreachable!("opened before")
        };
        let deadline = conn.deadline();
        while !rest.is_empty() {
            // A peer that keeps taking a trickle still meets the deadline.
            deadline.remaining(STEP)?;
            // Only with a `state@N` fault armed: stop at exactly byte N.
            let allowed = conn.allow(STEP, rest.len());
            if allowed == 0 {
                conn.passed(STEP, 0);
                continue;
            }
            let chunk = [IoSliceRaw::from_slice(&rest[..allowed])];
            // SAFETY: on a pipe's write end, vmsplice only reads `chunk`: the
            // pipe takes references to its pages. It copies nothing, so the
            // pipe sees any later change to those pages; this process leaves
            // the state as it is until the outcome, and empties the pipe
            // before it lets go of the state (`Drop`). The write never raises
            // SIGPIPE, although vmsplice cannot take MSG_NOSIGNAL: this
            // process keeps the pipe's read end open for as long as the
            // write end, so the pipe always has a reader.
            match unsafe { rustix::pipe::vmsplice(write, &chunk, SpliceFlags::NONBLOCK) } {
                Ok(n) => {
                    conn.passed(STEP, n);
                    rest = &rest[n..];
                }
                Err(Errno::AGAIN) => self.wait_for_room(write.as_fd(), conn, &deadline)?,
                Err(Errno::INTR) => {}
                Err(error) => return Err(Error::io(STEP)(error.into())),
            }
        }
        Ok(())
    }

    /// Waits until the pipe has room, under the deadline. Since this
    /// process holds a read end, a new process that has gone shows as its
    /// pidfd turning readable, and one that gave up (ABORT, or a closed
    /// connection) as its connection turning readable.
    fn wait_for_room(
        &self,
        write: BorrowedFd<'_>,
        conn: &Conn,
        deadline: &Deadline,
    ) -> Result<(), Error> {
        loop {
            let left = deadline.remaining(STEP)?;
            let mut fds = [
                PollFd::from_borrowed_fd(write, PollFlags::OUT),
                PollFd::from_borrowed_fd(conn.socket(), PollFlags::IN),
                PollFd::from_borrowed_fd(self.child_exited, PollFlags::IN),
            ];
            match poll(&mut fds, left.map(timespec).as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(error) => return Err(Error::io(STEP)(error.into())),
            }
            if !fds[1].revents().is_empty() || !fds[2].revents().is_empty() {
                return Err(Error::PeerGone { step: STEP });
            }
            if !fds[0].revents().is_empty() {
                return Ok(());
            }
        }
    }
}

impl Drop for PipeSender<'_> {
    /// Empties the pipe, so that it refers to none of the state's pages
    /// once this process may change or free them.
    fn drop(&mut self) {
        let Setup::Open { read, write } = std::mem::replace(&mut self.pipe, Setup::Unavailable)
        else {
            return;
        };
        // Without this write end nothing can enter the pipe again. (A
        // copy of it in a child this program forks, until that child
        // execs, is never written to.)
        drop(write);
        if rustix::io::ioctl_fionread(&read).is_ok_and(|left| left == 0) {
            return;
        }
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            let chunk = [IoSliceRaw::from_slice_mut(&mut scratch)];
            // SAFETY: on a pipe's read end, vmsplice copies bytes out of the
            // pipe into `chunk`, a buffer this function owns; it maps
            // nothing.
            match unsafe { rustix::pipe::vmsplice(&read, &chunk, SpliceFlags::NONBLOCK) } {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(_) | Err(Errno::INTR) => {}
                Err(error) => {
                    log::warn!("mitosis: could not empty the byte pipe: {error}");
                    break;
                }
            }
        }
    }
}

/// Makes the pipe as large as allowed; at its default size it still works,
/// with more wake-ups.
fn enlarge(write: &OwnedFd) {
    let allowed = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(PIPE_BYTES);
    if let Err(error) = rustix::pipe::fcntl_setpipe_size(write, allowed.min(MAX_CAPACITY)) {
        log::debug!("mitosis: the byte pipe keeps its default size: {error}");
    }
}

/// The new process's side: receives the pipe's read end with the first
/// BYTES_PIPED, and reads each such buffer out of it.
pub(crate) struct PipeReceiver<'a> {
    fd_channel: BorrowedFd<'a>,
    pipe: Option<OwnedFd>,
    /// Bytes received through the pipe so far.
    pub(crate) received: u64,
}

impl<'a> PipeReceiver<'a> {
    pub(crate) fn new(fd_channel: BorrowedFd<'a>) -> Self {
        PipeReceiver {
            fd_channel,
            pipe: None,
            received: 0,
        }
    }

    /// Appends the `size` bytes that BYTES_PIPED announced to `buffer`,
    /// which has room for them. No read blocks (`SPLICE_F_NONBLOCK` holds
    /// whatever flags the old process gave the pipe); an empty pipe is
    /// waited for under the deadline.
    pub(crate) fn receive(
        &mut self,
        conn: &Conn,
        buffer: &mut Vec<u8>,
        size: usize,
    ) -> Result<(), Error> {
        let deadline = conn.deadline();
        if self.pipe.is_none() {
            self.pipe = Some(recv_pipe(self.fd_channel, &deadline)?);
        }
        let pipe = self.pipe.as_ref().expect("received above");
        read_exact(pipe.as_fd(), conn, buffer, size, &deadline)?;
        self.received += size as u64;
        Ok(())
    }

    /// At END: the pipe must hold no byte more than BYTES_PIPED announced.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        let Some(pipe) = &self.pipe else {
            return Ok(());
        };
        match rustix::io::ioctl_fionread(pipe) {
            Ok(0) => Ok(()),
            Ok(left) => Err(Error::protocol(
                STEP,
                format!("the pipe holds {left} bytes more than the BYTES_PIPED frames announced"),
            )),
            Err(error) => Err(Error::io(STEP)(error.into())),
        }
    }
}

/// Appends exactly `size` bytes from the pipe to `buffer`, which has room
/// for them.
fn read_exact(
    pipe: BorrowedFd<'_>,
    conn: &Conn,
    buffer: &mut Vec<u8>,
    size: usize,
    deadline: &Deadline,
) -> Result<(), Error> {
    let end = buffer.len() + size;
    while buffer.len() < end {
        // An old process that keeps sending a trickle still meets the
        // deadline.
        deadline.remaining(STEP)?;
        let allowed = conn.allow(STEP, (end - buffer.len()).min(READ_CHUNK));
        if allowed == 0 {
            conn.passed(STEP, 0);
            continue;
        }
        let spare = &mut buffer.spare_capacity_mut()[..allowed];
        let chunk = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: on a pipe's read end, vmsplice copies at most
        // `iov_len` bytes out of the pipe into the iovec, here spare
        // capacity of `buffer`, which this function borrows mutably; the
        // bytes it reports are initialized from then on. (rustix's
        // `IoSliceRaw` only takes initialized slices, so libc's call.)
        let got = unsafe { libc::vmsplice(pipe.as_raw_fd(), &chunk, 1, libc::SPLICE_F_NONBLOCK) };
        match usize::try_from(got) {
            // Empty, and no writer left: the old process is gone.
            Ok(0) => return Err(Error::PeerGone { step: STEP }),
            Ok(n) => {
                let n = n.min(allowed);
                // SAFETY: vmsplice initialized the `n` bytes past the
                // length, at most `allowed`, within the capacity.
                unsafe { buffer.set_len(buffer.len() + n) };
                conn.passed(STEP, n);
            }
            Err(_) => {
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EAGAIN) => wait_readable(pipe, deadline)?,
                    Some(libc::EINTR) => {}
                    _ => return Err(Error::io(STEP)(error)),
                }
            }
        }
    }
    Ok(())
}

fn wait_readable(pipe: BorrowedFd<'_>, deadline: &Deadline) -> Result<(), Error> {
    loop {
        let left = deadline.remaining(STEP)?;
        let mut fds = [PollFd::from_borrowed_fd(pipe, PollFlags::IN)];
        match poll(&mut fds, left.map(timespec).as_ref()) {
            // Readable, or closed (POLLHUP), which the read then reports.
            Ok(_) if !fds[0].revents().is_empty() => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(error) => return Err(Error::io(STEP)(error.into())),
        }
    }
}

/// Receives PIPE and the pipe's read end, close-on-exec from the start. A
/// message of another size, or with anything but one fd, is refused, and
/// whatever fds came with it are closed.
fn recv_pipe(channel: BorrowedFd<'_>, deadline: &Deadline) -> Result<OwnedFd, Error> {
    // Room for more than one fd, so that extra ones arrive (and are closed)
    // rather than show up only as MSG_CTRUNC.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut message = [0u8; Pipe::LEN + 1];
    fd_channel::set_timeout(channel, sockopt::Timeout::Recv, deadline, STEP)?;
    let received = loop {
        match recvmsg(
            channel,
            &mut [std::io::IoSliceMut::new(&mut message)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(received) => break received,
            Err(Errno::INTR) => {}
            Err(error) => return Err(deadline.io_error(STEP)(error.into())),
        }
    };
    let fds = fd_channel::received_fds(&mut control);
    if received.bytes == 0 && fds.is_empty() {
        return Err(Error::PeerGone { step: STEP });
    }
    if received
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(Error::protocol(
            STEP,
            "the old process's PIPE on the fd channel was truncated (MSG_TRUNC or MSG_CTRUNC); \
             with MSG_CTRUNC, this process may be out of fds (RLIMIT_NOFILE)",
        ));
    }
    Pipe::decode(&message[..received.bytes.min(message.len())])?;
    match <[OwnedFd; 1]>::try_from(fds) {
        Ok([pipe]) => Ok(pipe),
        Err(fds) => Err(Error::protocol(
            STEP,
            format!(
                "the old process's PIPE carried {} fds, not the pipe's alone",
                fds.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use std::io::IoSlice;

    use rustix::net::{
        AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
        SocketType, sendmsg, socketpair,
    };

    use crate::fault::Side;
    use crate::wire::{Kind, Message};

    /// The two ends of a handover's connections: the old process's TCP
    /// connection and fd channel, and the new process's.
    struct Ends {
        old: Conn,
        old_channel: OwnedFd,
        new: Conn,
        new_channel: OwnedFd,
        /// Stands for the new process's pidfd: readable once "exited".
        exited: (OwnedFd, OwnedFd),
    }

    fn ends(timeout: Duration) -> Ends {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        let (old_channel, new_channel) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let deadline = Deadline::after(timeout);
        Ends {
            old: Conn::new(near, deadline, Side::Old),
            old_channel,
            new: Conn::new(far, deadline, Side::New),
            new_channel,
            exited: rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap(),
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8 ^ seed)
            .collect()
    }

    /// Reads the BYTES_PIPED frame and the buffer it announces.
    fn receive_one(new: &mut Conn, pipe: &mut PipeReceiver<'_>) -> Result<Vec<u8>, Error> {
        let (_, payload) = new.read_frame(STEP, &[Kind::BytesPiped])?;
        let size = BytesPiped::decode(STEP, &payload)?.size as usize;
        let mut buffer = Vec::with_capacity(size);
        pipe.receive(new, &mut buffer, size)?;
        Ok(buffer)
    }

    #[test]
    fn buffers_cross_byte_exact_through_one_pipe() {
        let Ends {
            old,
            old_channel,
            mut new,
            new_channel,
            exited,
        } = ends(Duration::from_secs(10));
        let buffers = [
            pattern(3 << 20, 1),
            pattern(PIPE_BYTES, 2),
            pattern(5 << 20 | 7, 3),
        ];
        let total = buffers.iter().map(|b| b.len() as u64).sum::<u64>();
        let (done, finished) = std::sync::mpsc::channel();
        let buffers = &buffers;
        let (old_channel, exited) = (&old_channel, &exited);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut pipe = PipeSender::new(old_channel.as_fd(), exited.0.as_fd());
                for buffer in buffers {
                    assert!(pipe.send(&old, buffer).unwrap());
                }
                assert_eq!(pipe.sent, total);
                // Kept open until the receiver is done, as the old process
                // keeps its end until the new one has read everything.
                finished.recv().unwrap();
            });
            let mut pipe = PipeReceiver::new(new_channel.as_fd());
            for expected in buffers {
                let got = receive_one(&mut new, &mut pipe).unwrap();
                assert!(got == *expected, "{} bytes differ", expected.len());
            }
            pipe.finish().unwrap();
            assert_eq!(pipe.received, total);
            done.send(()).unwrap();
        });
    }

    #[test]
    fn a_receiver_that_gives_up_stops_the_sender_without_sigpipe() {
        let Ends {
            old,
            old_channel,
            mut new,
            new_channel,
            exited,
        } = ends(Duration::from_secs(10));
        let receiver = std::thread::spawn(move || {
            let mut pipe = PipeReceiver::new(new_channel.as_fd());
            let (_, payload) = new.read_frame(STEP, &[Kind::BytesPiped]).unwrap();
            let size = BytesPiped::decode(STEP, &payload).unwrap().size as usize;
            let mut buffer = Vec::with_capacity(size);
            // Read a little, then go: the connection and the pipe close.
            pipe.receive(&new, &mut buffer, 4096).unwrap();
        });
        let started = Instant::now();
        let mut pipe = PipeSender::new(old_channel.as_fd(), exited.0.as_fd());
        let err = pipe.send(&old, &pattern(64 << 20, 4)).unwrap_err();
        receiver.join().unwrap();
        assert!(matches!(err, Error::PeerGone { step: STEP }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "noticed at once"
        );
    }

    #[test]
    fn a_receiver_that_exits_is_noticed_through_its_pidfd() {
        let Ends {
            old,
            old_channel,
            new,
            new_channel,
            exited,
        } = ends(Duration::from_secs(10));
        // The new process "exits" with its connection still open (the
        // kernel closes it a moment later): the pidfd says so first.
        let (exited_read, exited_write) = exited;
        rustix::io::write(&exited_write, b"x").unwrap();
        let mut pipe = PipeSender::new(old_channel.as_fd(), exited_read.as_fd());
        let err = pipe.send(&old, &pattern(8 << 20, 5)).unwrap_err();
        assert!(matches!(err, Error::PeerGone { step: STEP }), "{err:?}");
        drop((new, new_channel));
    }

    #[test]
    fn a_sender_that_goes_away_midway_is_the_peer_gone() {
        let Ends {
            old,
            old_channel,
            mut new,
            new_channel,
            exited,
        } = ends(Duration::from_secs(10));
        let (sent, reached) = std::sync::mpsc::channel();
        let sender = std::thread::spawn(move || {
            let mut pipe = PipeSender::new(old_channel.as_fd(), exited.0.as_fd());
            let big = pattern(16 << 20, 6);
            // Announce 16 MiB, send 64 KiB (what any pipe holds): the
            // pipe's write end closes after.
            old.send(
                STEP,
                &BytesPiped {
                    size: big.len() as u64,
                },
            )
            .unwrap();
            assert!(pipe.open(&old).unwrap());
            pipe.splice_all(&old, &big[..64 << 10]).unwrap();
            reached.recv().unwrap();
        });
        let mut pipe = PipeReceiver::new(new_channel.as_fd());
        let (_, payload) = new.read_frame(STEP, &[Kind::BytesPiped]).unwrap();
        let size = BytesPiped::decode(STEP, &payload).unwrap().size as usize;
        let mut buffer = Vec::with_capacity(size);
        pipe.receive(&new, &mut buffer, 16 << 10).unwrap();
        sent.send(()).unwrap();
        sender.join().unwrap();
        let err = pipe
            .receive(&new, &mut buffer, size - (16 << 10))
            .unwrap_err();
        assert!(matches!(err, Error::PeerGone { step: STEP }), "{err:?}");
    }

    #[test]
    fn a_stalled_peer_meets_the_deadline_on_either_side() {
        let big = pattern(64 << 20, 7);
        // A receiver that never reads: the sender waits for room until its
        // deadline.
        let Ends {
            old,
            old_channel,
            new,
            new_channel,
            exited,
        } = ends(Duration::from_millis(300));
        let mut pipe = PipeSender::new(old_channel.as_fd(), exited.0.as_fd());
        let started = Instant::now();
        let err = pipe.send(&old, &big).unwrap_err();
        assert!(matches!(err, Error::Timeout { step: STEP, .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop((pipe, new, new_channel));

        // A sender that announces bytes, sends some and stalls: the
        // receiver takes what the pipe held, then waits for the rest until
        // its deadline.
        let Ends {
            old,
            old_channel,
            mut new,
            new_channel,
            exited,
        } = ends(Duration::from_millis(300));
        let mut pipe = PipeSender::new(old_channel.as_fd(), exited.0.as_fd());
        old.send(STEP, &BytesPiped { size: 1 << 20 }).unwrap();
        assert!(pipe.open(&old).unwrap());
        pipe.splice_all(&old, &pattern(16 << 10, 7)).unwrap();
        let mut receiver = PipeReceiver::new(new_channel.as_fd());
        let (_, payload) = new.read_frame(STEP, &[Kind::BytesPiped]).unwrap();
        let size = BytesPiped::decode(STEP, &payload).unwrap().size as usize;
        let mut buffer = Vec::with_capacity(size);
        let started = Instant::now();
        let err = receiver.receive(&new, &mut buffer, size).unwrap_err();
        assert!(matches!(err, Error::Timeout { step: STEP, .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(buffer.len(), 16 << 10);
    }

    #[test]
    fn the_sender_empties_the_pipe_before_it_lets_go() {
        let big = pattern(8 << 20, 8);
        let Ends {
            old,
            old_channel,
            new,
            new_channel,
            exited,
        } = ends(Duration::from_millis(300));
        let mut pipe = PipeSender::new(old_channel.as_fd(), exited.0.as_fd());
        // Nobody reads: the pipe fills, and the send times out.
        let err = pipe.send(&old, &big).unwrap_err();
        assert!(matches!(err, Error::Timeout { step: STEP, .. }), "{err:?}");
        // The new process's end, as it would hold it.
        let read = recv_pipe(
            new_channel.as_fd(),
            &Deadline::after(Duration::from_secs(1)),
        )
        .unwrap();
        assert!(rustix::io::ioctl_fionread(&read).unwrap() > 0, "full");
        drop(pipe);
        assert_eq!(
            rustix::io::ioctl_fionread(&read).unwrap(),
            0,
            "no reference to the state's pages is left in the pipe"
        );
        let mut byte = [0u8; 1];
        assert_eq!(
            rustix::io::read(&read, &mut byte).unwrap(),
            0,
            "and nothing can enter it again"
        );
        drop((new, old));
    }

    #[test]
    fn bytes_past_the_announced_ones_are_refused_at_end() {
        let Ends {
            old,
            old_channel,
            mut new,
            new_channel,
            exited,
        } = ends(Duration::from_secs(10));
        let mut sender = PipeSender::new(old_channel.as_fd(), exited.0.as_fd());
        let big = pattern(2 << 20, 9);
        old.send(
            STEP,
            &BytesPiped {
                size: (1 << 20) as u64,
            },
        )
        .unwrap();
        assert!(sender.open(&old).unwrap());
        let mut receiver = PipeReceiver::new(new_channel.as_fd());
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| receive_one(&mut new, &mut receiver).unwrap());
            // One byte more than announced.
            sender.splice_all(&old, &big[..(1 << 20) + 1]).unwrap();
            let got = reader.join().unwrap();
            assert!(got[..] == big[..1 << 20]);
        });
        let err = receiver.finish().unwrap_err();
        assert!(
            err.to_string()
                .contains("the pipe holds 1 bytes more than the BYTES_PIPED frames announced"),
            "{err}"
        );
    }

    #[test]
    fn a_pipe_message_with_other_fds_or_bytes_is_refused() {
        let deadline = Deadline::after(Duration::from_secs(5));
        let send = |bytes: &[u8], fds: &[BorrowedFd<'_>], channel: BorrowedFd<'_>| {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() {
                assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
            }
            sendmsg(
                channel,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .unwrap();
        };
        let (a, b) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        for (bytes, fds, expected) in [
            (
                &Pipe.encode()[..],
                &[a.as_fd(), b.as_fd()][..],
                "carried 2 fds",
            ),
            (&Pipe.encode()[..], &[][..], "carried 0 fds"),
            (&[0u8; 6][..], &[a.as_fd()][..], "is 6 bytes"),
            (&[0u8; 8][..], &[a.as_fd()][..], "is 8 bytes"),
        ] {
            let (old, new) = socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            send(bytes, fds, old.as_fd());
            let err = recv_pipe(new.as_fd(), &deadline).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        // A channel that closes is the peer gone; one that stays silent,
        // the deadline.
        let (old, new) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let err = recv_pipe(new.as_fd(), &Deadline::after(Duration::from_millis(100))).unwrap_err();
        assert!(matches!(err, Error::Timeout { step: STEP, .. }), "{err:?}");
        drop(old);
        let err = recv_pipe(new.as_fd(), &deadline).unwrap_err();
        assert!(matches!(err, Error::PeerGone { step: STEP }), "{err:?}");
    }
}
