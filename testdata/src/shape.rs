//! The states of the `testdata-shape-*` programs, for `tests/schema.rs`:
//! the testdata program with plain serde types inside its state, in one
//! module per definition of those types, each the "build" of one binary.
//!
//! Every state here is `testdata::Shape` version 1, and writes its nested
//! types the same way (`config: Config`, `mode: Mode`): only what those
//! types are differs from one module to the next, as it would between two
//! builds of one program. `status` reports every nested value by name
//! (` config.alpha=11 config.beta=22 mode=Blue`), so a test sees whether a
//! value arrived intact, or in the wrong field.
//!
//! | module | binary | what differs from `base` | reports |
//! | --- | --- | --- | --- |
//! | [`base`] | `testdata-shape-base` | | `base` |
//! | [`twin`] | `testdata-shape-twin` | nothing: the same definition, copied | `twin` |
//! | [`swapped`] | `testdata-shape-swapped` | `Config { beta, alpha }` | `swapped` |
//! | [`widened`] | `testdata-shape-widened` | `Config { alpha: u64, .. }` | `widened` |
//! | [`added`] | `testdata-shape-added` | `Config { .., gamma: u32 }` | `added` |
//! | [`variant`] | `testdata-shape-variant` | `Mode { Red, Green, Blue }` | `variant` |
//! | [`spelled`] | `testdata-shape-spelled` | `listener: std::net::TcpListener` | `spelled` |
//! | [`untagged`] | `testdata-shape-untagged` | a `#[serde(untagged)]` enum field | `untagged` |
//! | [`any`] | `testdata-shape-any` | a field whose `Deserialize` calls `deserialize_any` | `any` |
//!
//! `testdata-shape-deep-a` and `testdata-shape-deep-b` define their state
//! (`testdata::Deep`) in their own crates, around [`deep_a::Inner`] and
//! [`deep_b::Inner`] from this one, held as
//! `Option<Vec<BTreeMap<String, Inner>>>`; `deep_b`'s `weight` is a u64
//! where `deep_a`'s is a u32.

use std::collections::BTreeMap;
use std::fmt;

/// The schema name of every state in this module.
pub const SHAPE_NAME: &str = "testdata::Shape";

/// The values a fresh state starts with, in every build that has the field.
pub const ALPHA: u32 = 11;
pub const BETA: u32 = 22;
pub const GAMMA: u32 = 33;

/// Describes a `deep` field for `status`, without whitespace:
/// `[{first:seven/7,second:big/300},{}]`, or `none`.
pub fn describe_deep<T: fmt::Display>(deep: &Option<Vec<BTreeMap<String, T>>>) -> String {
    let Some(maps) = deep else {
        return "none".to_owned();
    };
    let maps: Vec<String> = maps
        .iter()
        .map(|map| {
            let entries: Vec<String> = map
                .iter()
                .map(|(key, inner)| format!("{key}:{inner}"))
                .collect();
            format!("{{{}}}", entries.join(","))
        })
        .collect();
    format!("[{}]", maps.join(","))
}

/// Declares the state of one build, `State`: the fields every testdata
/// state has, then `$extra`, and its [`AppState`](crate::AppState) impl.
///
/// The field types are plain tokens of this macro or single identifiers,
/// so the derive sees them exactly as if they were written by hand, and
/// [`spelled`], which is, differs from [`base`] in the listener's spelling
/// only.
macro_rules! shape_state {
    (
        extra: { $($field:ident: $ty:ident = $value:expr),* $(,)? },
        status: |$state:ident| $status:expr $(,)?
    ) => {
        use std::fs::File;
        use std::net::{TcpListener, TcpStream};

        #[derive(Debug, mitosis::Handover)]
        #[handover(version = 1, name = "testdata::Shape")]
        pub struct State {
            pub generation: u32,
            pub listener: TcpListener,
            pub peer: TcpStream,
            pub log: File,
            pub blob: Vec<u8>,
            /// Bytes read from the peer that do not yet form a whole line.
            pub peer_buffer: Vec<u8>,
            /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
            pub spare: Vec<File>,
            $(pub $field: $ty,)*
        }

        crate::app_state!(
            State,
            generation: generation,
            fresh: { $($field: $value),* },
            status: |$state| $status,
        );
    };
}

