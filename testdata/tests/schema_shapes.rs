//! Schema fidelity (issue 12, 6), in memory: for pairs of states whose one
//! field is a plain serde struct of varying shape, either the two
//! fingerprints match and a value encoded as one decodes as the other to
//! the same values, or the fingerprints differ.
//!
//! Rust types cannot be made at run time, so the shapes are a fixed family
//! of twelve, `s0`..`s11`, each a `State { inner: Inner }` named
//! `testdata::Shapes` v1, whose `Inner` draws its fields from u8, u32, u64,
//! String, `Option<u32>` and `Vec<u16>`: reordered, widened, added,
//! dropped, and one (`s1`) the same as `s0` with its types spelled as
//! paths. proptest picks the pairs and the values.
//!
//! Within this family no two shapes differ by a mere rename, so the test
//! also holds the fingerprint to the shape exactly: equal shapes must have
//! equal fingerprints, and different shapes different ones (`s0` and `s4`,
//! a u32 widened to u64, decode each other's values intact through
//! postcard's varints, and must still be told apart).

use mitosis::{Handover, Schema};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestCaseError;
use serde::{Deserialize, Serialize};

/// A field's value, whatever its type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    U8(u8),
    U32(u32),
    U64(u64),
    Text(String),
    MaybeU32(Option<u32>),
    Ports(Vec<u16>),
}

/// How many fields a shape has at most.
const MAX_FIELDS: usize = 6;

/// The values the shapes' fields are built from: the field at position `k`
/// of type `T` takes the `k`-th value of `T`'s kind.
#[derive(Debug, Clone)]
struct Pool {
    u8s: [u8; MAX_FIELDS],
    u32s: [u32; MAX_FIELDS],
    u64s: [u64; MAX_FIELDS],
    texts: [String; MAX_FIELDS],
    maybes: [Option<u32>; MAX_FIELDS],
    ports: [Vec<u16>; MAX_FIELDS],
}

fn pool() -> impl Strategy<Value = Pool> {
    (
        any::<[u8; MAX_FIELDS]>(),
        any::<[u32; MAX_FIELDS]>(),
        any::<[u64; MAX_FIELDS]>(),
        proptest::array::uniform6(proptest::collection::vec(any::<char>(), 0..8)),
        any::<[Option<u32>; MAX_FIELDS]>(),
        proptest::array::uniform6(proptest::collection::vec(any::<u16>(), 0..5)),
    )
        .prop_map(|(u8s, u32s, u64s, texts, maybes, ports)| Pool {
            u8s,
            u32s,
            u64s,
            texts: texts.map(|chars| chars.into_iter().collect()),
            maybes,
            ports,
        })
}

/// A field type of the family.
trait Kind: Sized {
    /// The type's name in a shape, however it is spelled.
    const NAME: &'static str;
    fn pick(pool: &Pool, k: usize) -> Self;
    fn value(&self) -> Value;
}

macro_rules! kind {
    ($ty:ty, $name:literal, $pool:ident, $variant:ident) => {
        impl Kind for $ty {
            const NAME: &'static str = $name;
            fn pick(pool: &Pool, k: usize) -> Self {
                pool.$pool[k].clone()
            }
            fn value(&self) -> Value {
                Value::$variant(self.clone())
            }
        }
    };
}

kind!(u8, "u8", u8s, U8);
kind!(u32, "u32", u32s, U32);
kind!(u64, "u64", u64s, U64);
kind!(String, "String", texts, Text);
kind!(Option<u32>, "Option<u32>", maybes, MaybeU32);
kind!(Vec<u16>, "Vec<u16>", ports, Ports);

