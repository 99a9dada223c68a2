//! TLS connections that cross a handover with their session: the `tls`
//! feature.
//!
//! A [`TlsStream`] is a client or server TLS connection over a socket,
//! used like any `Read + Write` stream. It implements
//! [`Handover`](crate::Handover), so it goes into a derived state like a
//! `TcpStream`, and the new process carries on with the same TLS session:
//! the peer sees no new handshake, no reconnection, not one byte lost or
//! repeated.
//!
//! rustls runs the handshake. From then on the stream is its own record
//! layer, built on the cipher code of rustls's crypto provider: it keeps
//! every part of the session the program has not finished with (each
//! direction's keys, TLS 1.3 traffic secrets and sequence numbers, the
//! start of a record read from the socket, plaintext not yet read, sealed
//! records not yet written, and who has said close_notify), so that all of
//! it can cross. It handles what may follow a handshake: TLS 1.3 KeyUpdate
//! both ways (and a key that reaches its suite's limit is updated by
//! itself), NewSessionTicket, close_notify, TLS 1.2 warnings, and fatal
//! alerts.
//!
//! # Using it
//!
//! Two lines differ from a plain rustls program. The new process rebuilds
//! the session's cipher with rustls's **process-default crypto provider**,
//! before anything else has run, so install one first thing in `main`,
//! before [`init`](crate::init). And the stream is made with
//! [`TlsStream::connect`] or [`TlsStream::accept`] rather than a rustls
//! connection:
//!
//! ```no_run
//! use std::io::{BufRead, Write};
//! use std::net::TcpStream;
//! use std::sync::Arc;
//! use mitosis::tls::{TlsStream, rustls};
//!
//! #[derive(mitosis::Handover)]
//! struct State {
//!     server: TlsStream<TcpStream>,
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The provider your rustls has (here its `ring` feature).
//!     let _ = rustls::crypto::ring::default_provider().install_default();
//!     let mut state = match mitosis::init::<State>()? {
//!         Some(state) => state, // the same TLS session, mid-conversation
//!         None => {
//!             let config = rustls::ClientConfig::builder()
//!                 .with_root_certificates(trusted_roots())
//!                 .with_no_client_auth();
//!             let socket = TcpStream::connect("irc.libera.chat:6697")?;
//!             let name = "irc.libera.chat".try_into()?;
//!             State { server: TlsStream::connect(Arc::new(config), name, socket)? }
//!         }
//!     };
//!     state.server.write_all(b"PING :hello\r\n")?;
//!     let mut line = String::new();
//!     state.server.read_line(&mut line)?;
//!     Ok(())
//! }
//! # fn trusted_roots() -> rustls::RootCertStore { rustls::RootCertStore::empty() }
//! ```
//!
//! Dropping a stream sends nothing (the old process drops its copy after
//! the new one took over); say [`close`](TlsStream::close) to end the
//! session with close_notify.
//!
//! # Secrets
//!
//! The keys cross through a pipe of their own whose read end takes the fd
//! channel, a Unix socket only the new process can reach
//! ([`Encoder::secret`](crate::Encoder::secret)), never the loopback TCP
//! stream that carries the rest of the state: a process that may capture
//! loopback traffic, such as another container of the same Kubernetes pod,
//! could otherwise decrypt the connection's past and future. They are
//! never in argv, the environment or a file, and are wiped from memory
//! when dropped (zeroize). PROTOCOL.md's threat model has the details.
//!
//! # What it does not do
//!
//! - Session tickets that arrive after the handshake are read and
//!   dropped: a later connection to the same server makes a full
//!   handshake.
//! - TLS 1.2 renegotiation is refused (with a no_renegotiation warning),
//!   as rustls refuses it; TLS 1.3 post-handshake client authentication is
//!   an error, as rustls never offers it.
//! - A handover waits for the handshake: [`connect`](TlsStream::connect)
//!   and [`accept`](TlsStream::accept) return only once it is over.

mod handover;
mod handshake;
mod keys;
mod record;
#[cfg(test)]
mod tests;

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::ServerName;

use record::{Failure, MAX_WRITE, Session};

