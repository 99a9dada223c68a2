//! Hooks for mitosis's own tests and fuzz targets, with the `test-hooks`
//! feature: a handover in memory, and every decoder of the wire on plain
//! bytes, each reached through the same types the handover uses. Not public
//! API: the names and signatures here change with the tests.

use std::os::fd::OwnedFd;

use crate::error::{Error, Step};
use crate::handover::Shapes;
use crate::handover::{Decoder, Encoder, Handover, InMemory};
use crate::schema::Schema;

/// Encodes `value` in memory and decodes it as `T` from `value`'s schema,
/// passing its fds as duplicates, the way the fd channel would: a handover
/// without the processes.
pub fn round_trip<S: Handover, T: Handover>(value: &S) -> Result<T, Error> {
    let encoded = encode_state(value)?;
    let prepared = Prepared::of::<T>()?.at(Schema::of::<S>()?.fingerprint);
    decode_prepared(&encoded.stream, encoded.out_of_line, encoded.fds, prepared)
}

/// An encoded state, as the new process receives it.
pub struct EncodedState {
    /// The stream (all DATA payloads).
    pub stream: Vec<u8>,
    /// The out-of-line buffers, in order.
    pub out_of_line: Vec<Vec<u8>>,
    /// Duplicates of the side table's fds, in order.
    pub fds: Vec<OwnedFd>,
}

/// Encodes `value` as the old process would, in memory.
pub fn encode_state<S: Handover>(value: &S) -> Result<EncodedState, Error> {
    let mut sink = InMemory::default();
    let encoded = Encoder::encode(&mut sink, value)?;
    let fds = encoded
        .fds
        .iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::io(Step::Fds))?;
    drop(encoded);
    Ok(EncodedState {
        stream: sink.stream,
        out_of_line: sink.out_of_line,
        fds,
    })
}

/// Decodes a state of `S`'s own schema from what the new process received
/// (step 8), checking that every byte, buffer and fd is used.
pub fn decode_state<S: Handover>(
    stream: &[u8],
    out_of_line: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
) -> Result<S, Error> {
    decode_prepared(stream, out_of_line, fds, Prepared::of::<S>()?)
}

/// Decodes a state of the schema whose fingerprint is `fingerprint`, as
/// [`decode_state`] does for `S`'s own.
pub fn decode_state_from<S: Handover>(
    stream: &[u8],
    out_of_line: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
    fingerprint: u64,
) -> Result<S, Error> {
    decode_prepared(
        stream,
        out_of_line,
        fds,
        Prepared::of::<S>()?.at(fingerprint),
    )
}

/// What the new process works out before the state arrives: the schema it
/// decodes from, and the shapes of its own types, so that decoding traces
/// nothing.
pub struct Prepared {
    fingerprint: u64,
    shapes: Shapes,
}

impl Prepared {
    /// For a state of `S`'s own schema.
    pub fn of<S: Handover>() -> Result<Prepared, Error> {
        let mut shapes = Shapes::new();
        S::accepted(&mut shapes)?;
        let fingerprint = shapes.schema::<S>()?.fingerprint;
        Ok(Prepared {
            fingerprint,
            shapes,
        })
    }

    /// For a state written with the schema `fingerprint` instead.
    pub fn at(self, fingerprint: u64) -> Prepared {
        Prepared {
            fingerprint,
            ..self
        }
    }
}

/// Decodes a state as [`decode_state`] does, with what was prepared
/// beforehand.
pub fn decode_prepared<S: Handover>(
    stream: &[u8],
    out_of_line: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
    prepared: Prepared,
) -> Result<S, Error> {
    Decoder::new(stream, out_of_line, fds)
        .with_shapes(prepared.shapes)
        .decode_from(prepared.fingerprint)
}

/// The wire's decoders on plain bytes.
pub mod wire {
    use crate::error::{Error, Step};
    use crate::schema::{Schema, Shape};
    use crate::wire::handshake::{self, Progress, Secret};
    use crate::wire::{self as real, Message, Reason};