/// What the test knows of a shape of the family.
trait Written: Handover {
    const NAME: &'static str;
    /// The fields of `Inner`: names and kinds, in order.
    fn written() -> Vec<(&'static str, &'static str)>;
    fn build(pool: &Pool) -> Self;
    fn values(&self) -> Vec<(&'static str, Value)>;
}

macro_rules! shapes {
    ($($module:ident { $($field:ident: $ty:ty),* $(,)? })*) => {
        $(
            mod $module {
                use super::*;

                #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
                pub struct Inner {
                    $(pub $field: $ty,)*
                }

                #[derive(Debug, Handover)]
                #[handover(version = 1, name = "testdata::Shapes")]
                pub struct State {
                    pub inner: Inner,
                }

                impl Written for State {
                    const NAME: &'static str = stringify!($module);

                    fn written() -> Vec<(&'static str, &'static str)> {
                        vec![$((stringify!($field), <$ty as Kind>::NAME)),*]
                    }

                    fn build(pool: &Pool) -> Self {
                        let mut k = 0..;
                        State {
                            inner: Inner {
                                $($field: <$ty as Kind>::pick(pool, k.next().unwrap()),)*
                            },
                        }
                    }

                    fn values(&self) -> Vec<(&'static str, Value)> {
                        vec![$((stringify!($field), Kind::value(&self.inner.$field))),*]
                    }
                }
            }
        )*

        /// `check::<A, B>` for every pair of shapes, `[a][b]`.
        fn checks() -> Vec<Vec<Check>> {
            shapes!(@rows [$($module),*] $($module),*)
        }
    };
    (@rows $all:tt $($a:ident),*) => {
        vec![$(shapes!(@row $a $all)),*]
    };
    (@row $a:ident [$($b:ident),*]) => {
        vec![$(check::<$a::State, $b::State> as Check),*]
    };
}

shapes! {
    s0 { id: u32, flag: u8, label: String }
    s1 { id: ::core::primitive::u32, flag: ::core::primitive::u8, label: ::std::string::String }
    s2 { flag: u8, id: u32, label: String }
    s3 { id: u32, label: String, flag: u8 }
    s4 { id: u64, flag: u8, label: String }
    s5 { id: u32, flag: u8, label: String, total: u64 }
    s6 { id: u32, label: String }
    s7 { id: u32, flag: u8, label: String, limit: Option<u32> }
    s8 { id: u32, flag: u8, label: String, ports: Vec<u16> }
    s9 { id: u32, flag: u8, label: String, limit: Option<u32>, ports: Vec<u16> }
    s10 { limit: Option<u32>, ports: Vec<u16> }
    s11 { ports: Vec<u16>, limit: Option<u32>, total: u64 }
}

const SHAPES: usize = 12;

type Check = fn(&Pool) -> Result<(), TestCaseError>;

/// What `Schema::of` gives, whether a `Schema`, a reference to one, or a
/// `Result` of either.
trait Fingerprint {
    fn fingerprint(self) -> u64;
}

impl Fingerprint for Schema {
    fn fingerprint(self) -> u64 {
        self.fingerprint
    }
}

impl Fingerprint for &Schema {
    fn fingerprint(self) -> u64 {
        self.fingerprint
    }
}

impl<T: Fingerprint, E: std::fmt::Display> Fingerprint for Result<T, E> {
    fn fingerprint(self) -> u64 {
        match self {
            Ok(schema) => schema.fingerprint(),
            Err(e) => panic!("Schema::of failed on a traceable shape: {e}"),
        }
    }
}

fn fingerprint<S: Written>() -> u64 {
    Schema::of::<S>().fingerprint()
}

/// The property, for a value of `A` built from `pool` and the type `B`.
fn check<A: Written, B: Written>(pool: &Pool) -> Result<(), TestCaseError> {
    let (a, b) = (fingerprint::<A>(), fingerprint::<B>());
    let same_shape = A::written() == B::written();
    prop_assert_eq!(
        a == b,
        same_shape,
        "{} {:?} ({:016x}) and {} {:?} ({:016x}): the fingerprints {} but the shapes {}",
        A::NAME,
        A::written(),
        a,
        B::NAME,
        B::written(),
        b,
        if a == b { "match" } else { "differ" },
        if same_shape { "match" } else { "differ" },
    );
    if a == b {
        let value = A::build(pool);
        let decoded: B = mitosis::testing::round_trip::<A, B>(&value).map_err(|e| {
            TestCaseError::fail(format!(
                "{} -> {}: equal fingerprints, but the value did not decode: {e}",
                A::NAME,
                B::NAME
            ))
        })?;
        prop_assert_eq!(
            decoded.values(),
            value.values(),
            "{} -> {}: equal fingerprints, so the values cross intact",
            A::NAME,
            B::NAME
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn equal_fingerprints_mean_the_values_cross_intact(
        a in 0..SHAPES,
        b in 0..SHAPES,
        pool in pool(),
    ) {
        checks()[a][b](&pool)?;
    }
}

/// Every pair once, so that none is left to chance.
#[test]
fn every_pair_of_shapes() {
    let checks = checks();
    assert_eq!(checks.len(), SHAPES);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for (a, row) in checks.iter().enumerate() {
        assert_eq!(row.len(), SHAPES);
        for (b, check) in row.iter().enumerate() {
            let pool = pool().new_tree(&mut runner).expect("a pool").current();
            if let Err(e) = check(&pool) {
                panic!("s{a} -> s{b}: {e}");
            }
        }
    }
}

/// Decodes `value`'s encoding as `B`, skipping the schema check: what
/// postcard alone makes of it.
fn decode_as<A: Handover, B: Handover>(value: &A) -> Result<B, mitosis::Error> {
    let encoded = mitosis::testing::encode_state(value)?;
    mitosis::testing::decode_state::<B>(&encoded.stream, encoded.out_of_line, encoded.fds)
}

/// The family holds what the property needs: identical shapes spelled
/// otherwise, and different shapes that postcard decodes as each other
/// without an error, which only the fingerprint can tell apart.
#[test]
fn the_family_has_equal_and_confusable_shapes() {
    assert_eq!(s0::State::written(), s1::State::written());
    let value = s0::State {
        inner: s0::Inner {
            id: 5,
            flag: 6,
            label: "x".into(),
        },
    };
    let widened: s4::State = decode_as(&value).expect("s0's bytes decode as s4");
    assert_eq!(
        (
            widened.inner.id,
            widened.inner.flag,
            widened.inner.label.as_str()
        ),
        (5, 6, "x"),
        "varints: the same values"
    );
    assert_ne!(s0::State::written(), s4::State::written());
    let swapped: s2::State = decode_as(&value).expect("s0's bytes decode as s2");
    assert_eq!((swapped.inner.flag, swapped.inner.id), (5, 6), "swapped");
}
