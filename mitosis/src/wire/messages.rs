//! One type per message, in PROTOCOL.md's order: the two preambles (step 3),
//! then the frames. Each frame type knows its kind and lays out its own
//! payload; DATA and BYTES carry raw chunks of the state, with no layout of
//! their own, so they have no type here (`old::frames::DataFrames` writes them).

use super::{Fields, Kind, MAGIC, Payload, Reason, TOKEN_LEN};
use crate::error::{Error, Step};
use crate::schema::{Schema, Shape};

/// A frame's payload, written and read the same way by both sides.
pub(crate) trait Message: Sized {
    /// The frame kind that carries it.
    const KIND: Kind;

    fn write(&self, out: &mut Payload);

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error>;

    /// The payload's bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Payload::default();
        self.write(&mut out);
        debug_assert!(out.0.len() <= Self::KIND.max_payload() as usize);
        out.0
    }

    /// Reads a whole payload, refusing a short one or trailing bytes.
    fn decode(step: Step, payload: &[u8]) -> Result<Self, Error> {
        let mut fields = Fields::new(step, Self::KIND.name(), payload);
        let message = Self::read(&mut fields)?;
        fields.end()?;
        Ok(message)
    }
}

/// HELLO, the new process's preamble (step 3): magic, the lowest and highest
/// protocol version it speaks, and its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) versions: (u16, u16),
    pub(crate) token: [u8; TOKEN_LEN],
}

impl Hello {
    pub(crate) const LEN: usize = 8 + 2 + 2 + TOKEN_LEN;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut hello = [0u8; Self::LEN];
        hello[..8].copy_from_slice(&MAGIC);
        hello[8..10].copy_from_slice(&self.versions.0.to_le_bytes());
        hello[10..12].copy_from_slice(&self.versions.1.to_le_bytes());
        hello[12..].copy_from_slice(&self.token);
        hello
    }

    /// `None` if the bytes do not start with the magic.
    pub(crate) fn decode(bytes: &[u8; Self::LEN]) -> Option<Hello> {
        if bytes[..8] != MAGIC {
            return None;
        }
        Some(Hello {
            versions: (
                u16::from_le_bytes([bytes[8], bytes[9]]),
                u16::from_le_bytes([bytes[10], bytes[11]]),
            ),
            token: bytes[12..].try_into().expect("32 bytes"),
        })
    }
}

/// WELCOME, the old process's preamble (step 3): magic, the version it
/// chose (0: none in common), the lowest and highest it speaks, its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Welcome {
    pub(crate) chosen: u16,
    pub(crate) versions: (u16, u16),
    pub(crate) token: [u8; TOKEN_LEN],
}

impl Welcome {
    pub(crate) const LEN: usize = 8 + 2 + 2 + 2 + TOKEN_LEN;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut welcome = [0u8; Self::LEN];
        welcome[..8].copy_from_slice(&MAGIC);
        welcome[8..10].copy_from_slice(&self.chosen.to_le_bytes());
        welcome[10..12].copy_from_slice(&self.versions.0.to_le_bytes());
        welcome[12..14].copy_from_slice(&self.versions.1.to_le_bytes());
        welcome[14..].copy_from_slice(&self.token);
        welcome
    }

    pub(crate) fn decode(bytes: &[u8; Self::LEN]) -> Result<Welcome, Error> {
        if bytes[..8] != MAGIC {
            return Err(Error::protocol(
                Step::Hello,
                "the old process's preamble has the wrong magic bytes",
            ));
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        Ok(Welcome {
            chosen: u16_at(8),
            versions: (u16_at(10), u16_at(12)),
            token: bytes[14..].try_into().expect("32 bytes"),
        })
    }
}

/// KEY, the first message on the fd channel (old → new, step 2), sent only
/// once the kernel has shown (`SO_PEERCRED`) that the new process is the
/// one connected: magic, the secret, the transfer timeout in milliseconds
/// (`u64::MAX`: none), and the handover's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) secret: [u8; 2 * TOKEN_LEN],
    pub(crate) timeout_ms: u64,
    pub(crate) max_state_bytes: u64,
    pub(crate) max_fds: u64,
}

