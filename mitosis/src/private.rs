//! What `#[derive(Handover)]` expands to. Not public API: the names and
//! signatures here change with the derive.
//!
//! Each field of a derived type goes through the most specific of three
//! paths, chosen at compile time by method resolution on the field's
//! concrete type ("autoref specialisation"):
//!
//! 1. `Vec<u8>`: [`Encoder::bytes`], at copy speed (an inherent method, which
//!    beats any trait method);
//! 2. a type that implements [`Handover`] (fds, containers of fds, nested
//!    derived types): its own impl (a trait implemented for `Field<T>`);
//! 3. anything else that serde can handle: postcard (a trait implemented
//!    for `&Field<T>`, which method resolution reaches only after autoref).

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::handover::Shapes;
use crate::handover::{Decoder, Encoder, Handover};
use crate::schema::{Schema, Shape};

/// A field being encoded. `(&Field(&value)).encode_field(out)` picks the
/// path for `value`'s type.
pub struct Field<'a, T: ?Sized>(pub &'a T);

impl<'a> Field<'a, Vec<u8>> {
    /// Path 1: a byte vector, in one piece.
    pub fn encode_field(&self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.bytes(self.0)
    }
}

/// Path 2 for encoding.
pub trait EncodeHandover<'a> {
    /// Encodes the field with its `Handover` impl.
    fn encode_field(&self, out: &mut Encoder<'a>) -> Result<(), Error>;
}

impl<'a, T: Handover> EncodeHandover<'a> for Field<'a, T> {
    fn encode_field(&self, out: &mut Encoder<'a>) -> Result<(), Error> {
        self.0.encode(out)
    }
}

/// Path 3 for encoding.
pub trait EncodeSerde<'a> {
    /// Encodes the field with serde.
    fn encode_field(&self, out: &mut Encoder<'a>) -> Result<(), Error>;
}

impl<'a, T: Serialize + ?Sized> EncodeSerde<'a> for &Field<'a, T> {
    fn encode_field(&self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.value(self.0)
    }
}

/// A field being decoded. `(&Slot::<T>::new()).decode_field(input)` picks
/// the path for `T`.
pub struct Slot<T>(PhantomData<fn() -> T>);

impl<T> Slot<T> {
    /// A slot for a `T`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Slot(PhantomData)
    }
}

impl Slot<Vec<u8>> {
    /// Path 1: a byte vector, in one piece.
    pub fn decode_field(&self, input: &mut Decoder<'_>) -> Result<Vec<u8>, Error> {
        input.bytes()
    }
}

/// Path 2 for decoding.
pub trait DecodeHandover {
    /// The field's type.
    type Output;
    /// Decodes the field with its `Handover` impl.
    fn decode_field(&self, input: &mut Decoder<'_>) -> Result<Self::Output, Error>;
}

impl<T: Handover> DecodeHandover for Slot<T> {
    type Output = T;
    fn decode_field(&self, input: &mut Decoder<'_>) -> Result<T, Error> {
        T::decode(input)
    }
}

/// Path 3 for decoding.
pub trait DecodeSerde {
    /// The field's type.
    type Output;
    /// Decodes the field with serde.
    fn decode_field(&self, input: &mut Decoder<'_>) -> Result<Self::Output, Error>;
}

impl<T: DeserializeOwned> DecodeSerde for &Slot<T> {
    type Output = T;
    fn decode_field(&self, input: &mut Decoder<'_>) -> Result<T, Error> {
        input.value()
    }
}

/// The schema of an older version of a type, with that version's shape.
pub fn schema_as_of(declared: &Schema, version: u32, shape: &Shape) -> Schema {
    Schema {
        name: declared.name.clone(),
        version,
        fingerprint: shape.fingerprint(&declared.name, version),
    }
}

/// The shapes a decoder's handover worked out, for working out an older
/// version's.
pub fn shapes<'d>(input: &'d mut Decoder<'_>) -> &'d mut Shapes {
    &mut input.shapes
}

/// The error for a state whose schema is none this type accepts.
pub fn no_migration(declared: &Schema, fingerprint: u64) -> Error {
    Error::Decode {
        detail: format!(
            "{declared} has no migration from the schema with fingerprint {fingerprint:016x}"
        ),
    }
}

/// The error for an enum variant index that the type does not have.
pub fn unknown_variant(ty: &str, index: u32) -> Error {
    Error::Decode {
        detail: format!("{ty} has no variant number {index}"),
    }
}

/// A field's shape, picked the way its encoding is (bytes, `Handover`,
/// serde): `(&Slot::<T>::new()).shape_field(shapes)`.
impl Slot<Vec<u8>> {
    /// Path 1: a byte vector.
    pub fn shape_field(&self, _: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Bytes)
    }
}

/// Path 2 for shapes.
pub trait ShapeHandover {
    /// The field type's own shape.
    fn shape_field(&self, shapes: &mut Shapes) -> Result<Shape, Error>;
}

impl<T: Handover> ShapeHandover for Slot<T> {
    fn shape_field(&self, shapes: &mut Shapes) -> Result<Shape, Error> {
        T::shape(shapes)
    }
}

/// Path 3 for shapes.
pub trait ShapeSerde {
    /// The field type's shape, traced through its `Deserialize` impl.
    fn shape_field(&self, shapes: &mut Shapes) -> Result<Shape, Error>;
}

impl<T: DeserializeOwned + 'static> ShapeSerde for &Slot<T> {
    fn shape_field(&self, shapes: &mut Shapes) -> Result<Shape, Error> {
        shapes.serde::<T>()
    }
}

