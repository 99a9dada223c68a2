//! The identity of a state type's encoding (PROTOCOL.md, step 4): its
//! [`Schema`], and the [`Shape`] its fingerprint covers. (Working a type's
//! shape out is the `Handover` layer's: `handover::shapes`.)

mod shape;

use std::borrow::Cow;
use std::fmt;

pub use shape::Shape;
pub(crate) use shape::differences;

/// The identity of a state type's encoding, compared in the handshake before
/// any state is decoded (PROTOCOL.md, step 4).
///
/// Two binaries hand over only when the old one's `Schema` is one the new one
/// accepts. `name` and `version` are for people; `fingerprint` is what is
/// compared. A type declares its name and version in
/// [`Handover::SCHEMA`](crate::Handover::SCHEMA); the fingerprint that the
/// handshake compares also covers the type's [`Shape`], and
/// [`Schema::of`] works it out. One that the other process described in the
/// handshake (in [`Error::SchemaMismatch`](crate::Error::SchemaMismatch))
/// owns its name.
///
/// ```
/// use mitosis::Schema;
/// const V1: Schema = Schema::new("bot::State", 1);
/// const V2: Schema = Schema::new("bot::State", 2);
/// assert_ne!(V1.fingerprint, V2.fingerprint);
/// assert_eq!(V1.to_string(), format!("bot::State v1 ({:016x})", V1.fingerprint));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema {
    /// The type's name, for error messages.
    pub name: Cow<'static, str>,
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
    /// assert_eq!((S.name.as_ref(), S.version), ("State", 3));
    /// ```
    pub const fn new(name: &'static str, version: u32) -> Schema {
        let hash = fnv1a(FNV_OFFSET, name.as_bytes());
        let hash = fnv1a(hash, &version.to_le_bytes());
        Schema {
            name: Cow::Borrowed(name),
            version,
            fingerprint: hash,
        }
    }

    /// A schema for a container or wrapper whose encoding depends on what it
    /// contains: `name` and `version`'s fingerprint with each of `inner`'s
    /// folded in, in order.
    ///
    /// ```
    /// use mitosis::Schema;
    /// let a = Schema::nested("Vec", 0, [Schema::new("A", 0)]);
    /// let b = Schema::nested("Vec", 0, [Schema::new("B", 0)]);
    /// assert_ne!(a.fingerprint, b.fingerprint);
    /// ```
    pub const fn nested<const N: usize>(
        name: &'static str,
        version: u32,
        inner: [Schema; N],
    ) -> Schema {
        // Takes the array whole (and forgets it: every name in a constant is
        // borrowed), because a constant cannot run `Cow`'s destructor.
        let mut schema = Schema::new(name, version);
        let mut i = 0;
        while i < N {
            schema.fingerprint = fnv1a(schema.fingerprint, &inner[i].fingerprint.to_le_bytes());
            i += 1;
        }
        std::mem::forget(inner);
        schema
    }

    /// `schema`'s fingerprint, usable in a constant.
    pub(crate) const fn fingerprint_of(schema: Schema) -> u64 {
        let fingerprint = schema.fingerprint;
        std::mem::forget(schema);
        fingerprint
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_depends_on_the_order_and_the_contents() {
        let a = Schema::new("A", 0);
        let b = Schema::new("B", 0);
        assert_ne!(
            Schema::nested("t", 0, [a.clone(), b.clone()]).fingerprint,
            Schema::nested("t", 0, [b, a.clone()]).fingerprint
        );
        assert_eq!(
            Schema::nested("t", 0, [a.clone()]),
            Schema::nested("t", 0, [a])
        );
    }
}