impl Key {
    pub(crate) const LEN: usize = 8 + 2 * TOKEN_LEN + 8 + 8 + 8;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut key = [0u8; Self::LEN];
        key[..8].copy_from_slice(&MAGIC);
        key[8..72].copy_from_slice(&self.secret);
        key[72..80].copy_from_slice(&self.timeout_ms.to_le_bytes());
        key[80..88].copy_from_slice(&self.max_state_bytes.to_le_bytes());
        key[88..].copy_from_slice(&self.max_fds.to_le_bytes());
        key
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Key, Error> {
        let bytes = <&[u8; Self::LEN]>::try_from(bytes).map_err(|_| {
            Error::protocol(
                Step::Connect,
                format!(
                    "the fd channel's KEY is {} bytes, not {}; the old process speaks another \
                     protocol",
                    bytes.len(),
                    Self::LEN
                ),
            )
        })?;
        if bytes[..8] != MAGIC {
            return Err(Error::protocol(
                Step::Connect,
                "the fd channel's KEY has the wrong magic bytes",
            ));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(Key {
            secret: bytes[8..72].try_into().expect("64 bytes"),
            timeout_ms: u64_at(72),
            max_state_bytes: u64_at(80),
            max_fds: u64_at(88),
        })
    }
}

/// ARRIVAL, the new process's message on the fd channel (new → old, step
/// 2), right after KEY: magic, then the local port of the TCP connection it
/// is about to open, so that the old process can close every other
/// connection to the handover port at once, without reading a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    pub(crate) port: u16,
}

impl Arrival {
    pub(crate) const LEN: usize = 8 + 2;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut arrival = [0u8; Self::LEN];
        arrival[..8].copy_from_slice(&MAGIC);
        arrival[8..].copy_from_slice(&self.port.to_le_bytes());
        arrival
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Arrival, Error> {
        match <&[u8; Self::LEN]>::try_from(bytes) {
            Ok(bytes) if bytes[..8] == MAGIC => Ok(Arrival {
                port: u16::from_le_bytes([bytes[8], bytes[9]]),
            }),
            _ => Err(Error::protocol(
                Step::Connect,
                format!(
                    "the new process's ARRIVAL on the fd channel is not {} bytes starting with \
                     the magic",
                    Self::LEN
                ),
            )),
        }
    }
}

/// OFFER (new → old, step 4): the schemas the new process accepts, its own
/// first: a count (u16), then each schema; then a description of its own
/// state's shape, so that the old process can name what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) accepted: Vec<Schema>,
    pub(crate) description: Option<Shape>,
}

impl Message for Offer {
    const KIND: Kind = Kind::Offer;

    fn write(&self, out: &mut Payload) {
        out.u16(self.accepted.len() as u16);
        for schema in &self.accepted {
            out.schema(schema);
        }
        out.description(self.description.as_ref());
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        let count = fields.u16()?;
        let accepted = (0..count)
            .map(|_| fields.schema())
            .collect::<Result<_, _>>()?;
        Ok(Offer {
            accepted,
            description: fields.description()?,
        })
    }
}

/// STATE (old → new, step 4): the schema of the state that follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) schema: Schema,
}

impl Message for State {
    const KIND: Kind = Kind::State;

    fn write(&self, out: &mut Payload) {
        out.schema(&self.schema);
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(State {
            schema: fields.schema()?,
        })
    }
}

/// LINEAGE (old → new, step 4, protocol version 3), right behind STATE:
/// the new process's generation, the binary path its later upgrades run,
/// and the one its previous build's upgrades ran (empty: the path it was
/// started from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lineage {
    pub(crate) generation: u64,
    pub(crate) binary: std::path::PathBuf,
    pub(crate) previous_binary: std::path::PathBuf,
}

impl Message for Lineage {
    const KIND: Kind = Kind::Lineage;

    fn write(&self, out: &mut Payload) {
        out.u64(self.generation)
            .path(&self.binary)
            .path(&self.previous_binary);
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(Lineage {
            generation: fields.u64()?,
            binary: fields.path()?,
            previous_binary: fields.path()?,
        })
    }
}

