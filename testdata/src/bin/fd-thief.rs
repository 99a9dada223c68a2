//! A hostile local process that tries to steal fds from an old process's fd
//! channel (PROTOCOL.md, step 7).
//!
//! `fd-thief <socket path> <ms>` connects to the `SOCK_SEQPACKET` socket at
//! the path, then receives messages (with their `SCM_RIGHTS` fds, close-on-
//! exec) until the other end closes the connection or `<ms>` milliseconds
//! have passed since the connection, and prints exactly one line on stdout:
//!
//! - `connect failed: <ERRNO NAME>: <text>` if the connection failed, or
//! - `received <n> fds, <m> bytes` otherwise (0 and 0 when the connection
//!   was closed without a message).
//!
//! Either way it exits 0. On stderr it reports `fd-thief: connected to
//! <path>` as soon as the connection exists (the tests wait for it before
//! they let the real new process connect), and at the end `fd-thief: ended
//! by <eof|reset|timeout>`. An unexpected error is reported on stderr, with
//! exit code 1.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType, connect, recvmsg, socket_with,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, ms] = args.as_slice() else {
        eprintln!("usage: fd-thief <socket path> <milliseconds>");
        return ExitCode::from(2);
    };
    let Ok(ms) = ms.parse::<u64>() else {
        eprintln!("fd-thief: not a number of milliseconds: {ms:?}");
        return ExitCode::from(2);
    };
    match steal(PathBuf::from(path), Duration::from_millis(ms)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fd-thief: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects and receives; returns the line to print.
fn steal(path: PathBuf, patience: Duration) -> io::Result<String> {
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let address = SocketAddrUnix::new(&path)?;
    if let Err(e) = connect(&socket, &address) {
        return Ok(format!("connect failed: {}: {e}", errno_name(e)));
    }
    eprintln!("fd-thief: connected to {}", path.display());

    let deadline = Instant::now() + patience;
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut bytes = 0usize;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break "timeout";
        }
        let mut poll_fds = [PollFd::new(&socket, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        match poll(&mut poll_fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut payload = [0u8; 64 * 1024];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let message = match recvmsg(
            &socket,
            &mut [IoSliceMut::new(&mut payload)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(message) => message,
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(Errno::CONNRESET) => break "reset",
            Err(e) => return Err(e.into()),
        };
        let before = fds.len();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if message.bytes == 0 && fds.len() == before {
            break "eof";
        }
        bytes += message.bytes;
    };
    eprintln!("fd-thief: ended by {end}");
    Ok(format!("received {} fds, {bytes} bytes", fds.len()))
}

/// The symbolic name of the errors a connect can end with.
fn errno_name(errno: Errno) -> String {
    let known = [
        (Errno::ACCESS, "EACCES"),
        (Errno::PERM, "EPERM"),
        (Errno::NOENT, "ENOENT"),
        (Errno::NOTDIR, "ENOTDIR"),
        (Errno::CONNREFUSED, "ECONNREFUSED"),
        (Errno::CONNRESET, "ECONNRESET"),
        (Errno::AGAIN, "EAGAIN"),
        (Errno::PROTOTYPE, "EPROTOTYPE"),
        (Errno::NAMETOOLONG, "ENAMETOOLONG"),
        (Errno::LOOP, "ELOOP"),
        (Errno::INTR, "EINTR"),
    ];
    known.iter().find(|(known, _)| *known == errno).map_or_else(
        || format!("errno {}", errno.raw_os_error()),
        |(_, name)| (*name).to_owned(),
    )
}
