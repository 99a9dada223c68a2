//! [`Shape`]: what a state's encoding looks like, as postcard reads and
//! writes it, for the fingerprint and for naming the difference between two
//! builds.

use std::fmt;

use super::fnv1a;

/// The shape of a value's encoding: what the new process must read, in
/// order, to decode what the old process wrote.
///
/// The fingerprint covers everything that changes the bytes or their
/// meaning: field and variant names and their order, integer widths,
/// options, sequences, maps, tuples, nested types, and the kind of each fd.
/// It leaves out the names of types (a struct's or enum's own name, how a
/// path is spelled), which postcard never writes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shape {
    /// `()`.
    Unit,
    /// `bool`.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64` (and `usize`).
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// A string.
    Str,
    /// A byte buffer (`Vec<u8>` in a derived type, `serde_bytes`).
    Bytes,
    /// `Option<T>`.
    Option(Box<Shape>),
    /// A sequence: `Vec<T>`, `VecDeque<T>`, a set.
    Seq(Box<Shape>),
    /// A map: `HashMap<K, V>`, `BTreeMap<K, V>`.
    Map(Box<Shape>, Box<Shape>),
    /// A tuple, or a tuple struct's or tuple variant's fields.
    Tuple(Vec<Shape>),
    /// `[T; N]`.
    Array(Box<Shape>, u64),
    /// A struct with named fields, or a struct variant's fields.
    Struct {
        /// The type's name, for people; not in the fingerprint.
        name: String,
        /// Each field's name and shape, in order.
        fields: Vec<(String, Shape)>,
    },
    /// An enum.
    Enum {
        /// The type's name, for people; not in the fingerprint.
        name: String,
        /// Each variant's name and the shape of its fields (a unit variant
        /// has an empty [`Shape::Tuple`]), in order.
        variants: Vec<(String, Shape)>,
    },
    /// A file descriptor, crossing over the fd channel, of this kind
    /// (`TcpStream`, `File`, ...).
    Fd(String),
    /// A type that describes itself only by a name and a version: a
    /// hand-written `Handover` impl without a `shape`, or a field handed
    /// over `with` a module.
    Opaque {
        /// The name.
        name: String,
        /// The version.
        version: u32,
    },
    /// A recursive type's reference to itself: the named container `depth`
    /// levels up.
    Recursive {
        /// That container's name, for people.
        name: String,
        /// How many named containers up it is, from 0.
        depth: u32,
    },
}

impl Shape {
    /// The fingerprint of a schema named `name`, at `version`, with this
    /// shape.
    pub(crate) fn fingerprint(&self, name: &str, version: u32) -> u64 {
        let mut hash = super::Schema::fingerprint_of(super::Schema::new("", 0));
        hash = fnv1a(hash, name.as_bytes());
        hash = fnv1a(hash, &[0xff]);
        hash = fnv1a(hash, &version.to_le_bytes());
        self.hash_into(hash)
    }

    /// The shape's own hash, without a name or version.
    fn digest(&self) -> u64 {
        self.hash_into(0xcbf2_9ce4_8422_2325)
    }

    /// Folds the shape into `hash`: a tag per node, then its contents, with
    /// lengths before lists so that no two shapes write the same bytes.
    fn hash_into(&self, mut hash: u64) -> u64 {
        let tag = |hash: u64, tag: u8| fnv1a(hash, &[tag]);
        let text = |hash: u64, text: &str| {
            let hash = fnv1a(hash, &(text.len() as u64).to_le_bytes());
            fnv1a(hash, text.as_bytes())
        };
        let count = |hash: u64, n: usize| fnv1a(hash, &(n as u64).to_le_bytes());
        match self {
            Shape::Unit => tag(hash, 1),
            Shape::Bool => tag(hash, 2),
            Shape::I8 => tag(hash, 3),
            Shape::I16 => tag(hash, 4),
            Shape::I32 => tag(hash, 5),
            Shape::I64 => tag(hash, 6),
            Shape::I128 => tag(hash, 7),
            Shape::U8 => tag(hash, 8),
            Shape::U16 => tag(hash, 9),
            Shape::U32 => tag(hash, 10),
            Shape::U64 => tag(hash, 11),
            Shape::U128 => tag(hash, 12),
            Shape::F32 => tag(hash, 13),
            Shape::F64 => tag(hash, 14),
            Shape::Char => tag(hash, 15),
            Shape::Str => tag(hash, 16),
            Shape::Bytes => tag(hash, 17),
            Shape::Option(inner) => inner.hash_into(tag(hash, 18)),
            Shape::Seq(inner) => inner.hash_into(tag(hash, 19)),
            Shape::Map(key, value) => value.hash_into(key.hash_into(tag(hash, 20))),
            Shape::Tuple(items) => {
                hash = count(tag(hash, 21), items.len());
                items.iter().fold(hash, |hash, item| item.hash_into(hash))
            }
            Shape::Array(item, len) => item.hash_into(fnv1a(tag(hash, 22), &len.to_le_bytes())),
            Shape::Struct { fields, .. } => {
                hash = count(tag(hash, 23), fields.len());
                fields.iter().fold(hash, |hash, (name, shape)| {
                    shape.hash_into(text(hash, name))
                })
            }
            Shape::Enum { variants, .. } => {
                hash = count(tag(hash, 24), variants.len());
                variants.iter().fold(hash, |hash, (name, shape)| {
                    shape.hash_into(text(hash, name))
                })
            }
            Shape::Fd(kind) => text(tag(hash, 25), kind),
            Shape::Opaque { name, version } => {
                fnv1a(text(tag(hash, 26), name), &version.to_le_bytes())
            }
            Shape::Recursive { depth, .. } => fnv1a(tag(hash, 27), &depth.to_le_bytes()),
        }
    }

