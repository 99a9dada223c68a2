//! The handshake, by rustls, and the session it leaves behind.
//!
//! rustls runs the handshake as usual, except that it is given the peer's
//! bytes one whole record at a time and stops being given them the moment
//! the handshake is over. So the records that follow (a NewSessionTicket,
//! the first data) stay with this stream, rustls holds nothing that the
//! program has not seen, and the session it hands over
//! (`dangerous_extract_secrets`) is complete: keys, IVs and sequence
//! numbers. A TLS 1.3 traffic secret, which the next KeyUpdate needs, is
//! not among them; the config's key log sees it, and so does a key log
//! this module puts in front of the program's own.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustls::{ClientConfig, Connection, KeyLog, ServerConfig, Side};
use zeroize::Zeroizing;

use super::keys::{Keys, Suite};
use super::record::{HEADER, MAX_CIPHERTEXT, Session};

/// How long a handshake on a non-blocking socket may wait for the peer.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The two TLS 1.3 application traffic secrets, as the key log saw them.
#[derive(Default)]
struct Captured {
    client: Option<Zeroizing<Vec<u8>>>,
    server: Option<Zeroizing<Vec<u8>>>,
}

/// A key log that keeps the traffic secrets of one connection, and passes
/// every line on to the config's own key log.
struct Capture {
    inner: Arc<dyn KeyLog>,
    secrets: Mutex<Captured>,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl KeyLog for Capture {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        if let Ok(mut secrets) = self.secrets.lock() {
            let slot = match label {
                "CLIENT_TRAFFIC_SECRET_0" => Some(&mut secrets.client),
                "SERVER_TRAFFIC_SECRET_0" => Some(&mut secrets.server),
                _ => None,
            };
            if let Some(slot) = slot {
                *slot = Some(Zeroizing::new(secret.to_vec()));
            }
        }
        if self.inner.will_log(label) {
            self.inner.log(label, client_random, secret);
        }
    }

    fn will_log(&self, _: &str) -> bool {
        true
    }
}

impl Capture {
    fn new(inner: &Arc<dyn KeyLog>) -> Arc<Capture> {
        Arc::new(Capture {
            inner: inner.clone(),
            secrets: Mutex::new(Captured::default()),
        })
    }

    fn take(&self) -> Captured {
        self.secrets
            .lock()
            .map(|mut secrets| std::mem::take(&mut *secrets))
            .unwrap_or_default()
    }
}

/// Runs a client handshake over `socket`.
pub(super) fn connect<S: Read + Write + AsFd>(
    config: &ClientConfig,
    server_name: rustls::pki_types::ServerName<'static>,
    socket: &mut S,
) -> io::Result<Session> {
    let mut config = config.clone();
    let capture = Capture::new(&config.key_log);
    config.key_log = capture.clone();
    config.enable_secret_extraction = true;
    let connection = rustls::ClientConnection::new(Arc::new(config), server_name)
        .map_err(|error| tls_error("could not start a TLS client", error))?;
    established(Connection::Client(connection), socket, &capture)
}

/// Runs a server handshake over `socket`.
pub(super) fn accept<S: Read + Write + AsFd>(
    config: &ServerConfig,
    socket: &mut S,
) -> io::Result<Session> {
    let mut config = config.clone();
    let capture = Capture::new(&config.key_log);
    config.key_log = capture.clone();
    config.enable_secret_extraction = true;
    let connection = rustls::ServerConnection::new(Arc::new(config))
        .map_err(|error| tls_error("could not start a TLS server", error))?;
    established(Connection::Server(connection), socket, &capture)
}

/// Completes the handshake and turns the connection into a [`Session`],
/// with the records already read after it.
fn established<S: Read + Write + AsFd>(
    mut connection: Connection,
    socket: &mut S,
    capture: &Capture,
) -> io::Result<Session> {
    let side = match connection {
        Connection::Client(_) => Side::Client,
        Connection::Server(_) => Side::Server,
    };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut incoming = Vec::new();
    loop {
        while connection.wants_write() {
            match connection.write_tls(socket) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    wait(socket, PollFlags::OUT, deadline)?
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        if !connection.is_handshaking() {
            break;
        }
        if let Some(len) = whole_record(&incoming)? {
            let mut record = &incoming[..len];
            connection.read_tls(&mut record)?;
            incoming.drain(..len);
            if let Err(error) = connection.process_new_packets() {
                // rustls has queued an alert that tells the peer why.
                let _ = connection.write_tls(socket);
                return Err(tls_error("the TLS handshake failed", error));
            }
            continue;
        }
        let mut buffer = [0; 16 * 1024];
        match socket.read(&mut buffer) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the TLS peer closed the connection during the handshake",
                ));
            }
            Ok(n) => incoming.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait(socket, PollFlags::IN, deadline)?
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    let (Some(suite), Some(version)) = (
        connection.negotiated_cipher_suite(),
        connection.protocol_version(),
    ) else {
        return Err(io::Error::other(
            "rustls finished a handshake without a cipher suite",
        ));
    };
    let suite = Suite::of(suite);
    let secrets = connection
        .dangerous_extract_secrets()
        .map_err(|error| tls_error("could not take the session's keys from rustls", error))?;
    let captured = capture.take();
    let (tx_secret, rx_secret) = match (version, side) {
        (rustls::ProtocolVersion::TLSv1_2, _) => (None, None),
        (_, Side::Client) => (captured.client, captured.server),
        (_, Side::Server) => (captured.server, captured.client),
    };
    if version == rustls::ProtocolVersion::TLSv1_3 && (tx_secret.is_none() || rx_secret.is_none()) {
        return Err(io::Error::other(
            "rustls's key log did not see the TLS 1.3 traffic secrets",
        ));
    }
    let keys = |(seq, secrets), secret| Keys::extracted(secrets, secret).map(|keys| (keys, seq));
    let mut session = keys(secrets.tx, tx_secret)
        .and_then(|tx| Ok((tx, keys(secrets.rx, rx_secret)?)))
        .and_then(|(tx, rx)| Session::new(suite, side, tx, rx))
        .map_err(io::Error::other)?;
    log::debug!(
        "mitosis: TLS: {version:?} {:?} established as the {side:?}",
        suite.id()
    );
    session.incoming = incoming;
    session.open_records();
    Ok(session)
}

/// The length of the record at the start of `bytes`, if all of it is there.
fn whole_record(bytes: &[u8]) -> io::Result<Option<usize>> {
    if bytes.len() < HEADER {
        return Ok(None);
    }
    let len = HEADER + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if len > HEADER + MAX_CIPHERTEXT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer sent something other than TLS records",
        ));
    }
    Ok((bytes.len() >= len).then_some(len))
}

/// Waits until `socket` is ready for `flags`, at most until `deadline`.
fn wait(socket: &impl AsFd, flags: PollFlags, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the TLS peer did not finish the handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            ));
        }
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(socket, flags)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) if !fds[0].revents().is_empty() => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

fn tls_error(what: &str, error: rustls::Error) -> io::Error {
    let kind = match error {
        rustls::Error::AlertReceived(_) => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, format!("{what}: {error}"))
}