/// The last resort for shapes, behind a failed `check_field`.
pub trait ShapeUnsupported {
    /// Never called: the derived type does not compile.
    fn shape_field(&mut self, shapes: &mut Shapes) -> Result<Shape, Error>;
}

impl<T> ShapeUnsupported for &Slot<T> {
    fn shape_field(&mut self, _: &mut Shapes) -> Result<Shape, Error> {
        unreachable!("a field that cannot be handed over fails to compile")
    }
}

// Fields whose type cannot be handed over: one readable error, spanned on
// the field's type, instead of a failed method call on the helpers above.
//
// For every field sent by the first three paths, the derive emits
// `Slot::<T>::new().check_field()`, spanned on the field's type. Method
// resolution picks `CheckHandover` for a `Handover` type (by value), then
// `CheckSerde` for a serde one (after autoref), and otherwise
// `CheckUnsupported` (after `&mut` autoref), whose bound `T: HandedOver`
// fails with the message on `HandedOver`. The call borrows nothing itself,
// so that lints on user code (clippy's `needless_borrow`) have nothing to
// say about it. `EncodeUnsupported` and `DecodeUnsupported` are the last
// resort of `encode_field` and `decode_field` (also after `&mut` autoref),
// so that those calls do not fail too; they are never run, because a type
// that reaches them fails `check_field` at compile time.

/// The bound a field's type fails when it takes none of the paths. No type
/// implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be handed over: it is neither `Handover` nor serde \
               `Serialize + Deserialize`",
    label = "this field's type cannot be handed over",
    note = "derive `Handover` for it, or serde's `Serialize` and `Deserialize`; or mark the \
            field `#[handover(with = \"module\")]`, `#[handover(fd)]` or `#[handover(skip)]`",
    note = "tokio's and tokio-util's sockets and streams are `Handover` with mitosis's `tokio` \
            feature; a rustls connection crosses as a `mitosis::tls::TlsStream`, with its `tls` \
            feature"
)]
pub trait HandedOver {}

/// The check for a `Handover` type: passes.
pub trait CheckHandover {
    /// Passes.
    fn check_field(self);
}

impl<T: Handover> CheckHandover for Slot<T> {
    fn check_field(self) {}
}

/// The check for a serde type: passes.
pub trait CheckSerde {
    /// Passes.
    fn check_field(&self) {}
}

impl<T: Serialize + DeserializeOwned> CheckSerde for Slot<T> {}

/// The check for any other type: fails to compile, naming `T`.
pub trait CheckUnsupported<T> {
    /// Requires `T: HandedOver`, which no type is.
    fn check_field(&mut self)
    where
        T: HandedOver,
    {
    }
}

impl<T> CheckUnsupported<T> for Slot<T> {}

