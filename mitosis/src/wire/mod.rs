//! The bytes on the TCP connection, as PROTOCOL.md lays them out: the two
//! preambles, the frame header, and one type per frame kind.
//!
//! Both sides build and read every message through these types, so the
//! layout lives here once, and the property tests and fuzz targets reach
//! each decoder exactly as the handover does.

pub(crate) mod handshake;
mod messages;
mod shape;

pub(crate) use messages::{
    Abort, Ack, Arrival, BytesPiped, BytesStart, Commit, End, Hello, Key, Lineage, Message, Offer,
    Pipe, Ready, Reject, State, Taken, Welcome,
};

use crate::error::{Error, Step};
use crate::schema::{Schema, Shape};

/// The first eight bytes each side sends.
pub(crate) const MAGIC: [u8; 8] = *b"mitosis\0";

/// The protocol versions this build speaks: 2 adds READY (step 5), so that
/// the new process sets itself up while the old one still serves, and the
/// pipe for large byte buffers (step 6). With a peer that speaks only 1
/// there is no READY, the state follows STATE, and every byte crosses over
/// TCP. 3 adds LINEAGE (step 4): the new process's generation and the
/// binary path it upgrades from.
pub(crate) const VERSIONS: (u16, u16) = (1, 3);

/// The first version with READY.
pub(crate) const READY_VERSION: u16 = 2;

/// The first version whose large byte buffers may come through a pipe
/// (PIPE, BYTES_PIPED).
pub(crate) const PIPE_VERSION: u16 = 2;

/// The first version with LINEAGE.
pub(crate) const LINEAGE_VERSION: u16 = 3;

/// Length of the token each side proves the secret with.
pub(crate) const TOKEN_LEN: usize = 32;

/// Frame header: kind (1 byte), payload length (u32, little-endian).
pub(crate) const HEADER_LEN: usize = 5;

/// Largest payload of any frame but DATA and BYTES.
pub(crate) const MAX_CONTROL_PAYLOAD: u32 = 64 * 1024;

/// Largest payload of one DATA or BYTES frame.
pub(crate) const MAX_DATA_PAYLOAD: u32 = 1024 * 1024;

/// The frame kinds of protocol versions 1 to 3 (READY and BYTES_PIPED are
/// version 2's, LINEAGE version 3's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// new → old: the schemas the new process accepts.
    Offer = 1,
    /// old → new: the schema of the state that follows.
    State = 2,
    /// old → new: a chunk of the encoded state.
    Data = 3,
    /// old → new: the state's total length and fd count.
    End = 4,
    /// new → old: the state is decoded; the new process is ready.
    Commit = 5,
    /// old → new: the commit is acknowledged; the new process may take over.
    Ack = 6,
    /// old → new: the old process refuses to send its state.
    Reject = 7,
    /// new → old: the new process gives up.
    Abort = 8,
    /// old → new: an out-of-line byte buffer of this many bytes follows.
    BytesStart = 9,
    /// old → new: a chunk of an out-of-line byte buffer.
    Bytes = 10,
    /// new → old: the new process has the connections now.
    Taken = 11,
    /// new → old: the new process is set up and asks for the state.
    Ready = 12,
    /// old → new: an out-of-line byte buffer of this many bytes follows
    /// through the pipe.
    BytesPiped = 13,
    /// old → new: the new process's generation, and the binary path it
    /// upgrades from.
    Lineage = 14,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Offer,
            2 => Kind::State,
            3 => Kind::Data,
            4 => Kind::End,
            5 => Kind::Commit,
            6 => Kind::Ack,
            7 => Kind::Reject,
            8 => Kind::Abort,
            9 => Kind::BytesStart,
            10 => Kind::Bytes,
            11 => Kind::Taken,
            12 => Kind::Ready,
            13 => Kind::BytesPiped,
            14 => Kind::Lineage,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Offer => "OFFER",
            Kind::State => "STATE",
            Kind::Data => "DATA",
            Kind::End => "END",
            Kind::Commit => "COMMIT",
            Kind::Ack => "ACK",
            Kind::Reject => "REJECT",
            Kind::Abort => "ABORT",
            Kind::BytesStart => "BYTES_START",
            Kind::Bytes => "BYTES",
            Kind::Taken => "TAKEN",
            Kind::Ready => "READY",
            Kind::BytesPiped => "BYTES_PIPED",
            Kind::Lineage => "LINEAGE",
        }
    }

    pub(crate) fn max_payload(self) -> u32 {
        match self {
            Kind::Data | Kind::Bytes => MAX_DATA_PAYLOAD,
            _ => MAX_CONTROL_PAYLOAD,
        }
    }
}

/// Why a REJECT or ABORT was sent (its first payload byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    /// The offered and the held schema do not match.
    Schema = 1,
    /// A size or count limit was exceeded.
    Limit = 2,
    /// The state did not decode.
    Decode = 3,
    /// The other side broke the protocol.
    Protocol = 4,
    /// An I/O error.
    Io = 5,
}

impl Reason {
    pub(crate) fn of(error: &Error) -> Reason {
        match error {
            Error::SchemaMismatch { .. } => Reason::Schema,
            Error::FrameTooLarge { .. }
            | Error::LimitExceeded { .. }
            | Error::UnreadBytes { .. } => Reason::Limit,
            Error::Decode { .. } => Reason::Decode,
            Error::Io { .. } | Error::PeerGone { .. } | Error::Timeout { .. } => Reason::Io,
            _ => Reason::Protocol,
        }
    }

    fn from_byte(byte: u8) -> Option<Reason> {
        Some(match byte {
            1 => Reason::Schema,
            2 => Reason::Limit,
            3 => Reason::Decode,
            4 => Reason::Protocol,
            5 => Reason::Io,
            _ => return None,
        })
    }
}

