//! The `Handover` trait: how a state value crosses from the old process to
//! the new one.
//!
//! Plain data is encoded with postcard into the state stream. A value that
//! owns a file descriptor writes an index into the stream instead, and its fd
//! goes into a side table that travels over the fd channel (PROTOCOL.md,
//! steps 5 and 6). Decoding reverses that: an index in the stream takes the fd
//! at that place in the received table.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, Hash};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The identity of a state type's encoding, compared in the handshake before
/// any state is decoded (PROTOCOL.md, step 4).
///
/// Two binaries hand over only when the old one's `Schema` is one the new one
/// accepts. `name` and `version` are for people; `fingerprint` is what is
/// compared, and [`Schema::new`] derives it from both.
///
/// ```
/// use mitosis::Schema;
/// const V1: Schema = Schema::new("bot::State", 1);
/// const V2: Schema = Schema::new("bot::State", 2);
/// assert_ne!(V1.fingerprint, V2.fingerprint);
/// assert_eq!(V1.to_string(), format!("bot::State v1 ({:016x})", V1.fingerprint));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Schema {
    /// The type's name, for error messages.
    pub name: &'static str,
    /// The version the type declares.
    pub version: u32,
    /// A hash of everything that shapes the encoding.
    pub fingerprint: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub(crate) const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

impl Schema {
    /// A schema whose fingerprint is derived from `name` and `version`.
    ///
    /// ```
    /// const S: mitosis::Schema = mitosis::Schema::new("State", 3);
    /// assert_eq!((S.name, S.version), ("State", 3));
    /// ```
    pub const fn new(name: &'static str, version: u32) -> Schema {
        let hash = fnv1a(FNV_OFFSET, name.as_bytes());
        let hash = fnv1a(hash, &version.to_le_bytes());
        Schema {
            name,
            version,
            fingerprint: hash,
        }
    }

    /// This schema with `inner`'s fingerprint folded into its own, for a
    /// container or wrapper whose encoding depends on what it contains.
    ///
    /// ```
    /// use mitosis::Schema;
    /// let a = Schema::new("Vec", 0).nest(Schema::new("A", 0));
    /// let b = Schema::new("Vec", 0).nest(Schema::new("B", 0));
    /// assert_ne!(a.fingerprint, b.fingerprint);
    /// ```
    pub const fn nest(self, inner: Schema) -> Schema {
        Schema {
            fingerprint: fnv1a(self.fingerprint, &inner.fingerprint.to_le_bytes()),
            ..self
        }
    }
}

/// A schema as the other process described it in the handshake, named in
/// [`Error::SchemaMismatch`].
///
/// ```
/// let info = mitosis::SchemaInfo::from(mitosis::Schema::new("bot::State", 2));
/// assert_eq!(info.name, "bot::State");
/// assert_eq!(info.to_string(), mitosis::Schema::new("bot::State", 2).to_string());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaInfo {
    /// The type's name.
    pub name: String,
    /// The version it declares.
    pub version: u32,
    /// What is compared.
    pub fingerprint: u64,
}

impl From<Schema> for SchemaInfo {
    fn from(schema: Schema) -> SchemaInfo {
        SchemaInfo {
            name: schema.name.to_owned(),
            version: schema.version,
            fingerprint: schema.fingerprint,
        }
    }
}

impl fmt::Display for SchemaInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} ({:016x})",
            self.name, self.version, self.fingerprint
        )
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} ({:016x})",
            self.name, self.version, self.fingerprint
        )
    }
}

