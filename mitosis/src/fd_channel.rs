//! The fd channel: a Unix SEQPACKET socket that carries the handover's KEY
//! (PROTOCOL.md, step 2) and then the state's file descriptors (step 7).
//!
//! The old process listens on it inside a fresh 0700 directory, so no other
//! user can even reach it, and accepts only the connection whose
//! `SO_PEERCRED` pid is the child it spawned; only then does it send KEY,
//! the secret that the new process proves on TCP. Each later message carries one batch
//! of at most [`MAX_FDS_PER_MESSAGE`] fds in one `SCM_RIGHTS` control message,
//! with a six-byte payload naming the batch and its size. The receiver sets
//! `MSG_CMSG_CLOEXEC`, so no received fd is ever visible to a concurrent
//! fork+exec without close-on-exec, and treats a truncated message or
//! control message as an error.

use std::fs::DirBuilder;
use std::io;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    accept_with, bind, connect, listen, recv, recvmsg, sendmsg, socket_with, sockopt,
};
use rustix::process::Pid;

use crate::conn::Deadline;
use crate::env::{MAX_FDS, MAX_PENDING};
use crate::error::{Error, Step};
use crate::fault::{self, Point, Side};
use crate::wire::handshake::hex;
use crate::wire::{Arrival, Key};

/// Linux refuses more than 253 fds in one `SCM_RIGHTS` message
/// (`SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// The payload of each batch: batch index (u32 LE), fd count (u16 LE).
const BATCH_PAYLOAD: usize = 6;

/// The old process's end before the child connects: the listening socket
/// and the private directory it lives in, removed on drop.
pub(crate) struct FdListener {
    socket: OwnedFd,
    dir: PathBuf,
    path: PathBuf,
}

impl FdListener {
    /// Creates the private directory and listens in it: in
    /// `$XDG_RUNTIME_DIR`, or in the temp dir when that is unset, not a
    /// directory, or not writable (an `XDG_RUNTIME_DIR` kept across `su`
    /// names the other user's).
    pub(crate) fn bind() -> io::Result<FdListener> {
        FdListener::bind_in(&runtime_bases())
    }

    /// [`bind`](FdListener::bind), in the first of `bases` where the
    /// directory can be made.
    fn bind_in(bases: &[PathBuf]) -> io::Result<FdListener> {
        let dir = make_private_dir(bases)?;
        let path = dir.join("fd.sock");
        // From here on, whatever fails (no fd left for the socket, a path
        // too long) takes the directory with it.
        match listen_at(&path) {
            Ok(socket) => Ok(FdListener { socket, dir, path }),
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir(&dir);
                Err(error)
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Step 2: accepts the connections waiting on the channel (it never
    /// blocks), closing and logging each one that is not from `child`
    /// (`SO_PEERCRED`), until the child's or none is left.
    pub(crate) fn accept_child(&self, child: Pid) -> Result<Option<OwnedFd>, Error> {
        const STEP: Step = Step::Connect;
        loop {
            let conn = match accept_with(&self.socket, SocketFlags::CLOEXEC) {
                Ok(conn) => conn,
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                // Gone between connect and accept: that one's business.
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
                Err(e) => return Err(Error::io(STEP)(e.into())),
            };
            let peer = peer_credentials(conn.as_fd()).map_err(Error::io(STEP))?;
            if peer.pid == child.as_raw_pid() {
                return Ok(Some(conn));
            }
            log::warn!(
                "mitosis: closed an fd channel connection from pid {} (uid {}; pid 0 is \
                 outside this PID namespace); only the new process, pid {}, may connect",
                peer.pid,
                peer.uid,
                child.as_raw_nonzero(),
            );
        }
    }
}

impl AsFd for FdListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Where private directories go: `$XDG_RUNTIME_DIR` when it is a
/// directory, then the temp dir.
fn runtime_bases() -> Vec<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir());
    runtime.into_iter().chain([std::env::temp_dir()]).collect()
}

/// Makes a fresh `mitosis-<pid>-<16 hex digits>` directory, mode 0700, in
/// the first of `bases` that takes it; the error names every path tried.
fn make_private_dir(bases: &[PathBuf]) -> io::Result<PathBuf> {
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let name = format!("mitosis-{}-{}", std::process::id(), hex(&random));
    let mut failed: Vec<(PathBuf, io::Error)> = Vec::new();
    for (index, base) in bases.iter().enumerate() {
        if bases[..index].contains(base) {
            continue;
        }
        let dir = base.join(&name);
        // The mode is applied at creation; umask can only narrow it.
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) => {
                if let Some(next) = bases.get(index + 1) {
                    log::warn!(
                        "mitosis: could not make a private directory {}: {error}; using \
                         {} instead. Point XDG_RUNTIME_DIR at a directory this user can write \
                         to, or unset it",
                        dir.display(),
                        next.display()
                    );
                }
                failed.push((dir, error));
            }
        }
    }
    let kind = failed
        .last()
        .map_or(io::ErrorKind::NotFound, |(_, error)| error.kind());
    let tried: Vec<String> = failed
        .iter()
        .map(|(dir, error)| format!("{} ({error})", dir.display()))
        .collect();
    Err(io::Error::new(
        kind,
        format!(
            "could not make a private directory; tried {}. Set XDG_RUNTIME_DIR or TMPDIR \
             to a directory this user can write to",
            tried.join(", ")
        ),
    ))
}

