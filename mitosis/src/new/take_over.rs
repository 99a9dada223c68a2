//! The new process's handover, step by step in PROTOCOL.md's order:
//! [`arrive`] walks steps 2 to 4, [`Session::receive`] steps 5 to 8, and
//! [`Session::commit`] the end of step 8 and step 9.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    AddressFamily, SocketFlags, SocketType, bind, connect, getsockname, socket_with, sockopt,
};
use std::path::Path;

use crate::conn::{Conn, Deadline, timespec};
use crate::env::{Limits, Terms};
use crate::error::{Error, Step};
use crate::fault::{self, Point, Side};
use crate::fd_channel;
use crate::handover::Shapes;
use crate::handover::{Decoder, Handover};
use crate::lineage;
use crate::pipe::PipeReceiver;
use crate::report;
use crate::schema::{self, Schema};
use crate::wire::handshake;
use crate::wire::{
    self, Abort, Ack, Arrival, BytesPiped, BytesStart, Commit, End, Kind, Lineage, Message, Offer,
    Ready, Reason, Reject, Taken, Welcome,
};

/// The new process's side of one handover, from the agreed schema on.
pub(super) struct Session {
    conn: Conn,
    fd_channel: OwnedFd,
    terms: Terms,
    /// The protocol version WELCOME chose.
    version: u16,
    /// The schema the old process will send, one of `accepted`.
    sent: Schema,
    shapes: Option<Shapes>,
    /// When this process arrived, sent READY, and saw the state's first
    /// byte: the upgrade's timings, as status reports give them.
    arrived: Instant,
    ready: Option<Instant>,
    paused: Option<Instant>,
}

/// Steps 2 to 4: connect, prove the secret both ways, and agree on the
/// schema. The old process goes on serving meanwhile, and after this
/// until [`Session::receive`].
pub(super) fn arrive<S: Handover>(port: u16, fd_socket: &Path) -> Result<Session, Error> {
    let arrived = Instant::now();
    fault::at(Side::New, Point::Spawned);
    // This process's own state shape, and every schema it accepts: traced
    // once, before anything is connected, and kept for decoding.
    let mut shapes = Shapes::new();
    let own = S::shape(&mut shapes)?;
    let accepted = S::accepted(&mut shapes)?;

    // Step 2: connect to the fd channel, where the old process checks who
    // this is and sends the secret and the terms (KEY); then connect back
    // over loopback. The fd channel stays open for step 7.
    let fd_channel: OwnedFd =
        fd_channel::connect_to(fd_socket).map_err(Error::io(Step::Connect))?;
    let (key, previous_build) = fd_channel::recv_key(fd_channel.as_fd())?;
    let terms = Terms::from_key(key);
    // Each answer of the old process's comes at once, from its handover
    // thread; the transfer timeout bounds the wait for them.
    let deadline = Deadline::after(terms.timeout);
    let stream = connect_back(port, fd_channel.as_fd(), &deadline)?;
    stream.set_nodelay(true).map_err(Error::io(Step::Connect))?;
    let mut conn = Conn::new(stream, deadline, Side::New);

    // Step 3: prove the secret. Step 4's OFFER follows at once, without
    // waiting for WELCOME: OFFER is the same in every version this build
    // speaks, so the round trip is saved (PROTOCOL.md, step 4).
    let burst = conn.cork();
    conn.write_all(Step::Hello, &handshake::hello(&terms.secret))?;
    fault::at(Side::New, Point::Hello);
    let offer = Offer {
        accepted: accepted.clone(),
        description: Some(own.clone()),
    };
    conn.send(Step::Offer, &offer)?;
    drop(burst);
    fault::at(Side::New, Point::Offer);
    // Then check that the old process proves the secret too, and learn the
    // protocol version.
    let mut welcome = [0u8; Welcome::LEN];
    conn.read_exact(Step::Hello, &mut welcome)?;
    let version = handshake::check_welcome(&terms.secret, &welcome)?;

    // Step 4: the old process sends its state only if it matches one of the
    // offered schemas.
    let (kind, payload) = conn.read_frame(Step::Offer, &[wire::State::KIND, Reject::KIND])?;
    if kind == Reject::KIND {
        let reject = Reject::decode(Step::Offer, &payload)?;
        return Err(Error::SchemaMismatch {
            sent: reject.schema,
            accepted,
            differences: reject
                .description
                .map(|old| schema::differences(&old, &own))
                .unwrap_or_default(),
        });
    }
    let sent = wire::State::decode(Step::Offer, &payload)?.schema;
    if !accepted
        .iter()
        .any(|schema| schema.fingerprint == sent.fingerprint)
    {
        return Err(Error::protocol(
            Step::Offer,
            format!("the old process sent schema {sent}, which this process did not offer"),
        ));
    }
    // Version 3: where this process comes from. Without it (an older old
    // process), it upgrades later from the path it was started as.
    if version >= wire::LINEAGE_VERSION {
        let Lineage {
            generation,
            binary,
            previous_binary,
        } = conn.recv(Step::Offer)?;
        lineage::arrived(generation, binary, previous_build, previous_binary);
    }
    log::debug!("mitosis: step 4: schema {sent} agreed, protocol version {version}");
    Ok(Session {
        conn,
        fd_channel,
        terms,
        version,
        sent,
        shapes: Some(shapes),
        arrived,
        ready: None,
        paused: None,
    })
}

