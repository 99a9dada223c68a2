//! The handshake (PROTOCOL.md, steps 2 to 4): the secret, the two
//! preambles that prove it, the protocol version, and the schema offer.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};

use crate::error::{Error, Step};
use crate::fd_channel::{hex, timespec};
use crate::frame::{
    Deadline, Fields, HELLO_LEN, Kind, MAGIC, Payload, TOKEN_LEN, VERSIONS, WELCOME_LEN,
};
use crate::handover::{Schema, SchemaInfo};

/// A fresh random secret for one handover: the new process's token, then
/// the old process's. It reaches the new process through its environment,
/// never its arguments, which any local user can read.
pub(crate) struct Secret([u8; 2 * TOKEN_LEN]);

impl Secret {
    pub(crate) fn from_bytes(bytes: [u8; 2 * TOKEN_LEN]) -> Secret {
        Secret(bytes)
    }

    pub(crate) fn generate() -> io::Result<Secret> {
        let mut bytes = [0u8; 2 * TOKEN_LEN];
        let mut filled = 0;
        while filled < bytes.len() {
            filled += rustix::rand::getrandom(
                &mut bytes[filled..],
                rustix::rand::GetRandomFlags::empty(),
            )?;
        }
        Ok(Secret(bytes))
    }

    pub(crate) fn from_hex(text: &str) -> Option<Secret> {
        let text = text.as_bytes();
        if text.len() != 4 * TOKEN_LEN {
            return None;
        }
        let mut bytes = [0u8; 2 * TOKEN_LEN];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks(2)) {
            let digits = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(digits, 16).ok()?;
        }
        Some(Secret(bytes))
    }

    pub(crate) fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub(crate) fn child_token(&self) -> &[u8] {
        &self.0[..TOKEN_LEN]
    }

    pub(crate) fn parent_token(&self) -> &[u8] {
        &self.0[TOKEN_LEN..]
    }
}

/// Compares without an early exit, so that timing says nothing about how
/// much of a guessed token was right.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The new process's preamble (step 3).
pub(crate) fn hello(secret: &Secret) -> [u8; HELLO_LEN] {
    let mut hello = [0u8; HELLO_LEN];
    hello[..8].copy_from_slice(&MAGIC);
    hello[8..10].copy_from_slice(&VERSIONS.0.to_le_bytes());
    hello[10..12].copy_from_slice(&VERSIONS.1.to_le_bytes());
    hello[12..].copy_from_slice(secret.child_token());
    hello
}

/// The versions a verified HELLO offers.
fn hello_versions(hello: &[u8; HELLO_LEN]) -> (u16, u16) {
    (
        u16::from_le_bytes([hello[8], hello[9]]),
        u16::from_le_bytes([hello[10], hello[11]]),
    )
}

/// What the first bytes of a connection prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A HELLO so far; more bytes are needed.
    Waiting,
    /// Not a HELLO, or not one with the secret; why, for the log.
    Refused(&'static str),
    /// A HELLO with the new process's token, offering these versions.
    Proven((u16, u16)),
}

/// Checks the first bytes a connection sent (step 3): refused as soon as
/// they differ from the magic, then once all `HELLO_LEN` are in, proven
/// only if they hold the new process's token. Bytes past the HELLO are not
/// looked at. Allocates nothing.
pub(crate) fn check_hello(secret: &Secret, received: &[u8]) -> Progress {
    let received = &received[..received.len().min(HELLO_LEN)];
    let magic_seen = received.len().min(MAGIC.len());
    if received[..magic_seen] != MAGIC[..magic_seen] {
        return Progress::Refused("sent bytes that are not a mitosis HELLO");
    }
    let Ok(hello) = <&[u8; HELLO_LEN]>::try_from(received) else {
        return Progress::Waiting;
    };
    if same_token(&hello[12..], secret.child_token()) {
        Progress::Proven(hello_versions(hello))
    } else {
        Progress::Refused("sent a HELLO with the wrong secret")
    }
}

/// The highest version both sides speak, if any.
pub(crate) fn choose_version(theirs: (u16, u16)) -> Option<u16> {
    let low = theirs.0.max(VERSIONS.0);
    let high = theirs.1.min(VERSIONS.1);
    (low <= high).then_some(high)
}