/// A value that can be handed over to a new process: plain data, file
/// descriptors, or any mix of the two.
///
/// `encode` borrows the value, because the old process keeps it until the new
/// one has committed; if the handover fails, the value goes back to the
/// caller unchanged. `decode` rebuilds it in the new process.
///
/// # Deriving
///
/// `#[derive(Handover)]` works on structs (named, tuple, unit) and enums,
/// generic or not. Every field goes the best way its type allows:
///
/// - a type that owns file descriptors (`TcpStream`, `TcpListener`,
///   `UdpSocket`, `UnixStream`, `UnixListener`, `UnixDatagram`, `File`,
///   `OwnedFd`, `BufReader`/`BufWriter` over one of them, any of them inside
///   `Option`, `Vec`, `VecDeque`, `HashMap`, `BTreeMap`, `Box` or a tuple,
///   and nested derived types) crosses over the fd channel, wherever it
///   sits;
/// - a `Vec<u8>` is written in one piece, at copy speed;
/// - everything else goes through serde and postcard, so it must be
///   `Serialize` and `DeserializeOwned`.
///
/// ```
/// use std::collections::HashMap;
/// use std::io::BufReader;
/// use std::net::{TcpListener, TcpStream};
///
/// #[derive(mitosis::Handover)]
/// struct State {
///     generation: u64,
///     conn: BufReader<TcpStream>,      // unread bytes cross too
///     listeners: HashMap<String, TcpListener>,
///     channels: Vec<String>,
///     seen: Vec<u8>,
/// }
///
/// #[derive(mitosis::Handover)]
/// enum Link {
///     Down,
///     Up { conn: TcpStream, since: u64 },
/// }
/// ```
///
/// Generic parameters used in sent fields get a `Handover` bound, the way
/// serde infers its bounds:
///
/// ```
/// #[derive(mitosis::Handover)]
/// struct Tagged<T> {
///     value: T,
///     tag: String,
/// }
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<Tagged<std::fs::File>>();
/// ```
///
/// ## Schema and fingerprint
///
/// The derive computes [`SCHEMA`](Handover::SCHEMA) at compile time. Its
/// fingerprint covers the schema's name (by default the type's module path
/// and name), the version, every sent field's name and type as written, and
/// the fingerprint of every field type that is itself `Handover`, so that a
/// change inside a nested type changes the outer fingerprint too. Skipped
/// fields are left out: they do not change what crosses. The handshake
/// compares fingerprints before anything is decoded.
///
/// ## Type attributes
///
/// `version = N` declares the schema's version (0 if absent). Bump it
/// whenever the fields change, so that errors name something meaningful:
///
/// ```
/// #[derive(mitosis::Handover)]
/// #[handover(version = 3)]
/// struct State {
///     generation: u64,
/// }
/// assert_eq!(<State as mitosis::Handover>::SCHEMA.version, 3);
/// ```
///
/// `name = "..."` replaces the type's path in the schema. It is what keeps
/// an old type's fingerprint when its definition moves or is renamed, as a
/// migration source must be:
///
/// ```
/// #[derive(mitosis::Handover)]
/// #[handover(name = "bot::State", version = 1)]
/// struct StateV1 {
///     generation: u32,
/// }
/// assert_eq!(<StateV1 as mitosis::Handover>::SCHEMA.name, "bot::State");
/// ```
///
/// `migrate_from(Old)` lets this type be built from an `Old` state, through
/// `impl From<Old> for Self`. `Old` is a verbatim copy of the previous
/// build's type (same fields, types written the same way, same version),
/// renamed, with `name` set to the previous name. It can migrate from an
/// older type in turn, so chains work. The new process offers all of them in
/// the handshake, and the old process sends its state only if one matches:
///
/// ```
/// use mitosis::Handover;
///
/// // The previous build's state, copied verbatim and renamed.
/// #[derive(Handover)]
/// #[handover(name = "bot::State", version = 1)]
/// struct StateV1 {
///     generation: u32,
/// }
///
/// #[derive(Handover)]
/// #[handover(name = "bot::State", version = 2, migrate_from(StateV1))]
/// struct State {
///     generations: u64,     // renamed and widened
///     nick: String,         // added
/// }
///
/// impl From<StateV1> for State {
///     fn from(old: StateV1) -> State {
///         State { generations: old.generation.into(), nick: "bot".into() }
///     }
/// }
///
/// assert_eq!(State::accepted(), [State::SCHEMA, StateV1::SCHEMA]);
/// ```
///
/// ## Field attributes
///
/// `skip` leaves a field out; the new process rebuilds it with `Default`,
/// or with `default = "function"`:
///
/// ```
/// # use std::collections::HashMap;
/// fn fresh_limit() -> u32 {
///     100
/// }
///
/// #[derive(mitosis::Handover)]
/// struct State {
///     generation: u64,
///     #[handover(skip)]
///     cache: HashMap<String, String>,
///     #[handover(skip, default = "fresh_limit")]
///     limit: u32,
/// }
/// ```
///
/// `with = "module"` hands a foreign type over through
/// `module::encode` and `module::decode`, for a type that is neither
/// `Handover` nor serde:
///
/// ```
/// mod as_millis {
///     use std::time::Instant;
///     pub fn encode<'a>(
///         value: &'a Instant,
///         out: &mut mitosis::Encoder<'a>,
///     ) -> Result<(), mitosis::Error> {
///         out.serde(&(value.elapsed().as_millis() as u64))
///     }
///     pub fn decode(input: &mut mitosis::Decoder<'_>) -> Result<Instant, mitosis::Error> {
///         let ago: u64 = input.serde()?;
///         Ok(Instant::now() - std::time::Duration::from_millis(ago))
///     }
/// }
///
/// #[derive(mitosis::Handover)]
/// struct State {
///     #[handover(with = "as_millis")]
///     started: std::time::Instant,
/// }
/// ```
///
/// `fd` hands a field over as a plain file descriptor, for a type that is
/// `AsFd + From<OwnedFd>` but not `Handover` (a socket type from another
/// crate, say):
///
/// ```
/// #[derive(mitosis::Handover)]
/// struct State {
///     #[handover(fd)]
///     timer: std::os::fd::OwnedFd,
/// }
/// ```
///
/// Misuse (an unknown or duplicate attribute, `skip` on a type without
/// `Default`, a union, `migrate_from` of a type that is not `Handover`, or
/// a field given two of `skip`, `with` and `fd`) is a compile error spanned
/// on the offending token.
///
/// # Implementing it by hand
///
/// Write plain fields with [`Encoder::serde`] (or [`Encoder::bytes`] for a
/// byte buffer), fields that own fds with their own `Handover` impl, and read
/// them back in the same order:
///
/// ```
/// use std::net::TcpStream;
/// use mitosis::{Decoder, Encoder, Error, Handover, Schema};
///
/// struct State {
///     nick: String,
///     conn: TcpStream,
///     seen: Vec<u8>,
/// }
///
/// impl Handover for State {
///     const SCHEMA: Schema = Schema::new("bot::State", 1);
///
///     fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
///         out.serde(&self.nick)?;
///         self.conn.encode(out)?;
///         out.bytes(&self.seen)
///     }
///
///     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
///         Ok(State {
///             nick: input.serde()?,
///             conn: TcpStream::decode(input)?,
///             seen: input.bytes()?,
///         })
///     }
/// }
/// ```
pub trait Handover: Sized {
    /// The identity of this type's encoding. Change the version whenever the
    /// encoding changes, so that an old state is refused instead of being
    /// decoded into the wrong shape.
    const SCHEMA: Schema;

    /// Writes the value: plain data into the stream, fds into the side table.
    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error>;

    /// Reads a value written by [`encode`](Handover::encode).
    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error>;