/// A SEQPACKET socket listening at `path`, in a directory that exists.
fn listen_at(path: &Path) -> io::Result<OwnedFd> {
    let address = SocketAddrUnix::new(path).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "fd channel path {} is too long for a Unix socket; set XDG_RUNTIME_DIR or \
                 TMPDIR to a shorter directory",
                path.display()
            ),
        )
    })?;
    // Non-blocking, so that accepting never waits on a connection that
    // went away after poll saw it.
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    bind(&socket, &address)?;
    // A backlog as deep as the TCP port's pending limit keeps a few
    // strangers of the same user from filling it before the new process
    // connects.
    listen(&socket, MAX_PENDING as i32)?;
    Ok(socket)
}

impl Drop for FdListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes the fd channel's socket and directory after a failed takeover.
/// The old process removes them itself, but not if it died first; then
/// only the new process knows where they are. Only a path shaped as
/// [`FdListener::bind`] makes one is touched, and the directory only if it
/// is empty then.
pub(crate) fn remove_if_left_behind(path: &Path) {
    let Some(dir) = path.parent() else { return };
    let made_by_bind = path.file_name() == Some("fd.sock".as_ref())
        && dir
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("mitosis-"));
    if made_by_bind {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir(dir);
    }
}

/// Connects the new process to the old process's fd channel.
pub(crate) fn connect_to(path: &Path) -> io::Result<OwnedFd> {
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    connect(&socket, &SocketAddrUnix::new(path)?)?;
    Ok(socket)
}

/// Step 2: sends KEY, the channel's first message, to the new process,
/// with this process's own executable as its `SCM_RIGHTS` fd when it could
/// be opened: the new process's previous build. A build that reads KEY
/// without room for an fd never sees it; the kernel closes it.
pub(crate) fn send_key(
    channel: BorrowedFd<'_>,
    key: &Key,
    executable: Option<BorrowedFd<'_>>,
    deadline: &Deadline,
) -> Result<(), Error> {
    let key = key.encode();
    send_message(
        channel,
        Step::Connect,
        "KEY",
        &key,
        executable.as_slice(),
        deadline,
    )
}

/// Step 2: sends ARRIVAL, the port the new process's TCP connection comes
/// from, to the old process.
pub(crate) fn send_arrival(
    channel: BorrowedFd<'_>,
    arrival: Arrival,
    deadline: &Deadline,
) -> Result<(), Error> {
    let arrival = arrival.encode();
    send_message(channel, Step::Connect, "ARRIVAL", &arrival, &[], deadline)
}

