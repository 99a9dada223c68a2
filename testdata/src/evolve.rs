//! The states of `testdata-evolve-v1`, `-v2` and `-v3`: one state,
//! `testdata::Evolving`, evolved in place from version to version with the
//! derive's evolution attributes, and no copy of the older definitions.
//!
//! - v1: `generation: u64`, `nick: String`, `legacy: u32` (then the fields
//!   every testdata state has);
//! - v2 adds `#[handover(since = 2, default)] count: u64`: a v1 state
//!   arrives with `count` 0;
//! - v3 removes `legacy`, declared on the container with
//!   `removed(name = "legacy", ty = "u32", since = 3, after = "nick")`: a
//!   v1 or v2 state arrives without it.
//!
//! `status` adds ` nick=<nick> legacy=<n> count=<n>`, each word only in the
//! versions that have the field. Fresh states start with the nick
//! `nick-v<N>`, `legacy` 7 (v1) or 8 (v2), and `count` 42 (v2) or 43 (v3),
//! so that a test sees which build a value came from.

/// Implements [`AppState`](crate::AppState) for an evolving `State`, whose
/// generation is a u64 (the runner counts in u32).
macro_rules! evolving_app_state {
    (
        fresh: { $($field:ident: $value:expr),* $(,)? },
        status: |$state:ident| $status:expr $(,)?
    ) => {
        impl crate::AppState for State {
            fn fresh(core: crate::Core) -> Self {
                Self {
                    generation: core.generation.into(),
                    listener: core.listener,
                    peer: core.peer,
                    log: core.log,
                    blob: core.blob,
                    peer_buffer: core.peer_buffer,
                    spare: core.spare,
                    $($field: $value,)*
                }
            }
            fn generation(&self) -> u32 {
                u32::try_from(self.generation).expect("fewer than 2^32 generations")
            }
            fn set_generation(&mut self, generation: u32) {
                self.generation = generation.into();
            }
            fn listener(&self) -> &::std::net::TcpListener {
                &self.listener
            }
            fn peer(&self) -> &::std::net::TcpStream {
                &self.peer
            }
            fn log(&self) -> &::std::fs::File {
                &self.log
            }
            fn blob(&self) -> &[u8] {
                &self.blob
            }
            fn peer_buffer(&mut self) -> &mut Vec<u8> {
                &mut self.peer_buffer
            }
            fn spare(&self) -> &[::std::fs::File] {
                &self.spare
            }
            fn status_extra(&self) -> String {
                let $state = self;
                $status
            }
        }
    };
}

/// Version 1.
pub mod v1 {
    use std::fs::File;
    use std::net::{TcpListener, TcpStream};

    use mitosis::Handover;

    #[derive(Debug, Handover)]
    #[handover(version = 1, name = "testdata::Evolving")]
    pub struct State {
        pub generation: u64,
        pub nick: String,
        pub legacy: u32,
        pub listener: TcpListener,
        pub peer: TcpStream,
        pub log: File,
        pub blob: Vec<u8>,
        /// Bytes read from the peer that do not yet form a whole line.
        pub peer_buffer: Vec<u8>,
        /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
        pub spare: Vec<File>,
    }

    evolving_app_state!(
        fresh: { nick: "nick-v1".to_owned(), legacy: 7 },
        status: |state| format!(" nick={} legacy={}", state.nick, state.legacy),
    );
}

/// Version 2: v1 plus `count`, with a default for states from v1.
pub mod v2 {
    use std::fs::File;
    use std::net::{TcpListener, TcpStream};

    use mitosis::Handover;

    #[derive(Debug, Handover)]
    #[handover(version = 2, name = "testdata::Evolving")]
    pub struct State {
        pub generation: u64,
        pub nick: String,
        pub legacy: u32,
        pub listener: TcpListener,
        pub peer: TcpStream,
        pub log: File,
        pub blob: Vec<u8>,
        /// Bytes read from the peer that do not yet form a whole line.
        pub peer_buffer: Vec<u8>,
        /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
        pub spare: Vec<File>,
        #[handover(since = 2, default)]
        pub count: u64,
    }

    evolving_app_state!(
        fresh: { nick: "nick-v2".to_owned(), legacy: 8, count: 42 },
        status: |state| format!(
            " nick={} legacy={} count={}",
            state.nick, state.legacy, state.count
        ),
    );
}

/// Version 3: v2 without `legacy`, which older states still carry.
pub mod v3 {
    use std::fs::File;
    use std::net::{TcpListener, TcpStream};

    use mitosis::Handover;

    #[derive(Debug, Handover)]
    #[handover(
        version = 3,
        name = "testdata::Evolving",
        removed(name = "legacy", ty = "u32", since = 3, after = "nick")
    )]
    pub struct State {
        pub generation: u64,
        pub nick: String,
        pub listener: TcpListener,
        pub peer: TcpStream,
        pub log: File,
        pub blob: Vec<u8>,
        /// Bytes read from the peer that do not yet form a whole line.
        pub peer_buffer: Vec<u8>,
        /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
        pub spare: Vec<File>,
        #[handover(since = 2, default)]
        pub count: u64,
    }

    evolving_app_state!(
        fresh: { nick: "nick-v3".to_owned(), count: 43 },
        status: |state| format!(" nick={} count={}", state.nick, state.count),
    );
}
