//! The record layer of an established session: TLS 1.3's (RFC 8446,
//! section 5) and TLS 1.2's (RFC 5246, section 6.2), with the messages
//! that may follow a handshake (KeyUpdate, NewSessionTicket, HelloRequest)
//! and alerts.
//!
//! It keeps everything a session is between two reads or writes of the
//! program, so that all of it can cross a handover: each direction's keys
//! and sequence number, the start of a record read from the socket, the
//! plaintext the program has not read, the sealed records not yet written,
//! and whether each side has said close_notify.

use std::io;

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{AlertDescription, ContentType, HandshakeType, ProtocolVersion, Side};

use super::keys::{Keys, Suite};

/// The largest plaintext of one record (2^14).
pub(super) const MAX_FRAGMENT: usize = 16 * 1024;

/// The largest ciphertext of one record: 2^14 + 2048 in TLS 1.2; TLS 1.3
/// allows only 2^14 + 256.
pub(super) const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 2048;

/// A record's header: type, version and length.
pub(super) const HEADER: usize = 5;

/// The most plaintext sealed by one `write`: four full records.
pub(super) const MAX_WRITE: usize = 4 * MAX_FRAGMENT;

/// One direction's keys, sequence number and cipher.
pub(super) struct Direction<C: ?Sized> {
    pub(super) keys: Keys,
    pub(super) seq: u64,
    pub(super) cipher: Box<C>,
}

/// Why a session can no longer be used, as the program's reads and writes
/// report it.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub(super) kind: io::ErrorKind,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn to_error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }

    /// The peer broke the protocol.
    fn peer(message: String) -> Failure {
        Failure {
            kind: io::ErrorKind::InvalidData,
            message,
        }
    }
}

/// An established session.
pub(super) struct Session {
    pub(super) suite: Suite,
    pub(super) side: Side,
    pub(super) tx: Direction<dyn MessageEncrypter>,
    pub(super) rx: Direction<dyn MessageDecrypter>,
    /// Bytes read from the socket that are not a whole record yet.
    pub(super) incoming: Vec<u8>,
    /// Application data received; the program has read up to `read`.
    pub(super) plaintext: Vec<u8>,
    pub(super) read: usize,
    /// Sealed records not yet written to the socket.
    pub(super) outgoing: Vec<u8>,
    /// The start of a post-handshake message split across records.
    pub(super) handshake: Vec<u8>,
    pub(super) received_close: bool,
    pub(super) sent_close: bool,
    pub(super) failure: Option<Failure>,
}

impl Session {
    pub(super) fn new(
        suite: Suite,
        side: Side,
        tx: (Keys, u64),
        rx: (Keys, u64),
    ) -> Result<Session, String> {
        Ok(Session {
            suite,
            side,
            tx: Direction {
                cipher: tx.0.encrypter(suite)?,
                keys: tx.0,
                seq: tx.1,
            },
            rx: Direction {
                cipher: rx.0.decrypter(suite)?,
                keys: rx.0,
                seq: rx.1,
            },
            incoming: Vec::new(),
            plaintext: Vec::new(),
            read: 0,
            outgoing: Vec::new(),
            handshake: Vec::new(),
            received_close: false,
            sent_close: false,
            failure: None,
        })
    }

    fn is_tls13(&self) -> bool {
        matches!(self.suite, Suite::Tls13(_))
    }

    /// Plaintext received and not yet read.
    pub(super) fn unread(&self) -> &[u8] {
        &self.plaintext[self.read..]
    }

    pub(super) fn consume(&mut self, amount: usize) {
        self.read = (self.read + amount).min(self.plaintext.len());
        if self.read == self.plaintext.len() {
            self.plaintext.clear();
            self.read = 0;
        }
    }

    /// Seals `data` as application data, into records of at most 2^14
    /// bytes, behind whatever is queued already.
    pub(super) fn seal_data(&mut self, data: &[u8]) -> Result<(), Failure> {
        for fragment in data.chunks(MAX_FRAGMENT) {
            self.seal(ContentType::ApplicationData, fragment)?;
        }
        Ok(())
    }

    /// Seals one record. A TLS 1.3 key that has sealed as many records as
    /// the suite allows is replaced first, with a KeyUpdate.
    fn seal(&mut self, typ: ContentType, payload: &[u8]) -> Result<(), Failure> {
        if self.tx.seq >= self.suite.confidentiality_limit() {
            if self.is_tls13() && typ != ContentType::Handshake {
                self.send_key_update(false)?;
            } else if !self.is_tls13() {
                return Err(self.fail_locally(
                    "the session has sealed as many records as its TLS 1.2 key may; reconnect",
                ));
            }
        }
        let message = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let sealed = self
            .tx
            .cipher
            .encrypt(message, self.tx.seq)
            .map_err(|error| self.fail_locally(&format!("could not seal a TLS record: {error}")))?;
        self.tx.seq += 1;
        self.outgoing.extend_from_slice(&sealed.encode());
        Ok(())
    }