    pub use crate::wire::Kind;

    /// Length of HELLO.
    pub const HELLO_LEN: usize = real::Hello::LEN;
    /// Length of WELCOME.
    pub const WELCOME_LEN: usize = real::Welcome::LEN;
    /// Length of a frame header.
    pub const HEADER_LEN: usize = real::HEADER_LEN;
    /// Largest payload of any frame but DATA and BYTES.
    pub const MAX_CONTROL_PAYLOAD: u32 = real::MAX_CONTROL_PAYLOAD;
    /// Largest payload of a DATA or BYTES frame.
    pub const MAX_DATA_PAYLOAD: u32 = real::MAX_DATA_PAYLOAD;
    /// Largest state (stream and out-of-line bytes) accepted by default.
    pub const MAX_STATE_BYTES: u64 = crate::env::MAX_STATE_BYTES;
    /// Byte buffers of this size or more travel out of line.
    pub const OUT_OF_LINE_BYTES: usize = crate::handover::OUT_OF_LINE_BYTES;
    /// Byte buffers of this size or more come through the pipe, in
    /// protocol version 2.
    pub const PIPE_BYTES: usize = crate::pipe::PIPE_BYTES;
    /// Length of the secret: the new process's token, then the old one's.
    pub const SECRET_LEN: usize = 2 * real::TOKEN_LEN;

    /// The HELLO the new process sends with `secret`.
    pub fn hello(secret: &[u8; SECRET_LEN]) -> [u8; HELLO_LEN] {
        handshake::hello(&Secret::from_bytes(*secret))
    }