/// The reference build: `config: Config { alpha: u32, beta: u32 }` and
/// `mode: Mode { Red, Blue }`, fresh as alpha 11, beta 22, `Blue`.
pub mod base {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u32,
        pub beta: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    shape_state!(
        extra: {
            config: Config = Config { alpha: super::ALPHA, beta: super::BETA },
            mode: Mode = Mode::Blue,
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?}",
            state.config.alpha, state.config.beta, state.mode
        ),
    );
}

/// [`base`], copied verbatim into another module: another Rust path for
/// each type, the same shape. Both builds must hand over to each other.
pub mod twin {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u32,
        pub beta: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    shape_state!(
        extra: {
            config: Config = Config { alpha: super::ALPHA, beta: super::BETA },
            mode: Mode = Mode::Blue,
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?}",
            state.config.alpha, state.config.beta, state.mode
        ),
    );
}

/// `Config`'s two fields in the other order. postcard writes fields by
/// position, so a `base` state decoded as this one has its values swapped.
pub mod swapped {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub beta: u32,
        pub alpha: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    shape_state!(
        extra: {
            config: Config = Config { beta: super::BETA, alpha: super::ALPHA },
            mode: Mode = Mode::Blue,
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?}",
            state.config.alpha, state.config.beta, state.mode
        ),
    );
}

/// `Config::alpha` widened from u32 to u64.
pub mod widened {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u64,
        pub beta: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    shape_state!(
        extra: {
            config: Config = Config { alpha: super::ALPHA.into(), beta: super::BETA },
            mode: Mode = Mode::Blue,
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?}",
            state.config.alpha, state.config.beta, state.mode
        ),
    );
}

/// `Config` with a third field, `gamma: u32` (fresh: 33).
pub mod added {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u32,
        pub beta: u32,
        pub gamma: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    shape_state!(
        extra: {
            config: Config = Config { alpha: super::ALPHA, beta: super::BETA, gamma: super::GAMMA },
            mode: Mode = Mode::Blue,
        },
        status: |state| format!(
            " config.alpha={} config.beta={} config.gamma={} mode={:?}",
            state.config.alpha, state.config.beta, state.config.gamma, state.mode
        ),
    );
}

/// `Mode` with `Green` inserted between `Red` and `Blue`: a `base` state's
/// `Blue` (variant 1) would decode as `Green`.
pub mod variant {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u32,
        pub beta: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Green,
        Blue,
    }

    shape_state!(
        extra: {
            config: Config = Config { alpha: super::ALPHA, beta: super::BETA },
            mode: Mode = Mode::Blue,
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?}",
            state.config.alpha, state.config.beta, state.mode
        ),
    );
}

/// [`base`], written out by hand, with the listener's type written
/// `std::net::TcpListener` where `base` writes `TcpListener`: the same
/// type, in the same position, spelled otherwise.
pub mod spelled {
    use std::fs::File;
    use std::net::TcpStream;

    use mitosis::Handover;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u32,
        pub beta: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    // `shape_state!`'s fields, but for the listener's spelling.
    #[derive(Debug, Handover)]
    #[handover(version = 1, name = "testdata::Shape")]
    pub struct State {
        pub generation: u32,
        pub listener: std::net::TcpListener,
        pub peer: TcpStream,
        pub log: File,
        pub blob: Vec<u8>,
        /// Bytes read from the peer that do not yet form a whole line.
        pub peer_buffer: Vec<u8>,
        /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
        pub spare: Vec<File>,
        pub config: Config,
        pub mode: Mode,
    }