/// Sends one message of `step` whole, with at most one fd, under the
/// deadline: KEY and ARRIVAL (step 2), PIPE (step 6).
pub(crate) fn send_message(
    channel: BorrowedFd<'_>,
    step: Step,
    name: &str,
    message: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: &Deadline,
) -> Result<(), Error> {
    set_timeout(channel, sockopt::Timeout::Send, deadline, step)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(pushed, "control buffer sized for one fd");
    }
    loop {
        match sendmsg(
            channel,
            &[io::IoSlice::new(message)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) if n == message.len() => return Ok(()),
            Ok(n) => {
                return Err(Error::protocol(
                    step,
                    format!("{name}: sent {n} of {} bytes", message.len()),
                ));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(deadline.io_error(step)(e.into())),
        }
    }
}

/// Step 2: reads ARRIVAL without waiting: `None` while it has not come.
pub(crate) fn try_recv_arrival(channel: BorrowedFd<'_>) -> Result<Option<Arrival>, Error> {
    const STEP: Step = Step::Connect;
    let mut arrival = [0u8; Arrival::LEN + 1];
    loop {
        match recv(
            channel,
            &mut arrival,
            RecvFlags::DONTWAIT | RecvFlags::TRUNC,
        ) {
            Ok((_, 0)) => return Err(Error::PeerGone { step: STEP }),
            Ok((_, len)) => return Arrival::decode(&arrival[..len.min(arrival.len())]).map(Some),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(Error::io(STEP)(e.into())),
        }
    }
}

/// How long the new process waits for KEY: the old process sends it as it
/// accepts the connection, so this only bounds a wait on an old process
/// that stopped (SIGSTOP) between spawning and accepting.
const KEY_WAIT: Duration = Duration::from_secs(10);

/// Step 2: receives KEY, the old process's first message, and the old
/// process's executable if it came with it (the previous build).
pub(crate) fn recv_key(channel: BorrowedFd<'_>) -> Result<(Key, Option<OwnedFd>), Error> {
    const STEP: Step = Step::Connect;
    sockopt::set_socket_timeout(channel, sockopt::Timeout::Recv, Some(KEY_WAIT))
        .map_err(|e| Error::io(STEP)(e.into()))?;
    // One byte more than KEY, so that a longer message shows as a length
    // mismatch; MSG_TRUNC says if it was longer still. Room for more fds
    // than one, so that extra ones arrive and are closed.
    let mut key = [0u8; Key::LEN + 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match recvmsg(
            channel,
            &mut [io::IoSliceMut::new(&mut key)],
            &mut control,
            RecvFlags::TRUNC | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(message) => break message,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(Error::protocol(
                    STEP,
                    format!(
                        "the old process accepted the fd channel but sent no KEY within \
                         {KEY_WAIT:?}"
                    ),
                ));
            }
            Err(e) => return Err(Error::io(STEP)(e.into())),
        }
    };
    let mut fds = received_fds(&mut control);
    if received.bytes == 0 {
        return Err(Error::PeerGone { step: STEP });
    }
    let key = Key::decode(&key[..received.bytes.min(key.len())])?;
    // The executable is a convenience: without it (or with a truncated
    // control message, when this process is out of fds) there is simply
    // no previous build to go back to.
    let executable = match (fds.len(), received.flags.contains(ReturnFlags::CTRUNC)) {
        (1, false) => fds.pop(),
        (0, false) => None,
        (count, _) => {
            log::warn!(
                "mitosis: KEY came with {count} fds (truncated: {}); keeping no previous build",
                received.flags.contains(ReturnFlags::CTRUNC)
            );
            None
        }
    };
    Ok((key, executable))
}

/// Who is at the other end of a Unix socket, as the kernel recorded it at
/// connect (`SO_PEERCRED`): pid 0 for a peer outside this process's PID
/// namespace.
pub(crate) struct Peer {
    pub(crate) pid: i32,
    pub(crate) uid: u32,
}

/// `SO_PEERCRED`, through `getsockopt` itself: rustix's `socket_peercred`
/// fails on the pid 0 of a peer outside this PID namespace (`mitosisctl`
/// on the host, a program that is a container's PID 1), which must be
/// told apart, not be an error.
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<Peer> {
    let mut peer = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket, borrowed; the kernel writes at most
    // `len` bytes, the size of `peer`, into `peer`.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut peer).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: peer.pid,
        uid: peer.uid,
    })
}