/// A frame header: the kind, then the payload's length.
pub(crate) fn header(kind: Kind, len: u32) -> [u8; HEADER_LEN] {
    let len = len.to_le_bytes();
    [kind as u8, len[0], len[1], len[2], len[3]]
}

/// Reads a frame header: the kind must be one of `expected`, and the length
/// within that kind's maximum, so that the payload can be allocated. Only a
/// refused header allocates, for the error's text, and only when the kind
/// is the problem.
pub(crate) fn decode_header(
    step: Step,
    header: [u8; HEADER_LEN],
    expected: &[Kind],
) -> Result<(Kind, u32), Error> {
    let [kind, len @ ..] = header;
    let kind = Kind::from_byte(kind)
        .ok_or_else(|| Error::protocol(step, format!("unknown frame kind {kind:#04x}")))?;
    if !expected.contains(&kind) {
        let names: Vec<_> = expected.iter().map(|k| k.name()).collect();
        return Err(Error::protocol(
            step,
            format!("expected {}, got {}", names.join(" or "), kind.name()),
        ));
    }
    let len = u32::from_le_bytes(len);
    if len > kind.max_payload() {
        return Err(Error::FrameTooLarge {
            step,
            kind: kind.name(),
            len: len.into(),
            max: kind.max_payload().into(),
        });
    }
    Ok((kind, len))
}

/// Builds a payload (little-endian, fixed layout).
#[derive(Default)]
pub(crate) struct Payload(Vec<u8>);

/// The longest string a payload carries, in bytes; longer ones are cut at a
/// character boundary.
const MAX_STRING: usize = 4096;

impl Payload {
    fn u8(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }

    fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u64(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.0.extend_from_slice(value);
        self
    }

    /// A UTF-8 string: u16 length, then the bytes.
    fn str(&mut self, value: &str) -> &mut Self {
        let mut end = value.len().min(MAX_STRING);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16).bytes(&value.as_bytes()[..end])
    }

    /// A path: u16 length, then its bytes, which need not be UTF-8. A
    /// path longer than a string may be is not sent at all (length 0).
    fn path(&mut self, value: &std::path::Path) -> &mut Self {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_os_str().as_bytes();
        let bytes = if bytes.len() > MAX_STRING {
            &[][..]
        } else {
            bytes
        };
        self.u16(bytes.len() as u16).bytes(bytes)
    }

    /// A state's description: 0, or 1 and the description (`shape.rs`);
    /// 0 too for one past the description's bounds.
    fn description(&mut self, shape: Option<&Shape>) -> &mut Self {
        match shape.and_then(shape::describe) {
            Some(bytes) => self.u8(1).bytes(&bytes),
            None => self.u8(0),
        }
    }

    /// A schema: version (u32), fingerprint (u64), name (string).
    fn schema(&mut self, schema: &Schema) -> &mut Self {
        self.u32(schema.version)
            .u64(schema.fingerprint)
            .str(&schema.name)
    }
}

/// Reads a payload, refusing anything short or left over.
pub(crate) struct Fields<'p> {
    rest: &'p [u8],
    step: Step,
    kind: &'static str,
}

impl<'p> Fields<'p> {
    fn new(step: Step, kind: &'static str, payload: &'p [u8]) -> Self {
        Fields {
            rest: payload,
            step,
            kind,
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        if self.rest.len() < N {
            return Err(self.short());
        }
        let (head, rest) = self.rest.split_at(N);
        self.rest = rest;
        Ok(head.try_into().expect("split_at gave N bytes"))
    }

    fn short(&self) -> Error {
        Error::protocol(self.step, format!("{} frame is too short", self.kind))
    }

    fn u8(&mut self) -> Result<u8, Error> {
        self.take::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, Error> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, Error> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Error> {
        self.take().map(u64::from_le_bytes)
    }

    fn reason(&mut self) -> Result<Reason, Error> {
        let byte = self.u8()?;
        Reason::from_byte(byte).ok_or_else(|| {
            Error::protocol(
                self.step,
                format!("{} frame has unknown reason {byte}", self.kind),
            )
        })
    }

    fn str(&mut self) -> Result<String, Error> {
        let len = self.u16()? as usize;
        if self.rest.len() < len {
            return Err(self.short());
        }
        let (text, rest) = self.rest.split_at(len);
        self.rest = rest;
        String::from_utf8(text.to_vec()).map_err(|_| {
            Error::protocol(
                self.step,
                format!("{} frame holds invalid UTF-8", self.kind),
            )
        })
    }

    fn path(&mut self) -> Result<std::path::PathBuf, Error> {
        use std::os::unix::ffi::OsStrExt;
        let len = self.u16()? as usize;
        if self.rest.len() < len {
            return Err(self.short());
        }
        let (path, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(std::ffi::OsStr::from_bytes(path).into())
    }

    fn description(&mut self) -> Result<Option<Shape>, Error> {
        match self.u8()? {
            0 => Ok(None),
            1 => shape::read(self).map(Some),
            flag => Err(Error::protocol(
                self.step,
                format!("{} frame has an unknown description flag {flag}", self.kind),
            )),
        }
    }

    fn schema(&mut self) -> Result<Schema, Error> {
        let version = self.u32()?;
        let fingerprint = self.u64()?;
        let name = self.str()?;
        Ok(Schema {
            name: name.into(),
            version,
            fingerprint,
        })
    }

    /// Checks that the whole payload was read.
    fn end(self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::protocol(
                self.step,
                format!(
                    "{} frame has {} unexpected trailing bytes",
                    self.kind,
                    self.rest.len()
                ),
            ))
        }
    }
}