    /// The schemas a state of this type can be built from: its own first,
    /// then, newest first, those it migrates from. The new process offers
    /// them in the handshake, and the old process sends its state only if
    /// its schema is among them.
    ///
    /// `#[derive(Handover)]` with `#[handover(migrate_from(Old))]` fills this
    /// in; by hand:
    ///
    /// ```
    /// # use mitosis::{Decoder, Encoder, Error, Handover, Schema};
    /// struct V1(u32);
    /// struct V2(u64);
    /// # impl Handover for V1 {
    /// #     const SCHEMA: Schema = Schema::new("V", 1);
    /// #     fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> { out.serde(&self.0) }
    /// #     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> { input.serde().map(V1) }
    /// # }
    /// impl Handover for V2 {
    ///     const SCHEMA: Schema = Schema::new("V", 2);
    ///     fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
    ///         out.serde(&self.0)
    ///     }
    ///     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
    ///         input.serde().map(V2)
    ///     }
    ///     fn accepted() -> Vec<Schema> {
    ///         let mut accepted = vec![Self::SCHEMA];
    ///         accepted.extend(V1::accepted());
    ///         accepted
    ///     }
    ///     fn decode_from(fingerprint: u64, input: &mut Decoder<'_>) -> Result<Self, Error> {
    ///         if fingerprint == Self::SCHEMA.fingerprint {
    ///             Self::decode(input)
    ///         } else {
    ///             V1::decode_from(fingerprint, input).map(|old| V2(old.0.into()))
    ///         }
    ///     }
    /// }
    /// assert_eq!(V2::accepted(), [Schema::new("V", 2), Schema::new("V", 1)]);
    /// ```
    fn accepted() -> Vec<Schema> {
        vec![Self::SCHEMA]
    }

    /// Reads a value written with the schema whose fingerprint is
    /// `fingerprint`, one of [`accepted`](Handover::accepted): `decode` for
    /// this type's own schema, a migration for an older one. See
    /// [`accepted`](Handover::accepted) for an example.
    fn decode_from(fingerprint: u64, input: &mut Decoder<'_>) -> Result<Self, Error> {
        if fingerprint == Self::SCHEMA.fingerprint {
            Self::decode(input)
        } else {
            Err(Error::Codec {
                detail: format!(
                    "{} has no migration from the schema with fingerprint {fingerprint:016x}",
                    Self::SCHEMA
                ),
            })
        }
    }
}

/// Where [`Handover::encode`] writes a value.
///
/// It streams: plain data passes through a 64 KiB buffer to the connection,
/// and large byte buffers go straight to the socket, so the old process never
/// holds a second full copy of its state.
///
/// ```
/// use mitosis::{Encoder, Error, Handover, Schema, Decoder};
/// struct Counter(u64);
/// impl Handover for Counter {
///     const SCHEMA: Schema = Schema::new("Counter", 1);
///     fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
///         out.serde(&self.0)
///     }
///     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
///         input.serde().map(Counter)
///     }
/// }
/// ```
pub struct Encoder<'a> {
    pub(crate) serializer: postcard::Serializer<StreamFlavor<'a>>,
    pub(crate) fds: Vec<BorrowedFd<'a>>,
}

/// The bytes an [`Encoder`] buffers before writing them out.
pub(crate) const ENCODE_BUFFER: usize = 64 * 1024;

/// Byte buffers of this size or more travel out of line: in frames of their
/// own, read by the new process straight into their final `Vec`, so they
/// are copied once (PROTOCOL.md, step 5).
pub(crate) const OUT_OF_LINE_BYTES: usize = 64 * 1024;

/// Where an encoded state goes: the stream of plain bytes, and the byte
/// buffers that travel out of line.
pub(crate) trait StateSink {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error>;
    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error>;
}

/// A sink in memory, for handovers without the processes.
#[derive(Default)]
pub(crate) struct InMemory {
    pub(crate) stream: Vec<u8>,
    pub(crate) out_of_line: Vec<Vec<u8>>,
}

impl StateSink for InMemory {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.extend_from_slice(bytes);
        Ok(())
    }

    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out_of_line.push(bytes.to_vec());
        Ok(())
    }
}

/// A postcard flavor that streams into a sink through a bounded buffer.
pub(crate) struct StreamFlavor<'a> {
    buffer: Vec<u8>,
    sink: &'a mut dyn StateSink,
    written: u64,
    out_of_line: u64,
    /// postcard's flavor errors carry no payload, so the error that stopped
    /// the stream waits here until the encoder reports it.
    failure: Option<Error>,
}

impl StreamFlavor<'_> {
    pub(crate) fn flush_buffer(&mut self) -> postcard::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self.sink.data(&self.buffer);
        self.buffer.clear();
        self.record(result)
    }

    fn record(&mut self, result: Result<(), Error>) -> postcard::Result<()> {
        result.map_err(|error| {
            self.failure = Some(error);
            postcard::Error::SerializeBufferFull
        })
    }
}

impl postcard::ser_flavors::Flavor for StreamFlavor<'_> {
    type Output = u64;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.buffer.len() == ENCODE_BUFFER {
            self.flush_buffer()?;
        }
        self.buffer.push(byte);
        self.written += 1;
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.written += data.len() as u64;
        if data.len() <= ENCODE_BUFFER - self.buffer.len() {
            self.buffer.extend_from_slice(data);
            return Ok(());
        }
        self.flush_buffer()?;
        if data.len() < ENCODE_BUFFER {
            self.buffer.extend_from_slice(data);
            Ok(())
        } else {
            let result = self.sink.data(data);
            self.record(result)
        }
    }

    fn finalize(mut self) -> postcard::Result<u64> {
        self.flush_buffer()?;
        Ok(self.written)
    }
}