/// Takes every fd that came in `control`'s `SCM_RIGHTS` messages, so that
/// each is closed on any error that follows.
pub(crate) fn received_fds(control: &mut RecvAncillaryBuffer<'_>) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    fds
}

/// Sends `fds` in batches of at most [`MAX_FDS_PER_MESSAGE`].
pub(crate) fn send_fds(
    channel: BorrowedFd<'_>,
    fds: &[BorrowedFd<'_>],
    deadline: &Deadline,
) -> Result<(), Error> {
    const STEP: Step = Step::Fds;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    for (index, batch) in fds.chunks(MAX_FDS_PER_MESSAGE).enumerate() {
        fault::at(Side::Old, Point::FdBatch(index as u32));
        let mut payload = [0u8; BATCH_PAYLOAD];
        payload[..4].copy_from_slice(&(index as u32).to_le_bytes());
        payload[4..].copy_from_slice(&(batch.len() as u16).to_le_bytes());
        let mut control = SendAncillaryBuffer::new(&mut space);
        let pushed = control.push(SendAncillaryMessage::ScmRights(batch));
        debug_assert!(pushed, "control buffer sized for a full batch");
        set_timeout(channel, sockopt::Timeout::Send, deadline, STEP)?;
        loop {
            match sendmsg(
                channel,
                &[io::IoSlice::new(&payload)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) if n == BATCH_PAYLOAD => break,
                Ok(n) => {
                    return Err(Error::protocol(
                        STEP,
                        format!("fd batch {index}: sent {n} of {BATCH_PAYLOAD} bytes"),
                    ));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(deadline.io_error(STEP)(e.into())),
            }
        }
    }
    Ok(())
}

/// How many fds [`redirect_to_dev_null`] points at `/dev/null` between two
/// offers of its CPU to the new process.
const REDIRECT_CHUNK: usize = 256;

/// Points each of `fds` at `/dev/null`, without closing it.
///
/// After the commit acknowledgement the old process still holds the state it
/// handed over, with its own copies of every fd. Dropping that state runs
/// its destructors, and a destructor may write: a `BufWriter` flushes what
/// the new process has already taken over. Once every fd number refers to
/// `/dev/null`, no destructor can reach a connection that now belongs to the
/// new process, and dropping the state only frees memory and closes the
/// placeholders.
///
/// It costs one `dup3` per fd (10,000 take about 2.5 ms), and it runs as
/// TAKEN arrives, which the kernel often delivers by waking this thread on
/// the CPU of the new process, which has just sent TAKEN and is still
/// returning from `init`. This thread gives way (`sched_yield`) before
/// each chunk of [`REDIRECT_CHUNK`] fds, so that the new process, which
/// owns the connections now, is not kept waiting for the whole redirection
/// on a busy machine; when nothing else wants the CPU, the yields cost
/// microseconds.
pub(crate) fn redirect_to_dev_null(fds: &[RawFd]) -> io::Result<()> {
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    for chunk in fds.chunks(REDIRECT_CHUNK) {
        std::thread::yield_now();
        redirect_chunk(&null, chunk)?;
    }
    Ok(())
}

fn redirect_chunk(null: &OwnedFd, fds: &[RawFd]) -> io::Result<()> {
    for &raw in fds {
        // SAFETY: `raw` is an fd owned by the handed-over state, which is
        // alive and keeps it open until it is dropped after this returns.
        // `dup3` only changes which file the number refers to; the number
        // stays open, and `ManuallyDrop` makes sure it is never closed here,
        // so its owner closes it exactly once, as before.
        let mut owned = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(raw) });
        rustix::io::dup3(null, &mut owned, rustix::io::DupFlags::CLOEXEC)?;
    }
    Ok(())
}