impl Session {
    /// Steps 5 to 8 up to the commit: READY, then the state's bytes, its
    /// fds, and decoding. The old process has stopped serving from the
    /// moment it hands over until this process commits.
    pub(super) fn receive<S: Handover>(&mut self) -> Result<S, Error> {
        let result = self.receive_state::<S>();
        if let Err(error) = &result
            && !matches!(error, Error::PeerGone { .. })
        {
            // Best effort: tell the old process why, so that its error
            // says more than "the new process went away".
            self.abort(error.to_string(), Reason::of(error));
        }
        result
    }

    fn receive_state<S: Handover>(&mut self) -> Result<S, Error> {
        let conn = &mut self.conn;
        // Step 5: ask for the state. A version 1 old process sends it
        // without being asked.
        if self.version >= wire::READY_VERSION {
            conn.send(Step::Ready, &Ready)?;
        }
        self.ready = Some(Instant::now());
        fault::at(Side::New, Point::Ready);
        // The old process hands over between two passes of its program's
        // loop; wait for that for as long as it lives. The transfer timeout
        // runs from the first byte.
        conn.wait_readable(Step::State, &[], None)?;
        self.paused = Some(Instant::now());
        conn.set_deadline(Deadline::after(self.terms.timeout));

        // Step 6: the state's bytes, up to the END frame; large byte buffers
        // through the pipe, where the version has it.
        let mut pipe = (self.version >= wire::PIPE_VERSION)
            .then(|| PipeReceiver::new(self.fd_channel.as_fd()));
        let state = receive_state(conn, self.terms.limits, pipe.as_mut())?;
        drop(pipe);

        // Step 7: the fds.
        let fds = fd_channel::recv_fds(self.fd_channel.as_fd(), state.fd_count, &conn.deadline())?;

        // Step 8: decode, migrating from an older schema if that is what
        // came; every byte, every out-of-line buffer and every fd must be
        // used.
        let shapes = self.shapes.take().unwrap_or_default();
        let state = Decoder::new(&state.stream, state.out_of_line, fds)
            .with_shapes(shapes)
            .decode_from::<S>(self.sent.fingerprint)?;
        fault::at(Side::New, Point::Commit);
        Ok(state)
    }

    /// Tells the old process, with ABORT, that this process gives up and
    /// why; it then keeps its state and serves on. Best effort: if the
    /// connection is gone, so is the old process's interest.
    pub(super) fn abort(&self, message: String, reason: Reason) {
        let _ = self.conn.send(Step::Commit, &Abort { reason, message });
    }

