//! How a [`TlsStream`] crosses: PROTOCOL.md, "A TLS stream".
//!
//! The old process writes its session as it stands between two reads or
//! writes of the program, and changes nothing: if the handover fails, it
//! goes on with the same keys and sequence numbers, and no record is lost
//! or sealed twice. The new process rebuilds the ciphers and touches the
//! socket only when the program reads or writes, after it has taken over.

use std::io::{self, Read, Write};

use rustls::{ProtocolVersion, Side};
use zeroize::Zeroizing;

use super::TlsStream;
use super::keys::{IV_LEN, Keys, Suite};
use super::record::{Failure, Session};
use crate::error::Error;
use crate::handover::{Decoder, Encoder, Handover, Shapes};
use crate::schema::{Schema, Shape};

/// The most bytes decode accepts in any of the session's buffers: far more
/// than a stream ever holds (two reads of the socket, or four records
/// sealed by one write), far less than a corrupt length could claim.
const MAX_BUFFERED: usize = 4 << 20;

/// A TLS stream crosses with its session and its socket. See the
/// [module docs](super).
///
/// ```
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<mitosis::tls::TlsStream<std::net::TcpStream>>();
/// ```
impl<S> Handover for TlsStream<S>
where
    S: Handover + Read + Write,
{
    const SCHEMA: Schema = Schema::nested("TlsStream", 1, [S::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        let bytes = || Shape::Bytes;
        Ok(Shape::Struct {
            name: "TlsStream".into(),
            fields: vec![
                ("version".into(), Shape::U16),
                ("suite".into(), Shape::U16),
                ("side".into(), Shape::U8),
                ("sent".into(), Shape::U64),
                ("received".into(), Shape::U64),
                ("keys".into(), Shape::Fd("secret".into())),
                ("incoming".into(), bytes()),
                ("unread".into(), bytes()),
                ("outgoing".into(), bytes()),
                ("handshake".into(), bytes()),
                ("received_close".into(), Shape::Bool),
                ("sent_close".into(), Shape::Bool),
                (
                    "failure".into(),
                    Shape::Option(Box::new(Shape::Tuple(vec![Shape::U8, Shape::Str]))),
                ),
                ("socket".into(), S::shape(shapes)?),
            ],
        })
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        let session = &self.session;
        if out.writes_state() {
            log::debug!(
                "mitosis: TLS: handing over a {:?} {:?} session at records {} sent and {} \
                 received, with {} bytes of a record not whole yet, {} unread, {} unwritten",
                session.suite.version(),
                session.suite.id(),
                session.tx.seq,
                session.rx.seq,
                session.incoming.len(),
                session.unread().len(),
                session.outgoing.len()
            );
        }
        out.value(&u16::from(session.suite.version()))?;
        out.value(&u16::from(session.suite.id()))?;
        out.value(&u8::from(session.side == Side::Server))?;
        out.value(&session.tx.seq)?;
        out.value(&session.rx.seq)?;
        out.secret(&key_material(session))?;
        out.bytes(&session.incoming)?;
        out.bytes(session.unread())?;
        out.bytes(&session.outgoing)?;
        out.bytes(&session.handshake)?;
        out.value(&session.received_close)?;
        out.value(&session.sent_close)?;
        let failure = session
            .failure
            .as_ref()
            .map(|failure| (kind_code(failure.kind), failure.message.as_str()));
        out.value(&failure)?;
        self.socket.encode(out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let version = ProtocolVersion::from(input.value::<u16>()?);
        let suite_id: u16 = input.value()?;
        let side = match input.value::<u8>()? {
            0 => Side::Client,
            1 => Side::Server,
            other => return Err(invalid(format!("side {other}"))),
        };
        let sent: u64 = input.value()?;
        let received: u64 = input.value()?;
        let material = Zeroizing::new(input.secret()?);
        let incoming = bounded(input.bytes()?, "incoming ciphertext")?;
        let unread = bounded(input.bytes()?, "unread plaintext")?;
        let outgoing = bounded(input.bytes()?, "unwritten ciphertext")?;
        let handshake = bounded(input.bytes()?, "handshake message")?;
        let received_close: bool = input.value()?;
        let sent_close: bool = input.value()?;
        let failure: Option<(u8, String)> = input.value()?;
        let socket = S::decode(input)?;

        if version != ProtocolVersion::TLSv1_2 && version != ProtocolVersion::TLSv1_3 {
            return Err(invalid(format!("protocol version {version:?}")));
        }
        let suite = Suite::named(suite_id, version).map_err(|detail| Error::Resume {
            detail: format!("a TLS session: {detail}"),
        })?;
        let (tx, rx) = split_key_material(&material, suite)?;
        let mut session = Session::new(suite, side, (tx, sent), (rx, received)).map_err(invalid)?;
        session.incoming = incoming;
        session.plaintext = unread;
        session.outgoing = outgoing;
        session.handshake = handshake;
        session.received_close = received_close;
        session.sent_close = sent_close;
        session.failure = failure.map(|(kind, message)| Failure {
            kind: code_kind(kind),
            message,
        });
        Ok(TlsStream { socket, session })
    }
}

/// Both directions' keys, IVs and (TLS 1.3) traffic secrets, in one
/// buffer that is wiped when dropped: sending, then receiving.
fn key_material(session: &Session) -> Zeroizing<Vec<u8>> {
    let mut material = Zeroizing::new(Vec::new());
    for keys in [&session.tx.keys, &session.rx.keys] {
        material.extend_from_slice(&keys.key);
        material.extend_from_slice(&keys.iv[..]);
        if let Some(secret) = &keys.secret {
            material.extend_from_slice(secret);
        }
    }
    material
}

/// The two directions' [`Keys`] from [`key_material`]'s buffer, whose
/// layout the suite determines.
fn split_key_material(material: &[u8], suite: Suite) -> Result<(Keys, Keys), Error> {
    let (key_len, secret_len) = (suite.key_len(), suite.secret_len());
    let one = key_len + IV_LEN + secret_len;
    if material.len() != 2 * one {
        return Err(invalid(format!(
            "{} bytes of keys for {:?}, which takes {}",
            material.len(),
            suite.id(),
            2 * one
        )));
    }
    let keys = |part: &[u8]| {
        let mut iv = Zeroizing::new([0; IV_LEN]);
        iv.copy_from_slice(&part[key_len..key_len + IV_LEN]);
        Keys {
            key: Zeroizing::new(part[..key_len].to_vec()),
            iv,
            secret: (secret_len > 0).then(|| Zeroizing::new(part[key_len + IV_LEN..].to_vec())),
        }
    };
    Ok((keys(&material[..one]), keys(&material[one..])))
}

fn bounded(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, Error> {
    if bytes.len() > MAX_BUFFERED {
        return Err(invalid(format!(
            "{} bytes of {what}, more than a stream ever holds",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn invalid(detail: String) -> Error {
    Error::Decode {
        detail: format!("a TLS stream's session is invalid: {detail}"),
    }
}

fn kind_code(kind: io::ErrorKind) -> u8 {
    match kind {
        io::ErrorKind::InvalidData => 1,
        io::ErrorKind::ConnectionAborted => 2,
        io::ErrorKind::Unsupported => 3,
        _ => 0,
    }
}

fn code_kind(code: u8) -> io::ErrorKind {
    match code {
        1 => io::ErrorKind::InvalidData,
        2 => io::ErrorKind::ConnectionAborted,
        3 => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    }
}