/// A TLS connection over `S` (a `TcpStream` by default) that crosses a
/// handover with its session. See the [module docs](self).
///
/// It reads and writes like the socket it wraps, blocking or not: on a
/// non-blocking socket, `read` says `WouldBlock` until a whole record is
/// in, and `write` seals the bytes and says it took them even when the
/// socket took only part of the records; [`wants_write`](Self::wants_write)
/// then says to poll for writable and [`flush`](Write::flush). It buffers
/// what it decrypts, so it is [`BufRead`] itself: no `BufReader` around it.
pub struct TlsStream<S = TcpStream> {
    socket: S,
    session: Session,
}

impl<S: Read + Write + AsFd> TlsStream<S> {
    /// Connects as a client: runs the handshake over `socket` with
    /// `config`, verifying the server as `server_name`, and returns once it
    /// is over. On a non-blocking socket it waits for the socket with
    /// `poll`, for at most 10 seconds.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use mitosis::tls::{TlsStream, rustls};
    /// # fn f(config: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
    /// let socket = std::net::TcpStream::connect("127.0.0.1:6697")?;
    /// let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    /// let stream = TlsStream::connect(config, name, socket)?;
    /// # Ok(()) }
    /// ```
    pub fn connect(
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        mut socket: S,
    ) -> io::Result<TlsStream<S>> {
        let session = handshake::connect(&config, server_name, &mut socket)?;
        Ok(TlsStream { socket, session })
    }

    /// Accepts as a server: runs the handshake over `socket` with `config`
    /// and returns once it is over, like [`connect`](Self::connect).
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use mitosis::tls::{TlsStream, rustls};
    /// # fn f(config: Arc<rustls::ServerConfig>, listener: std::net::TcpListener) -> std::io::Result<()> {
    /// let (socket, _) = listener.accept()?;
    /// let stream = TlsStream::accept(config, socket)?;
    /// # Ok(()) }
    /// ```
    pub fn accept(config: Arc<rustls::ServerConfig>, mut socket: S) -> io::Result<TlsStream<S>> {
        let session = handshake::accept(&config, &mut socket)?;
        Ok(TlsStream { socket, session })
    }
}

impl<S> TlsStream<S> {
    /// The socket underneath, to poll it or ask for its addresses. Reading
    /// or writing it directly breaks the session.
    ///
    /// ```no_run
    /// # fn f(stream: &mitosis::tls::TlsStream) -> std::io::Result<()> {
    /// let peer = stream.get_ref().peer_addr()?;
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.socket
    }

    /// Plaintext received and not read yet. A program that polls the
    /// socket reads this first: the socket says nothing about it.
    ///
    /// ```no_run
    /// # fn f(stream: &mitosis::tls::TlsStream) {
    /// let must_poll = stream.buffer().is_empty();
    /// # }
    /// ```
    pub fn buffer(&self) -> &[u8] {
        self.session.unread()
    }

    /// Whether sealed records wait to be written: poll the socket for
    /// writable, then [`flush`](Write::flush).
    ///
    /// ```no_run
    /// # fn f(stream: &mitosis::tls::TlsStream) {
    /// let poll_for_writable = stream.wants_write();
    /// # }
    /// ```
    pub fn wants_write(&self) -> bool {
        !self.session.outgoing.is_empty()
    }

    /// The negotiated protocol version: `TLSv1_2` or `TLSv1_3`.
    ///
    /// ```no_run
    /// # fn f(stream: &mitosis::tls::TlsStream) {
    /// println!("{:?}", stream.protocol_version());
    /// # }
    /// ```
    pub fn protocol_version(&self) -> rustls::ProtocolVersion {
        self.session.suite.version()
    }

    /// The negotiated cipher suite.
    ///
    /// ```no_run
    /// # fn f(stream: &mitosis::tls::TlsStream) {
    /// println!("{:?}", stream.cipher_suite());
    /// # }
    /// ```
    pub fn cipher_suite(&self) -> rustls::CipherSuite {
        self.session.suite.id()
    }
}