/// What an encoding produced besides the bytes it streamed.
pub(crate) struct Encoded<'a> {
    /// Bytes in the stream.
    pub(crate) total_bytes: u64,
    /// Bytes sent out of line.
    pub(crate) out_of_line_bytes: u64,
    pub(crate) fds: Vec<BorrowedFd<'a>>,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(sink: &'a mut dyn StateSink) -> Encoder<'a> {
        Encoder {
            serializer: postcard::Serializer {
                output: StreamFlavor {
                    buffer: Vec::with_capacity(ENCODE_BUFFER),
                    sink,
                    written: 0,
                    out_of_line: 0,
                    failure: None,
                },
            },
            fds: Vec::new(),
        }
    }

    /// Encodes `value` into `sink` and flushes it.
    pub(crate) fn encode<S: Handover>(
        sink: &'a mut dyn StateSink,
        value: &'a S,
    ) -> Result<Encoded<'a>, Error> {
        let mut encoder = Encoder::new(sink);
        value.encode(&mut encoder)?;
        let fds = encoder.fds;
        let mut output = encoder.serializer.output;
        if output.flush_buffer().is_err() {
            return Err(stream_failure(output.failure));
        }
        Ok(Encoded {
            total_bytes: output.written,
            out_of_line_bytes: output.out_of_line,
            fds,
        })
    }

    fn fail(&mut self, error: postcard::Error) -> Error {
        match self.serializer.output.failure.take() {
            Some(failure) => failure,
            None => Error::Codec {
                detail: error.to_string(),
            },
        }
    }

    /// Writes a plain value with serde and postcard.
    ///
    /// ```
    /// # use mitosis::{Encoder, Error};
    /// fn write_nick<'a>(nick: &'a String, out: &mut Encoder<'a>) -> Result<(), Error> {
    ///     out.serde(nick)
    /// }
    /// ```
    pub fn serde<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value
            .serialize(&mut self.serializer)
            .map_err(|error| self.fail(error))
    }

    /// Writes a byte buffer at copy speed. A short one goes into the stream
    /// as `serde_bytes` writes it (a length, then the bytes); one of 64 KiB
    /// or more leaves its length in the stream and travels out of line,
    /// straight from this memory into the new process's final `Vec`.
    ///
    /// ```
    /// # use mitosis::{Encoder, Error};
    /// fn write_blob<'a>(blob: &'a [u8], out: &mut Encoder<'a>) -> Result<(), Error> {
    ///     out.bytes(blob)
    /// }
    /// ```
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() < OUT_OF_LINE_BYTES {
            return self.serde(serde_bytes::Bytes::new(bytes));
        }
        self.serde(&bytes.len())?;
        let output = &mut self.serializer.output;
        output.out_of_line += bytes.len() as u64;
        output.sink.out_of_line(bytes)
    }

    /// Puts `fd` into the side table and writes its index into the stream.
    /// The fd itself crosses in step 6; the old process keeps its own copy
    /// until the new process has committed.
    ///
    /// ```
    /// # use std::os::fd::AsFd;
    /// # use mitosis::{Encoder, Error};
    /// fn write_file<'a>(file: &'a std::fs::File, out: &mut Encoder<'a>) -> Result<(), Error> {
    ///     out.fd(file.as_fd())
    /// }
    /// ```
    pub fn fd(&mut self, fd: BorrowedFd<'a>) -> Result<(), Error> {
        let index = u32::try_from(self.fds.len()).map_err(|_| Error::Codec {
            detail: "more than 4294967295 fds in one state".into(),
        })?;
        self.fds.push(fd);
        self.serde(&index)
    }
}

fn stream_failure(failure: Option<Error>) -> Error {
    failure.unwrap_or_else(|| Error::Codec {
        detail: "the state stream stopped".into(),
    })
}

/// Where [`Handover::decode`] reads a value from.
///
/// It reads the received state bytes in order and hands out the received fds
/// by index; each fd can be taken once.
///
/// ```
/// # use mitosis::{Decoder, Error};
/// fn read_count(input: &mut Decoder<'_>) -> Result<u64, Error> {
///     input.serde()
/// }
/// ```
pub struct Decoder<'de> {
    /// The stream bytes not read yet.
    rest: &'de [u8],
    out_of_line: VecDeque<Vec<u8>>,
    fds: Vec<Option<OwnedFd>>,
    /// The capacities of the buffered readers and writers decoded so far,
    /// and what they may add up to.
    buffer_capacities: u64,
    buffer_capacity_limit: u64,
}