    /// Steps 8 (end) and 9: commit, wait for the old process's ACK, and
    /// answer TAKEN. From TAKEN on this process owns the connections.
    pub(super) fn commit(&mut self) -> Result<(), Error> {
        let conn = &mut self.conn;
        conn.send(Step::Commit, &Commit)?;
        fault::at(Side::New, Point::Ack);

        // Step 9: wait for the old process's decision, for as long as it
        // lives: after COMMIT, only the old process may call the handover
        // off, and it kills this process before it does.
        conn.drop_deadline(Step::Ack)?;
        match conn.recv::<Ack>(Step::Ack) {
            Ok(_) => {}
            // The old process never closes the connection after a COMMIT
            // without acknowledging it, unless it is gone; then nobody else
            // owns the connections, so this process takes them.
            Err(Error::PeerGone { .. }) => log::warn!(
                "mitosis: the old process went away after the commit, before acknowledging \
                 it; taking over"
            ),
            Err(error) => return Err(error),
        }
        fault::at(Side::New, Point::Taken);
        // Ownership passes with this frame. If the old process is gone by
        // now, it cannot read it, and the connections are this process's
        // anyway.
        if let Err(error) = conn.send(Step::Ack, &Taken) {
            log::debug!("mitosis: could not send TAKEN ({error}); the old process is gone");
        }
        fault::at(Side::New, Point::Done);
        log::debug!("mitosis: step 9: took over");
        let now = Instant::now();
        let old_pid =
            fd_channel::peer_credentials(self.fd_channel.as_fd()).map_or(0, |peer| peer.pid as u32);
        report::took_over(
            old_pid,
            self.ready.unwrap_or(now) - self.arrived,
            now - self.paused.unwrap_or(now),
        );
        Ok(())
    }

    /// After TAKEN, under a service manager: waits until the old process
    /// has told it `MAINPID=` and let go, which it shows by closing the
    /// connection, so that this process's `READY=1` comes from the main
    /// process. An old process that never closes (it hangs) is waited for
    /// no longer than the transfer timeout.
    pub(super) fn wait_until_let_go(&self) {
        let started = std::time::Instant::now();
        while let Some(left) = self.terms.timeout.checked_sub(started.elapsed()) {
            match self.conn.wait_readable(Step::Ack, &[], Some(left)) {
                Ok(crate::conn::Readable::Conn) | Err(_) => return,
                Ok(_) => {}
            }
        }
        log::warn!(
            "mitosis: the old process did not let go within {:?} of TAKEN; telling the service \
             manager READY=1 anyway",
            self.terms.timeout
        );
    }
}

