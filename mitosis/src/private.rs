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
use crate::handover::{Decoder, Encoder, Handover};
use crate::schema::{Schema, fnv1a};

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

/// The fingerprint of a field's type, for the schema of the type holding
/// it: the type's own schema fingerprint when it implements `Handover`
/// (so that a change inside a nested derived type changes the outer
/// fingerprint too), and 0 otherwise, where the type as written is all
/// there is to go on.
pub struct Probe<T: ?Sized>(PhantomData<T>);

impl<T: Handover> Probe<T> {
    /// `T`'s schema fingerprint.
    pub const FINGERPRINT: u64 = Schema::fingerprint_of(T::SCHEMA);
}

/// The fallback for [`Probe`] on types that do not implement `Handover`.
pub trait NotHandover {
    /// No nested schema.
    const FINGERPRINT: u64 = 0;
}

impl<T: ?Sized> NotHandover for Probe<T> {}

/// The error for an enum variant index that the type does not have.
pub fn unknown_variant(ty: &str, index: u32) -> Error {
    Error::Decode {
        detail: format!("{ty} has no variant number {index}"),
    }
}

/// One entry of a derived type's shape: a field (or variant) name, its type
/// as written, and the nested fingerprint from [`Probe`].
pub type Part = (&'static str, &'static str, u64);

/// A derived type's schema: its name and version, and every part of its
/// shape, in order.
pub const fn schema(name: &'static str, version: u32, parts: &[Part]) -> Schema {
    let mut fingerprint = Schema::fingerprint_of(Schema::new(name, version));
    let mut i = 0;
    while i < parts.len() {
        let (part, ty, nested) = parts[i];
        // A separator byte between the pieces, so that ("ab", "c") and
        // ("a", "bc") differ.
        fingerprint = fnv1a(fnv1a(fingerprint, part.as_bytes()), &[0xff]);
        fingerprint = fnv1a(fnv1a(fingerprint, ty.as_bytes()), &[0xfe]);
        fingerprint = fnv1a(fingerprint, &nested.to_le_bytes());
        i += 1;
    }
    Schema {
        name: std::borrow::Cow::Borrowed(name),
        version,
        fingerprint,
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
            field `#[handover(with = \"module\")]`, `#[handover(fd)]` or `#[handover(skip)]`"
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

    #[test]
    fn probes_see_nested_schemas_only() {
        use NotHandover as _;
        assert_eq!(Probe::<File>::FINGERPRINT, File::SCHEMA.fingerprint);
        assert_eq!(Probe::<std::sync::Mutex<u8>>::FINGERPRINT, 0);
    }

    #[test]
    fn schemas_depend_on_every_part() {
        const A: Schema = schema("S", 1, &[("a", "u8", 0)]);
        assert_ne!(
            A.fingerprint,
            schema("S", 1, &[("a", "u16", 0)]).fingerprint
        );
        assert_ne!(A.fingerprint, schema("S", 1, &[("b", "u8", 0)]).fingerprint);
        assert_ne!(A.fingerprint, schema("S", 1, &[("a", "u8", 1)]).fingerprint);
        assert_ne!(A.fingerprint, schema("S", 2, &[("a", "u8", 0)]).fingerprint);
        assert_ne!(
            schema("S", 1, &[("ab", "c", 0)]).fingerprint,
            schema("S", 1, &[("a", "bc", 0)]).fingerprint
        );
    }
}