impl<'de> Decoder<'de> {
    pub(crate) fn new(
        stream: &'de [u8],
        out_of_line: Vec<Vec<u8>>,
        fds: Vec<OwnedFd>,
    ) -> Decoder<'de> {
        Decoder {
            rest: stream,
            out_of_line: out_of_line.into(),
            fds: fds.into_iter().map(Some).collect(),
            buffer_capacities: 0,
            buffer_capacity_limit: MAX_BUFFER_CAPACITIES,
        }
    }

    /// Decodes a value written with `fingerprint`'s schema, and checks that
    /// it used every byte, every out-of-line buffer and every fd.
    pub(crate) fn decode_from<S: Handover>(mut self, fingerprint: u64) -> Result<S, Error> {
        let value = S::decode_from(fingerprint, &mut self)?;
        if !self.rest.is_empty() {
            return Err(Error::Codec {
                detail: format!("{} bytes left over after the state", self.rest.len()),
            });
        }
        if !self.out_of_line.is_empty() {
            return Err(Error::Codec {
                detail: format!(
                    "{} out-of-line byte buffers were not claimed by the state",
                    self.out_of_line.len()
                ),
            });
        }
        let unused = self.fds.iter().filter(|fd| fd.is_some()).count();
        if unused > 0 {
            return Err(Error::Codec {
                detail: format!("{unused} received fds were not claimed by the state"),
            });
        }
        Ok(value)
    }

    /// Reads a plain value written by [`Encoder::serde`].
    ///
    /// ```
    /// # use mitosis::{Decoder, Error};
    /// fn read_nick(input: &mut Decoder<'_>) -> Result<String, Error> {
    ///     input.serde()
    /// }
    /// ```
    pub fn serde<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let (value, rest) = postcard::take_from_bytes(self.rest).map_err(codec)?;
        self.rest = rest;
        Ok(value)
    }

    /// Reads a byte buffer written by [`Encoder::bytes`].
    ///
    /// ```
    /// # use mitosis::{Decoder, Error};
    /// fn read_blob(input: &mut Decoder<'_>) -> Result<Vec<u8>, Error> {
    ///     input.bytes()
    /// }
    /// ```
    pub fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let len: usize = self.serde()?;
        if len >= OUT_OF_LINE_BYTES {
            let buffer = self.out_of_line.pop_front().ok_or_else(|| Error::Codec {
                detail: format!("a byte buffer of {len} bytes was announced but did not arrive"),
            })?;
            if buffer.len() != len {
                return Err(Error::Codec {
                    detail: format!(
                        "a byte buffer of {len} bytes was announced and {} arrived",
                        buffer.len()
                    ),
                });
            }
            return Ok(buffer);
        }
        if self.rest.len() < len {
            return Err(Error::Codec {
                detail: format!("a byte buffer of {len} bytes is cut short"),
            });
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(bytes.to_vec())
    }

    /// Reads an fd index written by [`Encoder::fd`] and takes that fd.
    ///
    /// ```
    /// # use mitosis::{Decoder, Error};
    /// fn read_file(input: &mut Decoder<'_>) -> Result<std::fs::File, Error> {
    ///     input.fd().map(std::fs::File::from)
    /// }
    /// ```
    pub fn fd(&mut self) -> Result<OwnedFd, Error> {
        let index: u32 = self.serde()?;
        let received = self.fds.len();
        self.fds
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| Error::Codec {
                detail: format!(
                    "fd index {index} is out of range or used twice ({received} fds received)"
                ),
            })
    }

    /// The length prefix of a sequence or map.
    fn len(&mut self) -> Result<usize, Error> {
        self.serde::<usize>()
    }
}

fn codec(error: postcard::Error) -> Error {
    Error::Codec {
        detail: error.to_string(),
    }
}

/// Capacity to reserve for a decoded sequence of `len` elements of `T`: all
/// of it for an honest length, so a large map is not rehashed as it grows.
/// A corrupt length is bounded twice over: every element takes at least one
/// byte of what is left in the stream, and no more than 64 MiB is reserved
/// up front.
fn bounded_capacity<T>(len: usize, input: &Decoder<'_>) -> usize {
    const RESERVE_BUDGET: usize = 64 << 20;
    len.min(input.rest.len())
        .min(RESERVE_BUDGET / std::mem::size_of::<T>().max(1))
}

macro_rules! fd_types {
    ($($ty:ty),* $(,)?) => {$(
        impl Handover for $ty {
            const SCHEMA: Schema = Schema::new(stringify!($ty), 0);

            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.fd(self.as_fd())
            }

            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                input.fd().map(<$ty>::from)
            }
        }
    )*};
}

fd_types!(
    OwnedFd,
    File,
    TcpStream,
    TcpListener,
    UdpSocket,
    UnixStream,
    UnixListener,
    UnixDatagram,
);

macro_rules! plain_types {
    ($($ty:ty),* $(,)?) => {$(
        impl Handover for $ty {
            const SCHEMA: Schema = Schema::new(stringify!($ty), 0);

            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.serde(self)
            }

            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                input.serde()
            }
        }
    )*};
}

plain_types!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    std::path::PathBuf,
    std::time::Duration,
    std::net::SocketAddr,
    std::net::IpAddr,
);

impl<T: Handover> Handover for Option<T> {
    const SCHEMA: Schema = Schema::new("Option", 0).nest(T::SCHEMA);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        match self {
            None => out.serde(&false),
            Some(value) => {
                out.serde(&true)?;
                value.encode(out)
            }
        }
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        if input.serde::<bool>()? {
            T::decode(input).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl<T: Handover> Handover for Box<T> {
    const SCHEMA: Schema = T::SCHEMA;

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        (**self).encode(out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        T::decode(input).map(Box::new)
    }
}

impl<T: Handover> Handover for Vec<T> {
    const SCHEMA: Schema = Schema::new("Vec", 0).nest(T::SCHEMA);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.serde(&self.len())?;
        self.iter().try_for_each(|item| item.encode(out))
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let len = input.len()?;
        let mut items = Vec::with_capacity(bounded_capacity::<T>(len, input));
        for _ in 0..len {
            items.push(T::decode(input)?);
        }
        Ok(items)
    }
}

impl<T: Handover> Handover for VecDeque<T> {
    const SCHEMA: Schema = Schema::new("VecDeque", 0).nest(T::SCHEMA);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.serde(&self.len())?;
        self.iter().try_for_each(|item| item.encode(out))
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        Vec::<T>::decode(input).map(VecDeque::from)
    }
}