/// REJECT (old → new, step 4 or 6): why the state will not come, the
/// schema the old process holds, the old process's error, and (for a
/// schema mismatch) a description of its state's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) reason: Reason,
    pub(crate) schema: Schema,
    pub(crate) message: String,
    pub(crate) description: Option<Shape>,
}

impl Message for Reject {
    const KIND: Kind = Kind::Reject;

    fn write(&self, out: &mut Payload) {
        out.u8(self.reason as u8)
            .schema(&self.schema)
            .str(&self.message)
            .description(self.description.as_ref());
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(Reject {
            reason: fields.reason()?,
            schema: fields.schema()?,
            message: fields.str()?,
            description: fields.description()?,
        })
    }
}

/// BYTES_START (old → new, step 6): the size of the out-of-line buffer whose
/// BYTES frames follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BytesStart {
    pub(crate) size: u64,
}

impl Message for BytesStart {
    const KIND: Kind = Kind::BytesStart;

    fn write(&self, out: &mut Payload) {
        out.u64(self.size);
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(BytesStart {
            size: fields.u64()?,
        })
    }
}

/// PIPE, the old process's message on the fd channel in step 6 (protocol
/// version 2), sent once, before the first BYTES_PIPED frame: the magic,
/// with the read end of the pipe that the large byte buffers come through
/// as its one `SCM_RIGHTS` fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pipe;

impl Pipe {
    pub(crate) const LEN: usize = 8;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        MAGIC
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Pipe, Error> {
        if bytes == MAGIC {
            return Ok(Pipe);
        }
        Err(Error::protocol(
            Step::State,
            format!(
                "the old process's PIPE on the fd channel is {} bytes, not the {}-byte magic",
                bytes.len(),
                Self::LEN
            ),
        ))
    }
}

/// BYTES_PIPED (old → new, step 6, protocol version 2): the size of the
/// out-of-line buffer whose bytes follow through the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BytesPiped {
    pub(crate) size: u64,
}

impl Message for BytesPiped {
    const KIND: Kind = Kind::BytesPiped;

    fn write(&self, out: &mut Payload) {
        out.u64(self.size);
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(BytesPiped {
            size: fields.u64()?,
        })
    }
}

/// END (old → new, step 6): what the state's frames added up to, and how
/// many fds follow in step 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct End {
    pub(crate) stream_bytes: u64,
    pub(crate) out_of_line_bytes: u64,
    pub(crate) fds: u32,
}

impl Message for End {
    const KIND: Kind = Kind::End;

    fn write(&self, out: &mut Payload) {
        out.u64(self.stream_bytes)
            .u64(self.out_of_line_bytes)
            .u32(self.fds);
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(End {
            stream_bytes: fields.u64()?,
            out_of_line_bytes: fields.u64()?,
            fds: fields.u32()?,
        })
    }
}

/// ABORT (new → old, step 8): why the new process gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Abort {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

impl Message for Abort {
    const KIND: Kind = Kind::Abort;

    fn write(&self, out: &mut Payload) {
        out.u8(self.reason as u8).str(&self.message);
    }

    fn read(fields: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(Abort {
            reason: fields.reason()?,
            message: fields.str()?,
        })
    }
}