/// Receives exactly `count` fds, sent by [`send_fds`].
pub(crate) fn recv_fds(
    channel: BorrowedFd<'_>,
    count: u32,
    deadline: &Deadline,
) -> Result<Vec<OwnedFd>, Error> {
    const STEP: Step = Step::Fds;
    if u64::from(count) > MAX_FDS {
        return Err(Error::FrameTooLarge {
            step: STEP,
            kind: "END (fd count)",
            len: count.into(),
            max: MAX_FDS,
        });
    }
    make_room(channel, count)?;
    let mut received: Vec<OwnedFd> = Vec::with_capacity(count as usize);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut index = 0u32;
    while received.len() < count as usize {
        fault::at(Side::New, Point::FdBatch(index));
        let expected = (count as usize - received.len()).min(MAX_FDS_PER_MESSAGE);
        // One byte more than a batch needs, so that an oversized payload
        // shows up as a length mismatch or MSG_TRUNC.
        let mut payload = [0u8; BATCH_PAYLOAD + 1];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        set_timeout(channel, sockopt::Timeout::Recv, deadline, STEP)?;
        let message = loop {
            match recvmsg(
                channel,
                &mut [io::IoSliceMut::new(&mut payload)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(message) => break message,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(deadline.io_error(STEP)(e.into())),
            }
        };
        // Take ownership of whatever arrived first, so that every fd is
        // closed on any error below.
        let mut batch = received_fds(&mut control);
        if message.bytes == 0 && batch.is_empty() {
            return Err(Error::PeerGone { step: STEP });
        }
        if message.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::protocol(
                STEP,
                format!(
                    "fd batch {index}: control message truncated (MSG_CTRUNC); fds were lost, \
                     probably because this process hit its open-file limit (RLIMIT_NOFILE)"
                ),
            ));
        }
        if message.flags.contains(ReturnFlags::TRUNC) || message.bytes != BATCH_PAYLOAD {
            return Err(Error::protocol(
                STEP,
                format!(
                    "fd batch {index}: payload of {} bytes, expected {BATCH_PAYLOAD}",
                    message.bytes
                ),
            ));
        }
        let got_index = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
        let got_count = u16::from_le_bytes(payload[4..6].try_into().expect("2 bytes")) as usize;
        if got_index != index || got_count != expected || batch.len() != expected {
            return Err(Error::protocol(
                STEP,
                format!(
                    "fd batch {got_index} (expected {index}) announced {got_count} fds and \
                     carried {}, expected {expected}",
                    batch.len()
                ),
            ));
        }
        received.append(&mut batch);
        index += 1;
    }
    Ok(received)
}

/// Before the first batch: checks that this process may hold `count` more
/// fds, and grows its fd table to hold them all at once.
///
/// Received fds take the lowest free numbers, so the last one is at least
/// the lowest free number now plus `count - 1`. If that is at or past the
/// open-file limit (`RLIMIT_NOFILE`), the fds cannot all arrive, and the
/// error says so, naming the limit and the numbers, before any fd has been
/// received. Otherwise one `F_DUPFD` to that number, closed at once, makes
/// the kernel grow the fd table to its final size in one step. Left to
/// itself it grows the table as the fds arrive, copying it at every
/// doubling, and in a process with threads waiting for an RCU grace period
/// each time. A new process usually starts with a table as large as the
/// old process's (it survives `exec`); then this costs three system calls.
fn make_room(channel: BorrowedFd<'_>, count: u32) -> Result<(), Error> {
    const STEP: Step = Step::Fds;
    if count == 0 {
        return Ok(());
    }
    let io = |e: rustix::io::Errno| Error::io(STEP)(e.into());
    let lowest = rustix::io::fcntl_dupfd_cloexec(channel, 0)
        .map_err(io)?
        .as_raw_fd();
    let last = lowest as u64 + u64::from(count) - 1;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let too_few = || Error::Io {
        step: STEP,
        source: io::Error::other(format!(
            "this process may open {} files (RLIMIT_NOFILE), too few for the state's {count} \
             fds, which would take the fd numbers {lowest} to {last}; raise RLIMIT_NOFILE \
             (ulimit -n, LimitNOFILE= in systemd) for the new process",
            limit.map_or_else(|| "unlimited".to_owned(), |limit| limit.to_string()),
        )),
    };
    if limit.is_some_and(|limit| last >= limit) {
        return Err(too_few());
    }
    let last = RawFd::try_from(last).map_err(|_| too_few())?;
    match rustix::io::fcntl_dupfd_cloexec(channel, last) {
        Ok(_grown) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::MFILE) => Err(too_few()),
        Err(e) => Err(io(e)),
    }
}