impl<K, V, H> Handover for HashMap<K, V, H>
where
    K: Serialize + DeserializeOwned + Eq + Hash,
    V: Handover,
    H: BuildHasher + Default,
{
    const SCHEMA: Schema = Schema::new("HashMap", 0).nest(V::SCHEMA);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.serde(&self.len())?;
        self.iter().try_for_each(|(key, value)| {
            out.serde(key)?;
            value.encode(out)
        })
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let len = input.len()?;
        let mut map =
            HashMap::with_capacity_and_hasher(bounded_capacity::<(K, V)>(len, input), H::default());
        for _ in 0..len {
            let key = input.serde()?;
            map.insert(key, V::decode(input)?);
        }
        Ok(map)
    }
}

impl<K, V> Handover for BTreeMap<K, V>
where
    K: Serialize + DeserializeOwned + Ord,
    V: Handover,
{
    const SCHEMA: Schema = Schema::new("BTreeMap", 0).nest(V::SCHEMA);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.serde(&self.len())?;
        self.iter().try_for_each(|(key, value)| {
            out.serde(key)?;
            value.encode(out)
        })
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let len = input.len()?;
        let mut map = BTreeMap::new();
        for _ in 0..len {
            let key = input.serde()?;
            map.insert(key, V::decode(input)?);
        }
        Ok(map)
    }
}

/// The largest read buffer whose unread bytes [`BufReader`]'s `decode` puts
/// back: they pass through a socket buffer, which holds at least this much.
pub const MAX_UNREAD_BYTES: usize = 64 * 1024;

/// A buffered reader hands over the bytes it has read but not yet returned,
/// so that a half-read line completes in the new process.
///
/// `R` must be an fd type that reads with `read` or `recv` (any socket or
/// file type). std's `BufReader` cannot be given bytes, so `decode` lets it
/// read them from a fresh Unix socket and then swaps the real reader in;
/// that works for up to [`MAX_UNREAD_BYTES`] unread bytes, and a larger
/// remainder is a decode error (the handover rolls back), never a loss.
///
/// ```
/// # use std::io::BufReader;
/// # use std::net::TcpStream;
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<BufReader<TcpStream>>();
/// ```
impl<R> Handover for BufReader<R>
where
    R: Handover + Read + From<OwnedFd>,
{
    const SCHEMA: Schema = Schema::new("BufReader", 0).nest(R::SCHEMA);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        encode_buffered(self.capacity(), self.buffer(), self.get_ref(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let (capacity, unread, inner) = decode_buffered::<R>(input, "BufReader")?;
        if unread.is_empty() {
            return Ok(BufReader::with_capacity(capacity, inner));
        }
        if unread.len() > MAX_UNREAD_BYTES {
            return Err(Error::Codec {
                detail: format!(
                    "a BufReader held {} unread bytes, more than the {MAX_UNREAD_BYTES} mitosis \
                     can put back; give it a smaller capacity",
                    unread.len()
                ),
            });
        }
        let put_back = |error: io::Error| Error::Codec {
            detail: format!("could not put a BufReader's unread bytes back: {error}"),
        };
        let (mut feed, source) = UnixStream::pair().map_err(put_back)?;
        feed.write_all(&unread).map_err(put_back)?;
        drop(feed);
        let mut reader = BufReader::with_capacity(capacity, R::from(OwnedFd::from(source)));
        let buffered = reader.fill_buf().map_err(put_back)?.len();
        if buffered != unread.len() {
            return Err(put_back(io::Error::other(format!(
                "{buffered} of {} bytes came back",
                unread.len()
            ))));
        }
        // The buffer keeps the bytes; the temporary socket is dropped.
        *reader.get_mut() = inner;
        Ok(reader)
    }
}

/// What a buffered reader or writer hands over: its capacity, the bytes in
/// its buffer, and what it wraps.
fn encode_buffered<'a, T: Handover>(
    capacity: usize,
    buffered: &[u8],
    inner: &'a T,
    out: &mut Encoder<'a>,
) -> Result<(), Error> {
    out.serde(&capacity)?;
    out.bytes(buffered)?;
    inner.encode(out)
}

/// The largest capacity of one decoded buffered reader or writer.
const MAX_BUFFER_CAPACITY: usize = 1 << 30;

/// What the capacities of all the buffered readers and writers in one state
/// may add up to: 4 GiB, the default limit on a whole state (PROTOCOL.md,
/// "Limits"). Each capacity is allocated in full when its buffer is built,
/// so without this a few bytes per buffer could claim 1 GiB each, past what
/// the address space holds.
const MAX_BUFFER_CAPACITIES: u64 = crate::frame::MAX_STATE_BYTES;

/// Reads what [`encode_buffered`] wrote, refusing a capacity that cannot
/// hold the buffered bytes, is beyond any sensible buffer (1 GiB), or would
/// bring the state's buffers together past `MAX_BUFFER_CAPACITIES`.
fn decode_buffered<T: Handover>(
    input: &mut Decoder<'_>,
    what: &str,
) -> Result<(usize, Vec<u8>, T), Error> {
    let capacity: usize = input.serde()?;
    let buffered = input.bytes()?;
    let inner = T::decode(input)?;
    if capacity < buffered.len() || capacity > MAX_BUFFER_CAPACITY {
        return Err(Error::Codec {
            detail: format!(
                "{what} of capacity {capacity} cannot hold its {} buffered bytes",
                buffered.len()
            ),
        });
    }
    let total = input.buffer_capacities + capacity as u64;
    if total > input.buffer_capacity_limit {
        return Err(Error::Codec {
            detail: format!(
                "{what} of capacity {capacity} would bring the state's buffers to {total} bytes \
                 in all, past the limit of {}",
                input.buffer_capacity_limit
            ),
        });
    }
    input.buffer_capacities = total;
    Ok((capacity, buffered, inner))
}