    /// Queues a TLS 1.3 KeyUpdate and moves to the next sending keys.
    pub(super) fn send_key_update(&mut self, request_update: bool) -> Result<(), Failure> {
        if !self.is_tls13() {
            return Err(Failure {
                kind: io::ErrorKind::Unsupported,
                message: "TLS 1.2 has no KeyUpdate".into(),
            });
        }
        let message = [
            u8::from(HandshakeType::KeyUpdate),
            0,
            0,
            1,
            u8::from(request_update),
        ];
        self.seal(ContentType::Handshake, &message)?;
        let next = self
            .tx
            .keys
            .next(self.suite)
            .and_then(|keys| Ok((keys.encrypter(self.suite)?, keys)))
            .map_err(|error| self.fail_locally(&format!("could not update the keys: {error}")))?;
        (self.tx.cipher, self.tx.keys) = next;
        self.tx.seq = 0;
        log::debug!("mitosis: TLS: sent a KeyUpdate (update requested: {request_update})");
        Ok(())
    }

    /// Queues close_notify: nothing more will be sent.
    pub(super) fn send_close(&mut self) -> Result<(), Failure> {
        if !self.sent_close {
            self.seal(
                ContentType::Alert,
                &[1, u8::from(AlertDescription::CloseNotify)],
            )?;
            self.sent_close = true;
        }
        Ok(())
    }

    /// A failure of this side, which the program hears of; the peer is not
    /// told, since nothing can be sealed for it any more.
    fn fail_locally(&mut self, message: &str) -> Failure {
        let failure = Failure {
            kind: io::ErrorKind::Other,
            message: message.into(),
        };
        self.failure = Some(failure.clone());
        failure
    }

    /// Fails the session for something the peer did: queues a fatal alert
    /// `alert` for it (best effort), and remembers why.
    fn fail_peer(&mut self, alert: AlertDescription, message: String) {
        let failure = Failure::peer(message);
        log::debug!("mitosis: TLS: {}", failure.message);
        if self.failure.is_none() && !self.sent_close {
            let _ = self.seal(ContentType::Alert, &[2, u8::from(alert)]);
            self.sent_close = true;
        }
        self.failure = Some(failure);
    }

    /// Opens every whole record in `incoming`, leaving the start of the
    /// next one there.
    pub(super) fn open_records(&mut self) {
        let mut start = 0;
        while self.failure.is_none() {
            let rest = &self.incoming[start..];
            if rest.len() < HEADER {
                break;
            }
            let typ = ContentType::from(rest[0]);
            let version = ProtocolVersion::from(u16::from_be_bytes([rest[1], rest[2]]));
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > MAX_CIPHERTEXT {
                self.fail_peer(
                    AlertDescription::RecordOverflow,
                    format!(
                        "the TLS peer sent a record of {len} bytes, more than TLS allows; \
                         the stream is corrupt or not TLS"
                    ),
                );
                break;
            }
            if rest.len() < HEADER + len {
                break;
            }
            let mut record = rest[HEADER..HEADER + len].to_vec();
            start += HEADER + len;
            self.open(typ, version, &mut record);
        }
        self.incoming.drain(..start);
    }

    fn open(&mut self, typ: ContentType, version: ProtocolVersion, payload: &mut [u8]) {
        if typ == ContentType::ChangeCipherSpec && self.is_tls13() {
            self.fail_peer(
                AlertDescription::UnexpectedMessage,
                "the TLS peer sent ChangeCipherSpec after the handshake".into(),
            );
            return;
        }
        let opaque = InboundOpaqueMessage::new(typ, version, payload);
        let plain = match self.rx.cipher.decrypt(opaque, self.rx.seq) {
            Ok(plain) => plain,
            Err(error) => {
                self.fail_peer(
                    AlertDescription::BadRecordMac,
                    format!(
                        "a TLS record from the peer did not decrypt ({error}): the stream was \
                         altered, or the two ends disagree on the keys"
                    ),
                );
                return;
            }
        };
        self.rx.seq += 1;
        let (typ, payload) = (plain.typ, plain.payload.to_vec());
        match typ {
            ContentType::ApplicationData if self.received_close => self.fail_peer(
                AlertDescription::UnexpectedMessage,
                "the TLS peer sent data after its close_notify".into(),
            ),
            ContentType::ApplicationData => {
                if !self.handshake.is_empty() {
                    self.fail_peer(
                        AlertDescription::UnexpectedMessage,
                        "the TLS peer interleaved data with a handshake message".into(),
                    );
                    return;
                }
                self.plaintext.extend_from_slice(&payload);
            }
            ContentType::Alert => self.alert(&payload),
            ContentType::Handshake => {
                self.handshake.extend_from_slice(&payload);
                self.handshake_messages();
            }
            other => self.fail_peer(
                AlertDescription::UnexpectedMessage,
                format!("the TLS peer sent a {other:?} record after the handshake"),
            ),
        }
    }

