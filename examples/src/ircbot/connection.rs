//! The bot's connection to its server: plain TCP, or TLS. Either crosses
//! an upgrade whole: the TLS session with its keys and sequence numbers,
//! and, in both, the bytes the server has sent that the bot has not read.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use mitosis::Handover;
use mitosis::tls::TlsStream;

#[derive(Handover)]
#[handover(name = "ircbot::Connection", version = 1)]
pub(crate) enum Connection {
    Plain(BufReader<TcpStream>),
    /// TlsStream buffers the plaintext it has decrypted itself, so it
    /// needs no BufReader around it. Boxed: it holds a session's buffers.
    Tls(Box<TlsStream>),
}

impl Connection {
    /// The socket, to poll; never to write to (a TLS record would break).
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Connection::Plain(reader) => reader.get_ref(),
            Connection::Tls(stream) => stream.get_ref(),
        }
    }

    /// What the server has sent that the bot has not read yet, as text.
    pub(crate) fn buffer(&self) -> &[u8] {
        match self {
            Connection::Plain(reader) => reader.buffer(),
            Connection::Tls(stream) => stream.buffer(),
        }
    }

    /// Sends `bytes` whole. The socket blocks, so this returns once they
    /// are all with the kernel, encrypted or not.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Connection::Plain(reader) => reader.get_mut().write_all(bytes),
            Connection::Tls(stream) => {
                stream.write_all(bytes)?;
                stream.flush()
            }
        }
    }

    /// The TLS protocol and cipher suite, for the log; `None` in plain TCP.
    pub(crate) fn tls(&self) -> Option<String> {
        match self {
            Connection::Plain(_) => None,
            Connection::Tls(stream) => Some(crate::tls::describe(
                stream.protocol_version(),
                stream.cipher_suite(),
            )),
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(reader) => reader.read(buf),
            Connection::Tls(stream) => stream.read(buf),
        }
    }
}

impl BufRead for Connection {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Connection::Plain(reader) => reader.fill_buf(),
            Connection::Tls(stream) => stream.fill_buf(),
        }
    }

    fn consume(&mut self, amount: usize) {
        match self {
            Connection::Plain(reader) => reader.consume(amount),
            Connection::Tls(stream) => stream.consume(amount),
        }
    }
}