/// Step 2's TCP connection: its local port is chosen first and told to the
/// old process on the fd channel (ARRIVAL), where the kernel vouches for
/// who sends it, so that the old process can close every other connection
/// to the port as it arrives. A flood of strangers can then neither crowd
/// this one out nor delay it.
fn connect_back(
    port: u16,
    fd_channel: BorrowedFd<'_>,
    deadline: &Deadline,
) -> Result<TcpStream, Error> {
    const STEP: Step = Step::Connect;
    let io = |e: rustix::io::Errno| Error::io(STEP)(e.into());
    let socket = socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(io)?;
    bind(&socket, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    let local = getsockname(&socket)
        .ok()
        .and_then(|address| SocketAddrV4::try_from(address).ok())
        .ok_or_else(|| Error::protocol(STEP, "the TCP socket has no IPv4 address"))?;
    fd_channel::send_arrival(fd_channel, Arrival { port: local.port() }, deadline)?;
    match connect(&socket, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
        Ok(()) => {}
        Err(rustix::io::Errno::INPROGRESS) => {
            // Connected (or refused) once writable.
            loop {
                let left = deadline.remaining(STEP)?;
                let mut fds = [PollFd::new(&socket, PollFlags::OUT)];
                match poll(&mut fds, left.map(timespec).as_ref()) {
                    Ok(_) if !fds[0].revents().is_empty() => break,
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(io(e)),
                }
            }
            sockopt::socket_error(&socket)
                .map_err(io)?
                .map_err(|e| deadline.io_error(STEP)(e.into()))?;
        }
        Err(e) => return Err(deadline.io_error(STEP)(e.into())),
    }
    let stream = TcpStream::from(socket);
    stream.set_nonblocking(false).map_err(Error::io(STEP))?;
    Ok(stream)
}

/// What step 6 brings.
struct ReceivedState {
    stream: Vec<u8>,
    out_of_line: Vec<Vec<u8>>,
    fd_count: u32,
}

/// Step 6: DATA frames for the stream, BYTES_START and BYTES frames for each
/// out-of-line buffer (read straight into its own `Vec`), or BYTES_PIPED and
/// the buffer's bytes through the pipe when there is one, then END, which
/// must agree with what arrived. The whole state is bounded by the
/// handover's limits, checked before anything is read or allocated. A
/// REJECT instead means the old process found its state over a limit.
fn receive_state(
    conn: &mut Conn,
    limits: Limits,
    mut pipe: Option<&mut PipeReceiver<'_>>,
) -> Result<ReceivedState, Error> {
    const STEP: Step = Step::State;
    let mut received = ReceivedState {
        stream: Vec::new(),
        out_of_line: Vec::new(),
        fd_count: 0,
    };
    let mut total: u64 = 0;
    let mut admit = |len: u64| {
        total += len;
        if total > limits.state_bytes {
            return Err(Error::LimitExceeded {
                step: STEP,
                what: "state bytes",
                found: total,
                max: limits.state_bytes,
            });
        }
        Ok(())
    };
    let expected: &[Kind] = if pipe.is_some() {
        &[
            Kind::Data,
            BytesStart::KIND,
            BytesPiped::KIND,
            End::KIND,
            Reject::KIND,
        ]
    } else {
        &[Kind::Data, BytesStart::KIND, End::KIND, Reject::KIND]
    };
    loop {
        let (kind, len) = conn.read_header(STEP, expected)?;
        match kind {
            Kind::Reject => {
                let reject = Reject::decode(STEP, &conn.read_payload(STEP, len)?)?;
                return Err(Error::Aborted {
                    step: STEP,
                    reason: reject.message,
                });
            }
            Kind::Data => {
                admit(len.into())?;
                conn.read_append(STEP, &mut received.stream, len)?;
            }
            Kind::BytesStart => {
                let BytesStart { size } = BytesStart::decode(STEP, &conn.read_payload(STEP, len)?)?;
                admit(size)?;
                let mut buffer = receive_buffer(size as usize);
                filled_while_faulting(&mut buffer, size as usize, |buffer| {
                    while (buffer.len() as u64) < size {
                        let (_, len) = conn.read_header(STEP, &[Kind::Bytes])?;
                        if buffer.len() as u64 + u64::from(len) > size {
                            return Err(Error::protocol(
                                STEP,
                                format!("BYTES frames overrun the announced {size} bytes"),
                            ));
                        }
                        conn.read_append(STEP, buffer, len)?;
                    }
                    Ok(())
                })?;
                received.out_of_line.push(buffer);
            }
            Kind::BytesPiped => {
                let BytesPiped { size } = BytesPiped::decode(STEP, &conn.read_payload(STEP, len)?)?;
                admit(size)?;
                let pipe = pipe.as_deref_mut().expect("expected only with a pipe");
                let mut buffer = receive_buffer(size as usize);
                filled_while_faulting(&mut buffer, size as usize, |buffer| {
                    pipe.receive(conn, buffer, size as usize)
                })?;
                received.out_of_line.push(buffer);
            }
            _ => {
                let End {
                    stream_bytes,
                    out_of_line_bytes,
                    fds,
                } = End::decode(STEP, &conn.read_payload(STEP, len)?)?;
                received.fd_count = fds;
                if let Some(pipe) = &pipe {
                    pipe.finish()?;
                }
                if u64::from(received.fd_count) > limits.fds {
                    return Err(Error::LimitExceeded {
                        step: STEP,
                        what: "fds",
                        found: received.fd_count.into(),
                        max: limits.fds,
                    });
                }
                let arrived: u64 = received.out_of_line.iter().map(|b| b.len() as u64).sum();
                if stream_bytes != received.stream.len() as u64 || out_of_line_bytes != arrived {
                    return Err(Error::protocol(
                        STEP,
                        format!(
                            "END announced {stream_bytes} bytes of state and {out_of_line_bytes} \
                             out of line; {} and {arrived} arrived",
                            received.stream.len()
                        ),
                    ));
                }
                log::debug!(
                    "mitosis: step 6: received {stream_bytes} bytes of state and \
                     {out_of_line_bytes} out of line ({} through the pipe), {fds} fds to follow",
                    pipe.as_ref().map_or(0, |pipe| pipe.received)
                );
                return Ok(received);
            }
        }
    }
}

/// From this size up, an out-of-line buffer asks for transparent huge pages,
/// and its pages are faulted in ahead of the copy.
const BIG_BUFFER: usize = 4 << 20;

/// How much of a big buffer the faulting thread does at a time, between
/// looks at whether the copy has ended.
const PREFAULT_STEP: usize = 4 << 20;

/// An empty `Vec` with room for `size` bytes, about to be filled from the
/// socket or the pipe. A fresh process has none of that memory yet, and
/// faulting it in 4 KiB at a time, inside the reads, cost as much as the
/// copy itself. For a big buffer, ask for transparent huge pages: 512 times
/// fewer faults.
fn receive_buffer(size: usize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(size);
    if size >= BIG_BUFFER {
        let spare = buffer.spare_capacity_mut();
        let page = rustix::param::page_size();
        let start = spare.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(page);
        let len = (spare.len() - (aligned - start)) / page * page;
        // SAFETY: the range lies inside this Vec's allocation, which this
        // function owns and which holds nothing yet. MADV_HUGEPAGE only
        // changes how the kernel backs the range, never what it holds; if
        // the kernel refuses (no THP support), the memory stays as it was.
        let advised = unsafe {
            rustix::mm::madvise(aligned as *mut _, len, rustix::mm::Advice::LinuxHugepage)
        };
        if let Err(error) = advised {
            log::debug!("mitosis: no huge pages for a {size}-byte buffer: {error}");
        }
    }
    buffer
}

/// Lets `fill` append `size` bytes to `buffer` (from [`receive_buffer`]),
/// while a thread faults the buffer's pages in ahead of the copy. The
/// kernel must find and zero every page of fresh memory before a copy can
/// write to it, which costs as much as the copy; through the pipe, the old
/// process only hands over page references and leaves the other core
/// mostly idle, so that part runs there. Measured with 256 MiB, it nearly
/// halves the transfer. Without a thread, or on a kernel before 5.14 (no
/// `MADV_POPULATE_WRITE`), the copy faults the pages in itself, as before.
fn filled_while_faulting(
    buffer: &mut Vec<u8>,
    size: usize,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<(), Error> {
    if size < BIG_BUFFER {
        return fill(buffer);
    }
    let spare = &mut buffer.spare_capacity_mut()[..size];
    let (start, len) = (spare.as_mut_ptr() as usize, spare.len());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        prefault(scope, start, len, &done);
        let filled = fill(buffer);
        done.store(true, Ordering::Relaxed);
        filled
    })
}

