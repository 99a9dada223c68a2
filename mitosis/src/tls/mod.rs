//! TLS connections that cross a handover with their session (the `tls`
//! feature).
//!
//! SKELETON: the API is fixed, the bodies come next.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::ServerName;

/// A TLS connection over `S` that crosses a handover with its session.
pub struct TlsStream<S = TcpStream> {
    socket: S,
}

impl<S: Read + Write + AsFd> TlsStream<S> {
    /// Connects as a client: runs the handshake over `socket`.
    pub fn connect(
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        socket: S,
    ) -> io::Result<TlsStream<S>> {
        let _ = (config, server_name, socket);
        todo!()
    }

    /// Accepts as a server: runs the handshake over `socket`.
    pub fn accept(config: Arc<rustls::ServerConfig>, socket: S) -> io::Result<TlsStream<S>> {
        let _ = (config, socket);
        todo!()
    }
}

impl<S> TlsStream<S> {
    /// The socket underneath.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }

    /// Plaintext received and not yet read.
    pub fn buffer(&self) -> &[u8] {
        todo!()
    }

    /// Whether encrypted bytes wait to be written (poll for writable).
    pub fn wants_write(&self) -> bool {
        todo!()
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> rustls::ProtocolVersion {
        todo!()
    }

    /// The negotiated cipher suite.
    pub fn cipher_suite(&self) -> rustls::CipherSuite {
        todo!()
    }
}

impl<S: Read + Write> TlsStream<S> {
    /// Sends a TLS 1.3 KeyUpdate, asking the peer to update its keys too.
    pub fn update_keys(&mut self) -> io::Result<()> {
        todo!()
    }

    /// Sends close_notify and flushes.
    pub fn close(&mut self) -> io::Result<()> {
        todo!()
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
}

impl<S: Read + Write> BufRead for TlsStream<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        todo!()
    }
    fn consume(&mut self, amt: usize) {
        let _ = amt;
        todo!()
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
    fn flush(&mut self) -> io::Result<()> {
        todo!()
    }
}

impl<S> crate::Handover for TlsStream<S>
where
    S: crate::Handover + Read + Write,
{
    const SCHEMA: crate::Schema = crate::Schema::nested("TlsStream", 1, [S::SCHEMA]);
    fn encode<'a>(&'a self, out: &mut crate::Encoder<'a>) -> Result<(), crate::Error> {
        let _ = out;
        todo!()
    }
    fn decode(input: &mut crate::Decoder<'_>) -> Result<Self, crate::Error> {
        let _ = input;
        todo!()
    }
}