/// A buffered writer hands over the bytes it has not written yet; the new
/// process writes them first.
///
/// ```
/// # use std::io::BufWriter;
/// # use std::net::TcpStream;
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<BufWriter<TcpStream>>();
/// ```
impl<W> Handover for BufWriter<W>
where
    W: Handover + Write,
{
    const SCHEMA: Schema = Schema::new("BufWriter", 0).nest(W::SCHEMA);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        encode_buffered(self.capacity(), self.buffer(), self.get_ref(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let (capacity, unwritten, inner) = decode_buffered::<W>(input, "BufWriter")?;
        let mut writer = BufWriter::with_capacity(capacity, inner);
        // Fits the buffer, so nothing is written to the fd here (at exactly
        // the capacity, BufWriter writes through, in the same order).
        writer.write_all(&unwritten).map_err(|error| Error::Codec {
            detail: format!("could not restore a BufWriter's unwritten bytes: {error}"),
        })?;
        Ok(writer)
    }
}

macro_rules! tuples {
    ($(($($name:ident),+))*) => {$(
        impl<$($name: Handover),+> Handover for ($($name,)+) {
            const SCHEMA: Schema = Schema::new("tuple", 0)$(.nest($name::SCHEMA))+;

            #[allow(non_snake_case)]
            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                let ($($name,)+) = self;
                $($name.encode(out)?;)+
                Ok(())
            }

            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                Ok(($($name::decode(input)?,)+))
            }
        }
    )*};
}

tuples! {
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
}