macro_rules! empty_messages {
    ($($(#[$doc:meta])* $name:ident = $kind:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct $name;

        impl Message for $name {
            const KIND: Kind = Kind::$kind;

            fn write(&self, _: &mut Payload) {}

            fn read(_: &mut Fields<'_>) -> Result<Self, Error> {
                Ok($name)
            }
        }
    )*};
}

empty_messages! {
    /// READY (new → old, step 5, protocol version 2): the new process has
    /// set itself up and asks for the state.
    Ready = Ready;
    /// COMMIT (new → old, step 8): the state is decoded; the new process is
    /// ready to take over.
    Commit = Commit;
    /// ACK (old → new, step 9): the commit is acknowledged; the new process
    /// may take over.
    Ack = Ack;
    /// TAKEN (new → old, step 9): the new process owns the connections now.
    Taken = Taken;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(message: M) {
        let payload = message.encode();
        assert_eq!(M::decode(Step::State, &payload).unwrap(), message);
        if !payload.is_empty() {
            let short = M::decode(Step::State, &payload[..payload.len() - 1]).unwrap_err();
            assert!(short.to_string().contains("too short"), "{short}");
        }
        let mut long = payload.clone();
        long.push(0);
        let long = M::decode(Step::State, &long).unwrap_err();
        assert!(long.to_string().contains("trailing"), "{long}");
    }

    #[test]
    fn every_frame_round_trips_and_refuses_short_or_long_payloads() {
        let schema = Schema::new("a::State", 3);
        round_trip(Offer {
            accepted: vec![schema.clone(), Schema::new("a::StateV0", 0)],
            description: Some(Shape::Tuple(vec![Shape::U8, Shape::Str])),
        });
        round_trip(Offer {
            accepted: vec![schema.clone()],
            description: None,
        });
        round_trip(State {
            schema: schema.clone(),
        });
        round_trip(Reject {
            reason: Reason::Limit,
            schema,
            message: "héllo".into(),
            description: None,
        });
        round_trip(BytesStart { size: 1 << 40 });
        round_trip(Lineage {
            generation: 7,
            binary: std::ffi::OsStr::from_bytes(b"/opt/bot/\xffbot").into(),
            previous_binary: "".into(),
        });
        round_trip(BytesPiped { size: 1 << 30 });
        round_trip(End {
            stream_bytes: 7,
            out_of_line_bytes: 8,
            fds: 9,
        });
        round_trip(Abort {
            reason: Reason::Decode,
            message: "no".into(),
        });
        round_trip(Ready);
        round_trip(Commit);
        round_trip(Ack);
        round_trip(Taken);
    }

    #[test]
    fn an_unknown_reason_is_refused() {
        let mut payload = Abort {
            reason: Reason::Io,
            message: String::new(),
        }
        .encode();
        payload[0] = 99;
        let err = Abort::decode(Step::Commit, &payload).unwrap_err();
        assert!(err.to_string().contains("unknown reason 99"), "{err}");
    }

    #[test]
    fn key_round_trips_and_refuses_other_sizes() {
        let key = Key {
            secret: [3; 2 * TOKEN_LEN],
            timeout_ms: u64::MAX,
            max_state_bytes: 1 << 32,
            max_fds: 10,
        };
        let bytes = key.encode();
        assert_eq!(Key::decode(&bytes).unwrap(), key);
        assert!(Key::decode(&bytes[..Key::LEN - 1]).is_err());
        let mut bad = bytes;
        bad[0] = 0;
        assert!(Key::decode(&bad).is_err());
    }

    #[test]
    fn arrival_round_trips_and_refuses_anything_else() {
        let arrival = Arrival { port: 40_123 };
        assert_eq!(Arrival::decode(&arrival.encode()).unwrap(), arrival);
        assert!(Arrival::decode(&arrival.encode()[..9]).is_err());
        assert!(Arrival::decode(b"mitosis\x01\x02\x03").is_err());
    }

    #[test]
    fn pipe_is_the_magic_alone() {
        assert_eq!(Pipe::decode(&Pipe.encode()).unwrap(), Pipe);
        for bad in [&b"mitosis"[..], b"mitosis\0\0", b"Mitosis\0", b""] {
            let err = Pipe::decode(bad).unwrap_err();
            assert!(err.to_string().contains("PIPE"), "{err}");
        }
    }

    #[test]
    fn preambles_round_trip() {
        let hello = Hello {
            versions: (1, 2),
            token: [7; TOKEN_LEN],
        };
        assert_eq!(Hello::decode(&hello.encode()), Some(hello));
        let welcome = Welcome {
            chosen: 1,
            versions: (1, 1),
            token: [9; TOKEN_LEN],
        };
        assert_eq!(Welcome::decode(&welcome.encode()).unwrap(), welcome);
        let mut bad = welcome.encode();
        bad[0] = b'M';
        assert!(Welcome::decode(&bad).is_err());
    }
}