    crate::app_state!(
        State,
        generation: generation,
        fresh: {
            config: Config { alpha: super::ALPHA, beta: super::BETA },
            mode: Mode::Blue,
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?}",
            state.config.alpha, state.config.beta, state.mode
        ),
    );
}

/// [`base`] plus `setting: UntaggedSetting`, an untagged enum: serde
/// finds its variant by looking at the data (`deserialize_any`), so its
/// shape cannot be traced from the type alone, and postcard cannot decode
/// it at all.
pub mod untagged {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u32,
        pub beta: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum UntaggedSetting {
        Number(u32),
        Text(String),
    }

    shape_state!(
        extra: {
            config: Config = Config { alpha: super::ALPHA, beta: super::BETA },
            mode: Mode = Mode::Blue,
            setting: UntaggedSetting = UntaggedSetting::Number(5),
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?} setting={:?}",
            state.config.alpha, state.config.beta, state.mode, state.setting
        ),
    );
}

/// [`base`] plus `value: AnyShaped`, whose hand-written `Deserialize` asks
/// for `deserialize_any`: what it reads depends on the data, not the type.
pub mod any {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Config {
        pub alpha: u32,
        pub beta: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Mode {
        Red,
        Blue,
    }

    /// A number that a self-describing format may also give as a string.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AnyShaped(pub u32);

    impl Serialize for AnyShaped {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_u32(self.0)
        }
    }

    impl<'de> Deserialize<'de> for AnyShaped {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct NumberOrText;

            impl Visitor<'_> for NumberOrText {
                type Value = AnyShaped;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a u32, as a number or a string")
                }

                fn visit_u64<E: de::Error>(self, value: u64) -> Result<AnyShaped, E> {
                    u32::try_from(value).map(AnyShaped).map_err(E::custom)
                }

                fn visit_str<E: de::Error>(self, value: &str) -> Result<AnyShaped, E> {
                    value.parse().map(AnyShaped).map_err(E::custom)
                }
            }

            deserializer.deserialize_any(NumberOrText)
        }
    }

    shape_state!(
        extra: {
            config: Config = Config { alpha: super::ALPHA, beta: super::BETA },
            mode: Mode = Mode::Blue,
            value: AnyShaped = AnyShaped(6),
        },
        status: |state| format!(
            " config.alpha={} config.beta={} mode={:?} value={}",
            state.config.alpha, state.config.beta, state.mode, state.value.0
        ),
    );
}

/// The nested type of `testdata-shape-deep-a`'s state: `weight` is a u32.
pub mod deep_a {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Inner {
        pub weight: u32,
        pub name: String,
    }

    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}/{}", self.name, self.weight)
        }
    }

    /// A fresh state's `deep`: described as
    /// `[{first:seven/7,second:big/300},{}]`.
    pub fn sample() -> Option<Vec<BTreeMap<String, Inner>>> {
        let inner = |weight, name: &str| Inner {
            weight,
            name: name.to_owned(),
        };
        Some(vec![
            BTreeMap::from([
                ("first".to_owned(), inner(7, "seven")),
                ("second".to_owned(), inner(300, "big")),
            ]),
            BTreeMap::new(),
        ])
    }
}

/// The nested type of `testdata-shape-deep-b`'s state: [`deep_a::Inner`]
/// with `weight` widened to a u64.
pub mod deep_b {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Inner {
        pub weight: u64,
        pub name: String,
    }

    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}/{}", self.name, self.weight)
        }
    }

    /// A fresh state's `deep`, with the same values as `deep_a::sample`.
    pub fn sample() -> Option<Vec<BTreeMap<String, Inner>>> {
        let inner = |weight, name: &str| Inner {
            weight,
            name: name.to_owned(),
        };
        Some(vec![
            BTreeMap::from([
                ("first".to_owned(), inner(7, "seven")),
                ("second".to_owned(), inner(300, "big")),
            ]),
            BTreeMap::new(),
        ])
    }
}