#[cfg(test)]
impl Decoder<'_> {
    /// Decodes a value of `S`'s own schema.
    pub(crate) fn decode<S: Handover>(self) -> Result<S, Error> {
        self.decode_from(S::SCHEMA.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Encodes in memory and decodes again, passing the side table's fds as
    /// duplicates, the way SCM_RIGHTS would.
    fn round_trip<S: Handover>(value: &S) -> Result<S, Error> {
        let mut sink = InMemory::default();
        let encoded = Encoder::encode(&mut sink, value)?;
        let total = encoded.total_bytes;
        let fds = encoded
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        assert_eq!(total, sink.stream.len() as u64);
        Decoder::new(&sink.stream, sink.out_of_line, fds).decode()
    }

    /// The stream of an encoding without fds or out-of-line buffers.
    fn stream_of<S: Handover>(value: &S) -> Vec<u8> {
        let mut sink = InMemory::default();
        Encoder::encode(&mut sink, value).unwrap();
        assert!(sink.out_of_line.is_empty());
        sink.stream
    }

    fn inode(fd: &impl AsFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn fds_in_containers_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let streams: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
            .collect();
        let mut named = HashMap::new();
        named.insert("irc".to_string(), TcpListener::bind("127.0.0.1:0").unwrap());
        let state = (
            streams,
            named,
            Some(Box::new(File::open("/proc/self/exe").unwrap())),
            VecDeque::from([UdpSocket::bind("127.0.0.1:0").unwrap()]),
            String::from("nick"),
        );
        let back = round_trip(&state).unwrap();
        let inodes = |s: &Vec<TcpStream>| s.iter().map(inode).collect::<Vec<_>>();
        assert_eq!(inodes(&back.0), inodes(&state.0));
        assert_eq!(inode(&back.1["irc"]), inode(&state.1["irc"]));
        assert_eq!(
            inode(back.2.as_deref().unwrap()),
            inode(state.2.as_deref().unwrap())
        );
        assert_eq!(inode(&back.3[0]), inode(&state.3[0]));
        assert_eq!(back.4, "nick");
        // Duplicates, not the same fd numbers: the old process keeps its own.
        assert_ne!(back.0[0].as_raw_fd(), state.0[0].as_raw_fd());
    }

    #[test]
    fn large_bytes_travel_out_of_line_without_copies() {
        struct Blobs(Vec<u8>, Vec<u8>, Vec<u8>);
        impl Handover for Blobs {
            const SCHEMA: Schema = Schema::new("Blobs", 1);
            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.bytes(&self.0)?;
                out.bytes(&self.1)?;
                out.bytes(&self.2)
            }
            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                Ok(Blobs(input.bytes()?, input.bytes()?, input.bytes()?))
            }
        }
        /// Records every call it receives.
        #[derive(Default)]
        struct Calls(Vec<(&'static str, usize)>, InMemory);
        impl StateSink for Calls {
            fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
                self.0.push(("data", bytes.len()));
                self.1.data(bytes)
            }
            fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
                self.0.push(("out of line", bytes.len()));
                self.1.out_of_line(bytes)
            }
        }
        let big: Vec<u8> = (0..3 * OUT_OF_LINE_BYTES).map(|i| i as u8).collect();
        let blobs = Blobs(
            big.clone(),
            vec![1, 2, 3],
            big[..OUT_OF_LINE_BYTES].to_vec(),
        );
        let mut sink = Calls::default();
        Encoder::encode(&mut sink, &blobs).unwrap();
        // The two large buffers leave at once, whole, straight from the
        // value's memory; only their lengths and the small one are buffered.
        assert_eq!(
            sink.0,
            vec![
                ("out of line", 3 * OUT_OF_LINE_BYTES),
                ("out of line", OUT_OF_LINE_BYTES),
                // Two 3-byte lengths, and the small buffer inline.
                ("data", 3 + 4 + 3)
            ]
        );
        let Calls(_, memory) = sink;
        let back: Blobs = Decoder::new(&memory.stream, memory.out_of_line, Vec::new())
            .decode()
            .unwrap();
        assert!(back.0 == blobs.0 && back.2 == blobs.2);
        assert_eq!(back.1, [1, 2, 3]);
    }

    #[test]
    fn out_of_line_buffers_must_match_their_announcement() {
        /// A value written with `Encoder::bytes`.
        struct Bytes(Vec<u8>);
        impl Handover for Bytes {
            const SCHEMA: Schema = Schema::new("Bytes", 1);
            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.bytes(&self.0)
            }
            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                input.bytes().map(Bytes)
            }
        }
        let stream = postcard::to_stdvec(&OUT_OF_LINE_BYTES).unwrap();
        let error = |out_of_line: Vec<Vec<u8>>, stream: &[u8]| {
            Decoder::new(stream, out_of_line, Vec::new())
                .decode::<Bytes>()
                .err()
                .unwrap()
                .to_string()
        };
        assert!(error(Vec::new(), &stream).contains("did not arrive"));
        let short = vec![0; OUT_OF_LINE_BYTES - 1];
        assert!(error(vec![short], &stream).contains("65535 arrived"));
        assert!(error(vec![vec![1]], &[0]).contains("not claimed"));
        assert!(error(Vec::new(), &[5, 1]).contains("cut short"));
    }

    #[test]
    fn decoding_refuses_leftovers_and_reused_fds() {
        let file = File::open("/proc/self/exe").unwrap();
        let bytes = {
            let mut sink = InMemory::default();
            Encoder::encode(&mut sink, &file).unwrap();
            sink.stream
        };
        let dup = |n: usize| {
            (0..n)
                .map(|_| file.as_fd().try_clone_to_owned().unwrap())
                .collect::<Vec<_>>()
        };
        // An fd nobody claims.
        let err = Decoder::new(&bytes, Vec::new(), dup(2))
            .decode::<File>()
            .unwrap_err();
        assert!(
            err.to_string().contains("1 received fds were not claimed"),
            "{err}"
        );
        // An index past the table.
        let err = Decoder::new(&bytes, Vec::new(), dup(0))
            .decode::<File>()
            .unwrap_err();
        assert!(
            err.to_string().contains("fd index 0 is out of range"),
            "{err}"
        );
        // The same index twice.
        let twice = [bytes.clone(), bytes.clone()].concat();
        let err = Decoder::new(&twice, Vec::new(), dup(1))
            .decode::<(File, File)>()
            .unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
        // Bytes left over.
        let err = Decoder::new(&twice, Vec::new(), dup(1))
            .decode::<File>()
            .unwrap_err();
        assert!(err.to_string().contains("1 bytes left over"), "{err}");
    }

    #[test]
    fn a_corrupt_length_does_not_allocate_it() {
        // A Vec<u64> claiming u64::MAX / 2 elements, followed by nothing.
        let bytes = stream_of(&(usize::MAX / 2));
        let err = Decoder::new(&bytes, Vec::new(), Vec::new())
            .decode::<Vec<u64>>()
            .unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{err:?}");
    }

    #[test]
    fn buffered_readers_and_writers_keep_their_bytes() {
        use std::io::{BufRead, Read};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        far.write_all(b"PRIVMSG #a :one\r\nPRIVMSG #a :tw").unwrap();
        let mut reader = BufReader::new(near.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "PRIVMSG #a :one\r\n");
        assert_eq!(reader.buffer(), b"PRIVMSG #a :tw");

        let mut writer = BufWriter::with_capacity(100, near);
        writer.write_all(b"PONG :x\r\n").unwrap();
        let mut back = round_trip(&(reader, writer)).unwrap();
        // The half line completes with what arrives later.
        far.write_all(b"o\r\n").unwrap();
        line.clear();
        back.0.read_line(&mut line).unwrap();
        assert_eq!(line, "PRIVMSG #a :two\r\n");
        assert_eq!(back.0.capacity(), 8192);
        // The unwritten bytes are written by the new writer, once.
        assert_eq!(
            (back.1.capacity(), back.1.buffer()),
            (100, &b"PONG :x\r\n"[..])
        );
        back.1.flush().unwrap();
        let mut pong = [0; 9];
        far.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"PONG :x\r\n");
    }

    #[test]
    fn buffer_capacities_are_bounded_in_all() {
        // Found by fuzzing (fuzz/, `frames`): a few bytes made one BufReader
        // reserve 630 MB. Each capacity is allocated up front, up to 1 GiB
        // each, and nothing bounded them in all. Three writers of 1000
        // bytes, against a limit of 2500.
        let writers: Vec<BufWriter<File>> = (0..3)
            .map(|_| BufWriter::with_capacity(1000, File::open("/dev/null").unwrap()))
            .collect();
        let mut sink = InMemory::default();
        let sent: Vec<OwnedFd> = Encoder::encode(&mut sink, &writers)
            .unwrap()
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        let limited = |limit| {
            let fds = sent.iter().map(|fd| fd.try_clone().unwrap()).collect();
            let mut decoder = Decoder::new(&sink.stream, Vec::new(), fds);
            decoder.buffer_capacity_limit = limit;
            decoder.decode::<Vec<BufWriter<File>>>()
        };
        let back = limited(3000).unwrap();
        assert_eq!(back.iter().map(BufWriter::capacity).sum::<usize>(), 3000);
        let err = limited(2500).unwrap_err();
        assert!(
            err.to_string().contains(
                "BufWriter of capacity 1000 would bring the state's buffers to 3000 bytes in all, \
                 past the limit of 2500"
            ),
            "{err}"
        );
        assert_eq!(MAX_BUFFER_CAPACITIES, 4 << 30);
    }

    #[test]
    fn fingerprints_follow_the_contents() {
        assert_ne!(
            <Vec<TcpStream>>::SCHEMA.fingerprint,
            <Vec<File>>::SCHEMA.fingerprint
        );
        assert_ne!(
            <(u8, File)>::SCHEMA.fingerprint,
            <(File, u8)>::SCHEMA.fingerprint
        );
    }
}