    /// Whether two shapes encode the same way (names of types aside).
    pub(crate) fn same_encoding(&self, other: &Shape) -> bool {
        self.digest() == other.digest()
    }
}

impl fmt::Display for Shape {
    /// A short, Rust-like name: `u32`, `Option<String>`, `Vec<u8>`, or a
    /// struct's or enum's name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, items: &[Shape]| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        };
        match self {
            Shape::Unit => f.write_str("()"),
            Shape::Bool => f.write_str("bool"),
            Shape::I8 => f.write_str("i8"),
            Shape::I16 => f.write_str("i16"),
            Shape::I32 => f.write_str("i32"),
            Shape::I64 => f.write_str("i64"),
            Shape::I128 => f.write_str("i128"),
            Shape::U8 => f.write_str("u8"),
            Shape::U16 => f.write_str("u16"),
            Shape::U32 => f.write_str("u32"),
            Shape::U64 => f.write_str("u64"),
            Shape::U128 => f.write_str("u128"),
            Shape::F32 => f.write_str("f32"),
            Shape::F64 => f.write_str("f64"),
            Shape::Char => f.write_str("char"),
            Shape::Str => f.write_str("String"),
            Shape::Bytes => f.write_str("bytes"),
            Shape::Option(inner) => write!(f, "Option<{inner}>"),
            Shape::Seq(inner) => write!(f, "Vec<{inner}>"),
            Shape::Map(key, value) => write!(f, "Map<{key}, {value}>"),
            Shape::Tuple(items) => {
                f.write_str("(")?;
                list(f, items)?;
                f.write_str(")")
            }
            Shape::Array(item, len) => write!(f, "[{item}; {len}]"),
            Shape::Struct { name, .. } | Shape::Enum { name, .. } => f.write_str(name),
            Shape::Fd(kind) => f.write_str(kind),
            Shape::Opaque { name, version } => write!(f, "{name} v{version}"),
            Shape::Recursive { name, .. } => f.write_str(name),
        }
    }
}

/// At most this many differences are named; the rest are counted.
const MAX_DIFFERENCES: usize = 20;

/// What changed from `old` to `new`, one line each, such as
/// `field 'config.beta': was u32 at position 2, now position 1`. Empty when
/// both encode the same way.
pub(crate) fn differences(old: &Shape, new: &Shape) -> Vec<String> {
    let mut found = Vec::new();
    compare(old, new, "", &mut found);
    if found.len() > MAX_DIFFERENCES {
        let more = found.len() - MAX_DIFFERENCES;
        found.truncate(MAX_DIFFERENCES);
        found.push(format!("and {more} more"));
    }
    found
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn compare(old: &Shape, new: &Shape, path: &str, found: &mut Vec<String>) {
    if old.same_encoding(new) {
        return;
    }
    match (old, new) {
        (Shape::Struct { fields: old, .. }, Shape::Struct { fields: new, .. }) => {
            compare_named(old, new, path, "field", found);
        }
        (Shape::Enum { variants: old, .. }, Shape::Enum { variants: new, .. }) => {
            compare_named(old, new, path, "variant", found);
        }
        (Shape::Tuple(old), Shape::Tuple(new)) => {
            let named = |items: &[Shape]| -> Vec<(String, Shape)> {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, shape)| (i.to_string(), shape.clone()))
                    .collect()
            };
            compare_named(&named(old), &named(new), path, "field", found);
        }
        (Shape::Option(old), Shape::Option(new)) | (Shape::Seq(old), Shape::Seq(new)) => {
            compare(old, new, path, found);
        }
        (Shape::Array(old, old_len), Shape::Array(new, new_len)) if old_len == new_len => {
            compare(old, new, path, found);
        }
        (Shape::Map(old_key, old_value), Shape::Map(new_key, new_value))
            if old_key.same_encoding(new_key) =>
        {
            compare(old_value, new_value, path, found);
        }
        _ => {
            let what = if path.is_empty() {
                "the state".to_owned()
            } else {
                format!("field '{path}'")
            };
            found.push(format!("{what}: was {old}, now {new}"));
        }
    }
}

