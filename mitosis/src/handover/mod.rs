//! The `Handover` trait: how a state value crosses from the old process to
//! the new one.
//!
//! Plain data is encoded with postcard into the state stream. A value that
//! owns a file descriptor writes an index into the stream instead, and its fd
//! goes into a side table that travels over the fd channel (PROTOCOL.md,
//! steps 6 and 7). Decoding reverses that: an index in the stream takes the fd
//! at that place in the received table.
//!
//! [`Encoder`] and [`Decoder`] are the two ends; `impls` and `buffered` hold
//! the implementations for std's types.

// `pub(crate)`: the tokio feature's buffered types share its encoding and limits.
pub(crate) mod buffered;
mod decoder;
mod encoder;
mod impls;
mod shapes;

pub use decoder::Decoder;
pub use encoder::Encoder;
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) use encoder::InMemory;
#[cfg(feature = "test-hooks")]
pub(crate) use encoder::OUT_OF_LINE_BYTES;
pub(crate) use encoder::StateSink;
pub use shapes::Shapes;

use crate::error::Error;
use crate::schema::{Schema, Shape};

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
/// The derive declares [`SCHEMA`](Handover::SCHEMA): a name (by default the
/// type's module path and name) and a version. The fingerprint that the
/// handshake compares, before anything is decoded, is [`Schema::of`]: the
/// name, the version, and the whole [`Shape`] of the encoding, worked out
/// once per handover. The shape covers:
///
/// - every sent field's name, in order (skipped fields are left out: they do
///   not change what crosses);
/// - each field's encoding, seen through to what postcard reads and writes:
///   integer widths, `Option`s, sequences, maps, tuples, enum variants and
///   their order, nested structs, in this crate or any other. A serde type
///   is traced through its `Deserialize` impl (with serde-reflection); a
///   `Handover` type gives its own shape; an fd gives its kind;
/// - not how a type's path is spelled, nor a type's own name:
///   `TcpListener` and `std::net::TcpListener` are the same, and so are two
///   serde structs of the same fields under different names.
///
/// A serde type that cannot be traced (one that asks for
/// `deserialize_any`, such as an untagged enum) fails the handover with
/// [`Error::Untraceable`], naming it; a handover never falls back to a
/// type's name. A field handed over `with` a module is known only by its
/// type and module as written, and a hand-written `Handover` impl only by
/// its `SCHEMA`, unless it implements [`shape`](Handover::shape).
///
/// When the new process refuses the old state, both processes' errors name
/// what differs, field by field:
/// `field 'config.beta': was u32 at position 2, now position 1`.
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
/// ### Evolving a state in place
///
/// Most changes add a field or remove one. Neither needs a copy of the old
/// type: mark a field added in version N with `#[handover(since = N)]` (it
/// takes `Default`, or `default = "function"`, when an older state lacks
/// it), and list a removed field on the type with `removed(name = "...",
/// ty = "Type", since = N, after = "field")` (`after` names the field it
/// followed; without it, it came first). The derive works out each older
/// version's shape from this one definition, accepts states of all of
/// them, skips a removed field in an older state (closing any fd it holds),
/// and fills in an added one:
///
/// ```
/// use mitosis::Handover;
///
/// // Version 1 was { generation: u64, nick: String, legacy: u32 }.
/// #[derive(Handover)]
/// #[handover(name = "bot::State", version = 3, removed(name = "legacy", ty = "u32", since = 3, after = "nick"))]
/// struct State {
///     generation: u64,
///     nick: String,
///     #[handover(since = 2, default)]
///     count: u64,
/// }
///
/// let versions: Vec<u32> = State::accepted(&mut mitosis::Shapes::new())?
///     .iter()
///     .map(|schema| schema.version)
///     .collect();
/// assert_eq!(versions, [3, 2, 1]);
/// # Ok::<(), mitosis::Error>(())
/// ```
///
/// `since` and `removed` apply to structs with named fields. For a real
/// transformation (a field renamed, a type changed, an enum reshaped) use
/// `migrate_from`; the two mix, and a type tries its own older versions
/// before its `migrate_from` chain.
///
/// `migrate_from(Old)` lets this type be built from an `Old` state, through
/// `impl From<Old> for Self`. `Old` is a copy of the previous build's type
/// with the same shape (same fields in the same order, encoded the same
/// way, same version), renamed, with `name` set to the previous name. It
/// can migrate from an older type in turn, so chains work. The new process
/// offers all of them in the handshake, and the old process sends its state
/// only if one matches:
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
/// let accepted = State::accepted(&mut mitosis::Shapes::new())?;
/// assert_eq!(accepted, [mitosis::Schema::of::<State>()?, mitosis::Schema::of::<StateV1>()?]);
/// # Ok::<(), mitosis::Error>(())
/// ```
///
/// `crate = "path"` makes the generated code reach mitosis through `path`
/// instead of `::mitosis`, for a crate that re-exports mitosis, so that its
/// users can derive `Handover` without depending on mitosis themselves:
///
/// ```
/// // A framework crate would have `pub use mitosis;` at its root.
/// mod framework {
///     pub use mitosis;
/// }
///
/// #[derive(framework::mitosis::Handover)]
/// #[handover(crate = "framework::mitosis", version = 1)]
/// struct State {
///     generation: u64,
/// }
/// assert_eq!(<State as framework::mitosis::Handover>::SCHEMA.version, 1);
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
///         out.value(&(value.elapsed().as_millis() as u64))
///     }
///     pub fn decode(input: &mut mitosis::Decoder<'_>) -> Result<Instant, mitosis::Error> {
///         let ago: u64 = input.value()?;
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
/// Misuse (an unknown or duplicate attribute, a `crate` that is not a path,
/// `skip` on a type without `Default`, a union, `migrate_from` of a type
/// that is not `Handover`, a field given two of `skip`, `with` and `fd`, or
/// a field whose type is neither `Handover` nor serde) is a compile error
/// spanned on the offending token. Every misuse of the attributes is
/// reported at once, not only the first.
///
/// # Implementing it by hand
///
/// Write plain fields with [`Encoder::value`] (or [`Encoder::bytes`] for a
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
///         out.value(&self.nick)?;
///         self.conn.encode(out)?;
///         out.bytes(&self.seen)
///     }
///
///     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
///         Ok(State {
///             nick: input.value()?,
///             conn: TcpStream::decode(input)?,
///             seen: input.bytes()?,
///         })
///     }
/// }
/// ```
pub trait Handover: Sized + 'static {
    /// The identity of this type's encoding. Change the version whenever the
    /// encoding changes, so that an old state is refused instead of being
    /// decoded into the wrong shape.
    const SCHEMA: Schema;

    /// Writes the value: plain data into the stream, fds into the side table.
    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error>;

    /// Reads a value written by [`encode`](Handover::encode).
    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error>;

    /// The shape of this type's encoding, which its fingerprint covers
    /// (see [`Schema::of`]). `#[derive(Handover)]` works it out from the
    /// fields; the default, for a hand-written impl, is
    /// [`Shape::Opaque`]: its `SCHEMA`'s name and version, nothing more.
    ///
    /// ```
    /// use mitosis::{Handover, Shape, Shapes};
    /// assert_eq!(Vec::<u32>::shape(&mut Shapes::new())?, Shape::Seq(Box::new(Shape::U32)));
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        let _ = shapes;
        Ok(Shape::Opaque {
            name: Self::SCHEMA.name.into_owned(),
            version: Self::SCHEMA.version,
        })
    }

    /// The schemas a state of this type can be built from: its own first,
    /// then, newest first, those it migrates from. The new process offers
    /// them in the handshake, and the old process sends its state only if
    /// its schema is among them.
    ///
    /// `#[derive(Handover)]` with `#[handover(migrate_from(Old))]` fills this
    /// in; by hand:
    ///
    /// ```
    /// # use mitosis::{Decoder, Encoder, Error, Handover, Schema, Shapes};
    /// struct V1(u32);
    /// struct V2(u64);
    /// # impl Handover for V1 {
    /// #     const SCHEMA: Schema = Schema::new("V", 1);
    /// #     fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> { out.value(&self.0) }
    /// #     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> { input.value().map(V1) }
    /// # }
    /// impl Handover for V2 {
    ///     const SCHEMA: Schema = Schema::new("V", 2);
    ///     fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
    ///         out.value(&self.0)
    ///     }
    ///     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
    ///         input.value().map(V2)
    ///     }
    ///     fn accepted(shapes: &mut Shapes) -> Result<Vec<Schema>, Error> {
    ///         let mut accepted = vec![shapes.schema::<Self>()?];
    ///         accepted.extend(V1::accepted(shapes)?);
    ///         Ok(accepted)
    ///     }
    ///     fn decode_from(fingerprint: u64, input: &mut Decoder<'_>) -> Result<Self, Error> {
    ///         if fingerprint == input.fingerprint_of::<Self>()? {
    ///             Self::decode(input)
    ///         } else {
    ///             V1::decode_from(fingerprint, input).map(|old| V2(old.0.into()))
    ///         }
    ///     }
    /// }
    /// let accepted = V2::accepted(&mut Shapes::new())?;
    /// assert_eq!((accepted[0].version, accepted[1].version), (2, 1));
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    fn accepted(shapes: &mut Shapes) -> Result<Vec<Schema>, Error> {
        Ok(vec![shapes.schema::<Self>()?])
    }

    /// Reads a value written with the schema whose fingerprint is
    /// `fingerprint`, one of [`accepted`](Handover::accepted): `decode` for
    /// this type's own schema, a migration for an older one. See
    /// [`accepted`](Handover::accepted) for an example.
    fn decode_from(fingerprint: u64, input: &mut Decoder<'_>) -> Result<Self, Error> {
        if fingerprint == input.fingerprint_of::<Self>()? {
            Self::decode(input)
        } else {
            Err(Error::Decode {
                detail: format!(
                    "{} has no migration from the schema with fingerprint {fingerprint:016x}",
                    Self::SCHEMA
                ),
            })
        }
    }
}

#[cfg(test)]
impl Decoder<'_> {
    /// Decodes a value of `S`'s own schema.
    pub(crate) fn decode<S: Handover>(mut self) -> Result<S, Error> {
        let fingerprint = self.fingerprint_of::<S>()?;
        self.decode_from(fingerprint)
    }
}

/// Helpers for the tests of this module's parts.
#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsFd;

    use super::*;
    pub(crate) fn round_trip<S: Handover>(value: &S) -> Result<S, Error> {
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
    pub(crate) fn stream_of<S: Handover>(value: &S) -> Vec<u8> {
        let mut sink = InMemory::default();
        Encoder::encode(&mut sink, value).unwrap();
        assert!(sink.out_of_line.is_empty());
        sink.stream
    }
    pub(crate) fn inode(fd: &impl AsFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }
}