/// The last resort for encoding, behind a failed `check_field`.
pub trait EncodeUnsupported<'a> {
    /// Never called: the derived type does not compile.
    fn encode_field(&mut self, out: &mut Encoder<'a>) -> Result<(), Error>;
}

impl<'a, T: ?Sized> EncodeUnsupported<'a> for &Field<'a, T> {
    fn encode_field(&mut self, _: &mut Encoder<'a>) -> Result<(), Error> {
        unreachable!("a field that cannot be handed over fails to compile")
    }
}

/// The last resort for decoding, behind a failed `check_field`.
pub trait DecodeUnsupported {
    /// The field's type.
    type Output;
    /// Never called: the derived type does not compile.
    fn decode_field(&mut self, input: &mut Decoder<'_>) -> Result<Self::Output, Error>;
}

impl<T> DecodeUnsupported for &Slot<T> {
    type Output = T;
    fn decode_field(&mut self, _: &mut Decoder<'_>) -> Result<T, Error> {
        unreachable!("a field that cannot be handed over fails to compile")
    }
}

/// What `#[handover(fd)]` asks of a field's type. Every type that is
/// `AsFd + From<OwnedFd>` is.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be handed over as a plain fd: `#[handover(fd)]` needs a type that \
               is `AsFd` and `From<OwnedFd>`",
    label = "this field's type is not `AsFd + From<OwnedFd>`",
    note = "tokio's sockets are neither, but are `Handover` with mitosis's `tokio` feature: \
            drop `#[handover(fd)]` and enable it"
)]
pub trait FdField: std::os::fd::AsFd + From<std::os::fd::OwnedFd> {}

impl<T: std::os::fd::AsFd + From<std::os::fd::OwnedFd>> FdField for T {}

/// Encodes a `#[handover(fd)]` field.
pub fn encode_fd<'a, T: FdField>(value: &'a T, out: &mut Encoder<'a>) -> Result<(), Error> {
    out.fd(value.as_fd())
}

/// Decodes a `#[handover(fd)]` field.
pub fn decode_fd<T: FdField>(input: &mut Decoder<'_>) -> Result<T, Error> {
    input.fd().map(T::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::fs::File;

    /// What derived code does for one field of a concrete type: returns the
    /// bytes written and the number of fds put in the side table.
    macro_rules! encode_one {
        ($value:expr) => {{
            let value = $value;
            let mut sink = crate::handover::InMemory::default();
            let fds = {
                let mut out = Encoder::new(&mut sink);
                (&Field(&value)).encode_field(&mut out).unwrap();
                let fds = out.fds.len();
                out.serializer.output.flush_buffer().unwrap();
                fds
            };
            (sink.stream, fds)
        }};
    }

    #[test]
    fn each_field_takes_its_path() {
        // Bytes: a varint length and the bytes, as serde_bytes writes them.
        let (bytes, fds) = encode_one!(vec![1u8, 2, 3]);
        assert_eq!((bytes, fds), (vec![3, 1, 2, 3], 0));
        // An fd type: an index into the side table.
        let (bytes, fds) = encode_one!(File::open("/proc/self/exe").unwrap());
        assert_eq!((bytes, fds), (vec![0], 1));
        // A type that is only Serialize.
        #[derive(serde::Serialize)]
        struct Plain {
            a: u8,
        }
        let (bytes, fds) = encode_one!(Plain { a: 9 });
        assert_eq!((bytes, fds), (vec![9], 0));
        // A map of plain data encodes as postcard would.
        let map: HashMap<String, Vec<String>> = [("k".to_string(), vec!["v".to_string()])].into();
        let (bytes, _) = encode_one!(map.clone());
        assert_eq!(bytes, postcard::to_stdvec(&map).unwrap());
    }

    #[test]
    // The borrow is what selects the serde path in derived code.
    #[allow(clippy::needless_borrow)]
    fn decoding_takes_the_same_paths() {
        let mut input = Decoder::new(&[3, 1, 2, 3, 7], Vec::new(), Vec::new());
        let bytes: Vec<u8> = (&Slot::<Vec<u8>>::new()).decode_field(&mut input).unwrap();
        let seven: u32 = (&Slot::<u32>::new()).decode_field(&mut input).unwrap();
        assert_eq!((bytes, seven), (vec![1, 2, 3], 7));
    }
}