    /// What the old process makes of the first bytes of a connection:
    /// `Ok(None)` while they may still become a HELLO, `Ok(Some(versions))`
    /// once they prove `secret`, and the reason it drops the connection
    /// otherwise.
    pub fn parse_hello(
        secret: &[u8; SECRET_LEN],
        received: &[u8],
    ) -> Result<Option<(u16, u16)>, &'static str> {
        match handshake::check_hello(&Secret::from_bytes(*secret), received) {
            Progress::Waiting => Ok(None),
            Progress::Proven(versions) => Ok(Some(versions)),
            Progress::Refused(why) => Err(why),
        }
    }

    /// The version the old process chooses for a HELLO's range, if any.
    pub fn choose_version(theirs: (u16, u16)) -> Option<u16> {
        handshake::choose_version(theirs)
    }

    /// The WELCOME the old process sends with `secret` (`chosen` 0: no
    /// shared version).
    pub fn welcome(secret: &[u8; SECRET_LEN], chosen: u16) -> [u8; WELCOME_LEN] {
        handshake::welcome(&Secret::from_bytes(*secret), chosen)
    }

    /// What the new process makes of a WELCOME: the chosen version.
    pub fn parse_welcome(
        secret: &[u8; SECRET_LEN],
        welcome: &[u8; WELCOME_LEN],
    ) -> Result<u16, Error> {
        handshake::check_welcome(&Secret::from_bytes(*secret), welcome)
    }

    /// Length of KEY, the fd channel's first message.
    pub const KEY_LEN: usize = real::Key::LEN;

    /// KEY as the old process sends it: the secret, the transfer timeout in
    /// milliseconds, and the limits.
    pub fn key(
        secret: &[u8; SECRET_LEN],
        timeout_ms: u64,
        max_bytes: u64,
        max_fds: u64,
    ) -> Vec<u8> {
        real::Key {
            secret: *secret,
            timeout_ms,
            max_state_bytes: max_bytes,
            max_fds,
        }
        .encode()
        .to_vec()
    }

    /// What the new process makes of the fd channel's first message: the
    /// secret, timeout and limits of a KEY.
    pub fn parse_key(bytes: &[u8]) -> Result<([u8; SECRET_LEN], u64, u64, u64), Error> {
        let key = real::Key::decode(bytes)?;
        Ok((key.secret, key.timeout_ms, key.max_state_bytes, key.max_fds))
    }

    /// Length of PIPE, the fd channel's message that carries the pipe.
    pub const PIPE_LEN: usize = real::Pipe::LEN;

    /// PIPE as the old process sends it (its fd travels beside it).
    pub fn pipe() -> Vec<u8> {
        real::Pipe.encode().to_vec()
    }

    /// What the new process makes of a PIPE message's bytes.
    pub fn parse_pipe(bytes: &[u8]) -> Result<(), Error> {
        real::Pipe::decode(bytes).map(|_| ())
    }

    /// What a receiver makes of a frame header when it expects one of
    /// `expected`: the kind and the payload length it then allocates.
    pub fn decode_header(
        step: Step,
        header: [u8; HEADER_LEN],
        expected: &[Kind],
    ) -> Result<(Kind, u32), Error> {
        real::decode_header(step, header, expected)
    }

    /// Every frame with a payload layout, as plain data. (DATA and BYTES
    /// carry raw chunks of the state; the state decoder reads those.)
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Frame {
        /// OFFER: the accepted schemas, and the new process's state shape.
        Offer {
            /// The accepted schemas.
            accepted: Vec<Schema>,
            /// The shape of the new process's own state.
            description: Option<Shape>,
        },
        /// STATE: the schema that follows.
        State(Schema),
        /// REJECT.
        Reject {
            /// The reason byte.
            reason: u8,
            /// The old process's schema.
            schema: Schema,
            /// Its error.
            message: String,
            /// The shape of the old process's state.
            description: Option<Shape>,
        },
        /// BYTES_START: the buffer's size.
        BytesStart(u64),
        /// BYTES_PIPED: the size of the buffer that follows through the
        /// pipe.
        BytesPiped(u64),
        /// LINEAGE: the new process's generation and the binary path it
        /// upgrades from.
        Lineage {
            /// The generation.
            generation: u64,
            /// The binary path.
            binary: std::path::PathBuf,
            /// The previous build's binary path.
            previous_binary: std::path::PathBuf,
        },
        /// END.
        End {
            /// Stream bytes.
            stream_bytes: u64,
            /// Out-of-line bytes.
            out_of_line_bytes: u64,
            /// Fds to follow.
            fds: u32,
        },
        /// ABORT.
        Abort {
            /// The reason byte.
            reason: u8,
            /// The new process's error.
            message: String,
        },
        /// READY.
        Ready,
        /// COMMIT.
        Commit,
        /// ACK.
        Ack,
        /// TAKEN.
        Taken,
    }

    /// The frame kinds whose payloads [`decode`] reads.
    pub const KINDS: [Kind; 12] = [
        Kind::Offer,
        Kind::State,
        Kind::Lineage,
        Kind::Reject,
        Kind::BytesStart,
        Kind::BytesPiped,
        Kind::End,
        Kind::Abort,
        Kind::Ready,
        Kind::Commit,
        Kind::Ack,
        Kind::Taken,
    ];

    fn reason(byte: u8) -> Reason {
        [
            Reason::Schema,
            Reason::Limit,
            Reason::Decode,
            Reason::Protocol,
            Reason::Io,
        ]
        .into_iter()
        .find(|reason| *reason as u8 == byte)
        .unwrap_or(Reason::Protocol)
    }

    /// `frame`'s kind and payload, as the sending side writes them. A
    /// reason byte that names no reason is written as "protocol" (4).
    pub fn encode(frame: &Frame) -> (Kind, Vec<u8>) {
        fn pair<M: Message>(message: M) -> (Kind, Vec<u8>) {
            (M::KIND, message.encode())
        }
        match frame.clone() {
            Frame::Offer {
                accepted,
                description,
            } => pair(real::Offer {
                accepted,
                description,
            }),
            Frame::State(schema) => pair(real::State { schema }),
            Frame::Reject {
                reason: byte,
                schema,
                message,
                description,
            } => pair(real::Reject {
                reason: reason(byte),
                schema,
                message,
                description,
            }),
            Frame::BytesStart(size) => pair(real::BytesStart { size }),
            Frame::BytesPiped(size) => pair(real::BytesPiped { size }),
            Frame::Lineage {
                generation,
                binary,
                previous_binary,
            } => pair(real::Lineage {
                generation,
                binary,
                previous_binary,
            }),
            Frame::End {
                stream_bytes,
                out_of_line_bytes,
                fds,
            } => pair(real::End {
                stream_bytes,
                out_of_line_bytes,
                fds,
            }),
            Frame::Abort {
                reason: byte,
                message,
            } => pair(real::Abort {
                reason: reason(byte),
                message,
            }),
            Frame::Ready => pair(real::Ready),
            Frame::Commit => pair(real::Commit),
            Frame::Ack => pair(real::Ack),
            Frame::Taken => pair(real::Taken),
        }
    }

    /// The step in which a receiver reads a `kind` frame.
    pub fn step_of(kind: Kind) -> Step {
        match kind {
            Kind::Offer | Kind::State | Kind::Lineage => Step::Offer,
            Kind::Ready => Step::Ready,
            Kind::Reject
            | Kind::Data
            | Kind::BytesStart
            | Kind::Bytes
            | Kind::BytesPiped
            | Kind::End => Step::State,
            Kind::Abort | Kind::Commit => Step::Commit,
            Kind::Ack | Kind::Taken => Step::Ack,
        }
    }

    /// What the receiving side makes of a `kind` frame's `payload`.
    pub fn decode(kind: Kind, payload: &[u8]) -> Result<Frame, Error> {
        let step = step_of(kind);
        Ok(match kind {
            Kind::Offer => {
                let offer = real::Offer::decode(step, payload)?;
                Frame::Offer {
                    accepted: offer.accepted,
                    description: offer.description,
                }
            }
            Kind::State => Frame::State(real::State::decode(step, payload)?.schema),
            Kind::Reject => {
                let reject = real::Reject::decode(step, payload)?;
                Frame::Reject {
                    reason: reject.reason as u8,
                    schema: reject.schema,
                    message: reject.message,
                    description: reject.description,
                }
            }
            Kind::BytesStart => Frame::BytesStart(real::BytesStart::decode(step, payload)?.size),
            Kind::BytesPiped => Frame::BytesPiped(real::BytesPiped::decode(step, payload)?.size),
            Kind::Lineage => {
                let lineage = real::Lineage::decode(step, payload)?;
                Frame::Lineage {
                    generation: lineage.generation,
                    binary: lineage.binary,
                    previous_binary: lineage.previous_binary,
                }
            }
            Kind::End => {
                let end = real::End::decode(step, payload)?;
                Frame::End {
                    stream_bytes: end.stream_bytes,
                    out_of_line_bytes: end.out_of_line_bytes,
                    fds: end.fds,
                }
            }
            Kind::Abort => {
                let abort = real::Abort::decode(step, payload)?;
                Frame::Abort {
                    reason: abort.reason as u8,
                    message: abort.message,
                }
            }
            Kind::Ready => real::Ready::decode(step, payload).map(|_| Frame::Ready)?,
            Kind::Commit => real::Commit::decode(step, payload).map(|_| Frame::Commit)?,
            Kind::Ack => real::Ack::decode(step, payload).map(|_| Frame::Ack)?,
            Kind::Taken => real::Taken::decode(step, payload).map(|_| Frame::Taken)?,
            Kind::Data | Kind::Bytes => {
                return Err(Error::protocol(
                    step,
                    format!("{} carries raw state bytes, not a layout", kind.name()),
                ));
            }
        })
    }
}