impl<S: Read + Write> TlsStream<S> {
    /// Replaces the sending keys with a TLS 1.3 KeyUpdate and asks the peer
    /// to replace its own, then writes it out (on a non-blocking socket, as
    /// much as the socket takes; [`wants_write`](Self::wants_write) says if
    /// some is left). TLS 1.2 has no KeyUpdate: the error is `Unsupported`.
    /// The stream also does this by itself when a key has sealed as many
    /// records as its cipher allows.
    ///
    /// ```no_run
    /// # fn f(stream: &mut mitosis::tls::TlsStream) -> std::io::Result<()> {
    /// stream.update_keys()?;
    /// # Ok(()) }
    /// ```
    pub fn update_keys(&mut self) -> io::Result<()> {
        self.writable()?;
        self.session
            .send_key_update(true)
            .map_err(|failure| failure.to_error())?;
        self.write_queued()
    }

    /// Ends the session with close_notify, and writes it out like
    /// [`update_keys`](Self::update_keys). Reading goes on until the peer's
    /// own close_notify (then `read` returns 0); writing is over.
    ///
    /// ```no_run
    /// # fn f(stream: &mut mitosis::tls::TlsStream) -> std::io::Result<()> {
    /// stream.close()?;
    /// # Ok(()) }
    /// ```
    pub fn close(&mut self) -> io::Result<()> {
        if let Some(failure) = &self.session.failure {
            return Err(failure.to_error());
        }
        self.session
            .send_close()
            .map_err(|failure| failure.to_error())?;
        self.write_queued()
    }

    /// Writes out what is sealed; what a non-blocking socket does not take
    /// now stays queued, which [`wants_write`](Self::wants_write) reports.
    fn write_queued(&mut self) -> io::Result<()> {
        match self.write_out() {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// An error if nothing more may be written.
    fn writable(&self) -> io::Result<()> {
        if let Some(failure) = &self.session.failure {
            return Err(failure.to_error());
        }
        if self.session.sent_close {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "this side has sent close_notify: nothing more can be written",
            ));
        }
        Ok(())
    }

    /// Writes sealed records until none are left or the socket would block.
    fn write_out(&mut self) -> io::Result<()> {
        while !self.session.outgoing.is_empty() {
            match self.socket.write(&self.session.outgoing) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.session.outgoing.drain(..n);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads until there is plaintext, the peer's close_notify, or an error.
    fn fill(&mut self) -> io::Result<()> {
        while self.session.unread().is_empty() {
            if let Some(error) = self.session.failure.as_ref().map(Failure::to_error) {
                // The peer hears why, as far as it still listens.
                let _ = self.write_out();
                return Err(error);
            }
            if self.session.received_close {
                return Ok(());
            }
            let start = self.session.incoming.len();
            self.session.incoming.resize(start + READ_CHUNK, 0);
            let read = self.socket.read(&mut self.session.incoming[start..]);
            self.session
                .incoming
                .truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(truncated(start)),
                Ok(_) => self.session.open_records(),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
            // Answer a KeyUpdate the peer asked for now, not with the next
            // write, which may never come; a full socket keeps it queued.
            self.write_queued()?;
        }
        Ok(())
    }
}

/// How much one read from the socket asks for: two full records.
const READ_CHUNK: usize = 2 * (16 * 1024 + 256);

/// The socket's end of file without close_notify.
fn truncated(partial: usize) -> io::Error {
    let message = if partial == 0 {
        "the TLS peer closed the connection without close_notify: what it sent may be cut short"
    } else {
        "the TLS peer closed the connection in the middle of a record"
    };
    io::Error::new(io::ErrorKind::UnexpectedEof, message)
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<S: Read + Write> BufRead for TlsStream<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill()?;
        Ok(self.session.unread())
    }

    fn consume(&mut self, amount: usize) {
        self.session.consume(amount);
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writable()?;
        // What was sealed before goes first; on a full non-blocking socket
        // this is where the program hears to wait.
        self.write_out()?;
        let n = buf.len().min(MAX_WRITE);
        self.session
            .seal_data(&buf[..n])
            .map_err(|failure| failure.to_error())?;
        self.write_queued()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.socket.flush()
    }
}