/// The old process's preamble (step 3); `chosen` is 0 when no version is
/// shared.
pub(crate) fn welcome(secret: &Secret, chosen: u16) -> [u8; WELCOME_LEN] {
    let mut welcome = [0u8; WELCOME_LEN];
    welcome[..8].copy_from_slice(&MAGIC);
    welcome[8..10].copy_from_slice(&chosen.to_le_bytes());
    welcome[10..12].copy_from_slice(&VERSIONS.0.to_le_bytes());
    welcome[12..14].copy_from_slice(&VERSIONS.1.to_le_bytes());
    welcome[14..].copy_from_slice(secret.parent_token());
    welcome
}

/// Checks the old process's preamble and returns the version it chose.
pub(crate) fn check_welcome(secret: &Secret, welcome: &[u8; WELCOME_LEN]) -> Result<u16, Error> {
    const STEP: Step = Step::Hello;
    if welcome[..8] != MAGIC {
        return Err(Error::protocol(
            STEP,
            "the old process's preamble has the wrong magic bytes",
        ));
    }
    if !same_token(&welcome[14..], secret.parent_token()) {
        return Err(Error::protocol(
            STEP,
            "the process on the handover port did not prove the secret; it is not the process \
             that started this one",
        ));
    }
    let chosen = u16::from_le_bytes([welcome[8], welcome[9]]);
    let theirs = (
        u16::from_le_bytes([welcome[10], welcome[11]]),
        u16::from_le_bytes([welcome[12], welcome[13]]),
    );
    if chosen == 0 {
        return Err(Error::ProtocolVersion {
            ours: VERSIONS,
            theirs,
        });
    }
    if chosen < VERSIONS.0 || chosen > VERSIONS.1 {
        return Err(Error::protocol(
            STEP,
            format!("the old process chose version {chosen}, which this process never offered"),
        ));
    }
    Ok(chosen)
}

/// The OFFER payload (step 4): how many schemas, then each schema.
pub(crate) fn offer(accepted: &[Schema]) -> Vec<u8> {
    accepted
        .iter()
        .fold(
            Payload::default().u16(accepted.len() as u16),
            |payload, schema| payload.schema(schema),
        )
        .bytes()
}

pub(crate) fn parse_offer(payload: &[u8]) -> Result<Vec<SchemaInfo>, Error> {
    let mut fields = Fields::new(Step::Offer, Kind::Offer, payload);
    let count = fields.u16()?;
    let accepted = (0..count)
        .map(|_| fields.schema())
        .collect::<Result<Vec<_>, _>>()?;
    fields.end()?;
    Ok(accepted)
}

/// Connections that have not proven the secret yet. More than this many at
/// once and the oldest is dropped, so that a flood cannot exhaust fds.
pub(crate) const MAX_PENDING: usize = 64;

struct Pending {
    stream: TcpStream,
    hello: [u8; HELLO_LEN],
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
                            hello: [0; HELLO_LEN],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_through_hex() {
        let secret = Secret::generate().unwrap();
        let again = Secret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(secret.0, again.0);
        assert!(Secret::from_hex("abc").is_none());
        assert!(Secret::from_hex(&"zz".repeat(64)).is_none());
    }

    #[test]
    fn versions_are_negotiated_to_the_highest_shared() {
        assert_eq!(choose_version((1, 1)), Some(1));
        assert_eq!(choose_version((1, 7)), Some(1));
        assert_eq!(choose_version((2, 3)), None);
        assert_eq!(choose_version((0, 0)), None);
    }

    #[test]
    fn welcome_is_checked() {
        let secret = Secret::generate().unwrap();
        assert_eq!(check_welcome(&secret, &welcome(&secret, 1)).unwrap(), 1);
        let other = Secret::generate().unwrap();
        assert!(matches!(
            check_welcome(&secret, &welcome(&other, 1)),
            Err(Error::Protocol { .. })
        ));
        assert!(matches!(
            check_welcome(&secret, &welcome(&secret, 0)),
            Err(Error::ProtocolVersion {
                ours: (1, 1),
                theirs: (1, 1)
            })
        ));
    }

    #[test]
    fn offer_round_trips() {
        let schemas = [Schema::new("a::State", 1), Schema::new("a::StateV0", 0)];
        assert_eq!(
            parse_offer(&offer(&schemas)).unwrap(),
            schemas.map(SchemaInfo::from)
        );
        let mut long = offer(&schemas);
        long.push(0);
        assert!(parse_offer(&long).is_err());
        assert!(parse_offer(&offer(&schemas)[..5]).is_err());
    }
}