    fn alert(&mut self, payload: &[u8]) {
        let [level, description] = payload else {
            self.fail_peer(
                AlertDescription::DecodeError,
                format!("the TLS peer sent an alert of {} bytes", payload.len()),
            );
            return;
        };
        let description = AlertDescription::from(*description);
        if description == AlertDescription::CloseNotify {
            log::debug!("mitosis: TLS: the peer sent close_notify");
            self.received_close = true;
            return;
        }
        // TLS 1.2 has warnings, which carry on; in TLS 1.3 every alert but
        // close_notify and user_canceled ends the connection.
        let warning =
            *level == 1 && (!self.is_tls13() || description == AlertDescription::UserCanceled);
        if warning {
            log::debug!("mitosis: TLS: the peer warned {description:?}");
            return;
        }
        self.failure = Some(Failure {
            kind: io::ErrorKind::ConnectionAborted,
            message: format!("the TLS peer ended the connection with the alert {description:?}"),
        });
        // No reply to a fatal alert: the peer has closed its side.
        self.sent_close = true;
    }

    /// Handles the whole handshake messages gathered so far.
    fn handshake_messages(&mut self) {
        while self.failure.is_none() && self.handshake.len() >= 4 {
            let len =
                u32::from_be_bytes([0, self.handshake[1], self.handshake[2], self.handshake[3]])
                    as usize;
            if len > MAX_CIPHERTEXT * 4 {
                self.fail_peer(
                    AlertDescription::DecodeError,
                    format!("the TLS peer announced a handshake message of {len} bytes"),
                );
                return;
            }
            if self.handshake.len() < 4 + len {
                return;
            }
            let typ = HandshakeType::from(self.handshake[0]);
            let body: Vec<u8> = self.handshake[4..4 + len].to_vec();
            let last = self.handshake.len() == 4 + len;
            self.handshake.drain(..4 + len);
            self.handshake_message(typ, &body, last);
        }
    }

    fn handshake_message(&mut self, typ: HandshakeType, body: &[u8], last_in_record: bool) {
        match (typ, self.is_tls13(), self.side) {
            (HandshakeType::KeyUpdate, true, _) => self.key_update(body, last_in_record),
            // A ticket to resume the session with a new connection later:
            // such a connection starts with a full handshake instead.
            (HandshakeType::NewSessionTicket, true, Side::Client) => {
                log::debug!("mitosis: TLS: a session ticket, not kept, arrived");
            }
            // A server's request to renegotiate, which rustls refuses too.
            (HandshakeType::HelloRequest, false, Side::Client) if body.is_empty() => {
                let _ = self.seal(
                    ContentType::Alert,
                    &[1, u8::from(AlertDescription::NoRenegotiation)],
                );
            }
            (typ, _, _) => self.fail_peer(
                AlertDescription::UnexpectedMessage,
                format!("the TLS peer sent {typ:?} after the handshake, which is not supported"),
            ),
        }
    }

    /// The peer's KeyUpdate: its next keys open what follows, and an
    /// update it asks for is answered before anything else is sent.
    fn key_update(&mut self, body: &[u8], last_in_record: bool) {
        let request_update = match body {
            [0] => false,
            [1] => true,
            _ => {
                self.fail_peer(
                    AlertDescription::DecodeError,
                    "the TLS peer sent a malformed KeyUpdate".into(),
                );
                return;
            }
        };
        // RFC 8446, section 5.1: a key change ends its record.
        if !last_in_record {
            self.fail_peer(
                AlertDescription::UnexpectedMessage,
                "the TLS peer sent a KeyUpdate that does not end its record".into(),
            );
            return;
        }
        let next = self
            .rx
            .keys
            .next(self.suite)
            .and_then(|keys| Ok((keys.decrypter(self.suite)?, keys)));
        match next {
            Ok((cipher, keys)) => {
                (self.rx.cipher, self.rx.keys) = (cipher, keys);
                self.rx.seq = 0;
                log::debug!("mitosis: TLS: the peer updated its keys");
            }
            Err(error) => {
                self.fail_locally(&format!("could not follow the peer's KeyUpdate: {error}"));
                return;
            }
        }
        if request_update && !self.sent_close {
            let _ = self.send_key_update(false);
        }
    }
}