/// Faults in the `len` bytes of fresh memory at `start`, which a copy is
/// about to fill, on a thread that runs beside it until `done`.
fn prefault<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    start: usize,
    len: usize,
    done: &'scope AtomicBool,
) {
    let page = rustix::param::page_size();
    let (mut at, end) = (start.next_multiple_of(page), (start + len) / page * page);
    let spawned = std::thread::Builder::new()
        .name("mitosis-prefault".into())
        .spawn_scoped(scope, move || {
            while at < end && !done.load(Ordering::Relaxed) {
                let step = (end - at).min(PREFAULT_STEP);
                // SAFETY: the range lies in the spare capacity of the buffer
                // being received, which outlives this scoped thread.
                // MADV_POPULATE_WRITE maps zeroed pages where there are none
                // yet, as the copy's first write to each would, and leaves
                // pages that are there, and what the copy wrote into them,
                // as they are; it reads and writes no byte itself.
                let advised = unsafe {
                    rustix::mm::madvise(at as *mut _, step, rustix::mm::Advice::LinuxPopulateWrite)
                };
                if let Err(error) = advised {
                    log::debug!("mitosis: no faulting ahead of the copy: {error}");
                    return;
                }
                at += step;
            }
        });
    if let Err(error) = spawned {
        log::debug!("mitosis: no thread to fault ahead of the copy: {error}");
    }
}