/// Fields (or variants) matched by name: removed, added, moved, or changed.
/// Positions count from 1.
fn compare_named(
    old: &[(String, Shape)],
    new: &[(String, Shape)],
    path: &str,
    kind: &str,
    found: &mut Vec<String>,
) {
    let position = |list: &[(String, Shape)], name: &str| {
        list.iter()
            .position(|(candidate, _)| candidate == name)
            .map(|i| i + 1)
    };
    let describe = |shape: &Shape| match kind {
        "variant" => String::new(),
        _ => format!("{shape} "),
    };
    for (i, (name, shape)) in old.iter().enumerate() {
        let here = join(path, name);
        let was = i + 1;
        match position(new, name) {
            None => found.push(match kind {
                "variant" => format!("variant '{here}': removed (was at position {was})"),
                _ => format!("field '{here}': removed (was {shape} at position {was})"),
            }),
            Some(now) => {
                if now != was {
                    found.push(format!(
                        "{kind} '{here}': was {}at position {was}, now position {now}",
                        describe(shape)
                    ));
                }
                compare(shape, &new[now - 1].1, &here, found);
            }
        }
    }
    for (i, (name, shape)) in new.iter().enumerate() {
        if position(old, name).is_none() {
            let here = join(path, name);
            let now = i + 1;
            found.push(match kind {
                "variant" => format!("variant '{here}': added at position {now}"),
                _ => format!("field '{here}': added ({shape}) at position {now}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(fields: &[(&str, Shape)]) -> Shape {
        Shape::Struct {
            name: "State".into(),
            fields: vec![(
                "config".into(),
                Shape::Struct {
                    name: "Config".into(),
                    fields: fields
                        .iter()
                        .map(|(name, shape)| (name.to_string(), shape.clone()))
                        .collect(),
                },
            )],
        }
    }

    #[test]
    fn a_swap_is_named_with_both_positions() {
        let old = config(&[("alpha", Shape::U32), ("beta", Shape::U32)]);
        let new = config(&[("beta", Shape::U32), ("alpha", Shape::U32)]);
        assert_ne!(old.fingerprint("s", 1), new.fingerprint("s", 1));
        assert_eq!(
            differences(&old, &new),
            [
                "field 'config.alpha': was u32 at position 1, now position 2",
                "field 'config.beta': was u32 at position 2, now position 1",
            ]
        );
    }

    #[test]
    fn widening_adding_and_removing_are_named() {
        let old = config(&[("alpha", Shape::U32), ("gamma", Shape::U32)]);
        let new = config(&[("alpha", Shape::U64), ("delta", Shape::Str)]);
        assert_eq!(
            differences(&old, &new),
            [
                "field 'config.alpha': was u32, now u64",
                "field 'config.gamma': removed (was u32 at position 2)",
                "field 'config.delta': added (String) at position 2",
            ]
        );
    }

    #[test]
    fn an_inserted_variant_is_named_and_moves_the_rest() {
        let unit = || Shape::Tuple(Vec::new());
        let mode = |variants: &[&str]| Shape::Struct {
            name: "State".into(),
            fields: vec![(
                "mode".into(),
                Shape::Enum {
                    name: "Mode".into(),
                    variants: variants.iter().map(|v| (v.to_string(), unit())).collect(),
                },
            )],
        };
        assert_eq!(
            differences(&mode(&["Red", "Blue"]), &mode(&["Red", "Green", "Blue"])),
            [
                "variant 'mode.Blue': was at position 2, now position 3",
                "variant 'mode.Green': added at position 2",
            ]
        );
    }

    #[test]
    fn type_names_are_not_in_the_fingerprint_but_field_names_are() {
        let named = |type_name: &str, field: &str| Shape::Struct {
            name: type_name.into(),
            fields: vec![(field.into(), Shape::U8)],
        };
        assert_eq!(
            named("A", "x").fingerprint("s", 1),
            named("B", "x").fingerprint("s", 1)
        );
        assert_ne!(
            named("A", "x").fingerprint("s", 1),
            named("A", "y").fingerprint("s", 1)
        );
        assert_ne!(
            named("A", "x").fingerprint("s", 1),
            named("A", "x").fingerprint("s", 2)
        );
        assert!(differences(&named("A", "x"), &named("B", "x")).is_empty());
    }
}