pub(crate) fn set_timeout(
    channel: BorrowedFd<'_>,
    which: sockopt::Timeout,
    deadline: &Deadline,
    step: Step,
) -> Result<(), Error> {
    let left = deadline.remaining(step)?;
    sockopt::set_socket_timeout(channel.as_fd(), which, left).map_err(|e| Error::io(step)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn an_unusable_base_falls_back_to_the_next() {
        let fallback = std::env::temp_dir();
        let listener =
            FdListener::bind_in(&[PathBuf::from("/proc/self"), fallback.clone()]).unwrap();
        let dir = listener.path().parent().unwrap().to_path_buf();
        assert_eq!(dir.parent(), Some(fallback.as_path()));
        assert!(listener.path().exists());
        drop(listener);
        assert!(!dir.exists(), "{} is removed", dir.display());
    }

    #[test]
    fn when_no_base_is_usable_the_error_names_every_path_tried() {
        // procfs takes no directories, not even from root; the other does
        // not exist.
        let bases = [
            PathBuf::from("/proc/self"),
            PathBuf::from("/nonexistent-mitosis-base"),
        ];
        let err = FdListener::bind_in(&bases)
            .err()
            .expect("no base is usable");
        let text = err.to_string();
        let pid = std::process::id();
        for base in ["/proc/self", "/nonexistent-mitosis-base"] {
            assert!(
                text.contains(&format!("{base}/mitosis-{pid}-")),
                "names {base}: {text}"
            );
        }
        assert!(
            text.contains("Set XDG_RUNTIME_DIR or TMPDIR to a directory this user can write to"),
            "says what to do: {text}"
        );
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{text}");
    }

    #[test]
    fn many_fds_cross_in_batches_close_on_exec() {
        let (old, new) = pair();
        let files: Vec<std::fs::File> = (0..600)
            .map(|_| std::fs::File::open("/proc/self/exe").unwrap())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
        let deadline = Deadline::after(Duration::from_secs(5));
        let receiver = std::thread::spawn(move || recv_fds(new.as_fd(), 600, &deadline));
        send_fds(old.as_fd(), &borrowed, &deadline).unwrap();
        let received = receiver.join().unwrap().unwrap();
        assert_eq!(received.len(), 600);
        for (sent, got) in files.iter().zip(&received) {
            assert_eq!(
                rustix::fs::fstat(sent).unwrap().st_ino,
                rustix::fs::fstat(got).unwrap().st_ino
            );
            let flags = rustix::io::fcntl_getfd(got).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }

    #[test]
    fn a_batch_with_the_wrong_count_is_refused() {
        let (old, new) = pair();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let deadline = Deadline::after(Duration::from_secs(5));
        send_fds(old.as_fd(), &[file.as_fd()], &deadline).unwrap();
        let err = recv_fds(new.as_fd(), 2, &deadline).unwrap_err();
        assert!(
            err.to_string()
                .contains("announced 1 fds and carried 1, expected 2"),
            "{err}"
        );
    }

    #[test]
    fn a_closed_channel_is_the_peer_gone() {
        let (old, new) = pair();
        drop(old);
        let deadline = Deadline::after(Duration::from_secs(5));
        let err = recv_fds(new.as_fd(), 1, &deadline).unwrap_err();
        assert!(
            matches!(err, Error::PeerGone { step: Step::Fds }),
            "{err:?}"
        );
    }

    #[test]
    fn a_silent_channel_times_out() {
        let (_old, new) = pair();
        let deadline = Deadline::after(Duration::from_millis(50));
        let err = recv_fds(new.as_fd(), 1, &deadline).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    step: Step::Fds,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
