//! The state of `testdata-migrate-v2`: `testdata::State` v2.
//!
//! Compared with v1 ([`crate::State`]), `generation` is renamed `epoch` and
//! a `note` is added: the versions the state went through, `v2` for a state
//! that started as v2, `v1>v2` for one migrated from v1.
//!
//! To accept a v1 state this module holds [`StateV1`], a verbatim copy of
//! v1's definition: same name, version, field names and field types written
//! the same way, so that its fingerprint is the one a v1 binary computes.

use std::fs::File;
use std::net::{TcpListener, TcpStream};

use mitosis::Handover;

/// A verbatim copy of `testdata::State` v1 (`crate::State`), under another
/// Rust name. Never edit it: it describes what old binaries send.
#[derive(Debug, Handover)]
#[handover(version = 1, name = "testdata::State")]
pub struct StateV1 {
    pub generation: u32,
    pub listener: TcpListener,
    pub peer: TcpStream,
    pub log: File,
    pub blob: Vec<u8>,
    /// Bytes read from the peer that do not yet form a whole line.
    pub peer_buffer: Vec<u8>,
    /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
    pub spare: Vec<File>,
}

#[derive(Debug, Handover)]
#[handover(version = 2, name = "testdata::State", migrate_from(StateV1))]
pub struct State {
    /// v1's `generation`.
    pub epoch: u32,
    pub listener: TcpListener,
    pub peer: TcpStream,
    pub log: File,
    pub blob: Vec<u8>,
    /// Bytes read from the peer that do not yet form a whole line.
    pub peer_buffer: Vec<u8>,
    /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
    pub spare: Vec<File>,
    /// New in v2.
    pub note: String,
}

/// The note a state migrated from v1 gets.
pub const FROM_V1: &str = "v1>v2";

impl From<StateV1> for State {
    fn from(old: StateV1) -> State {
        State {
            epoch: old.generation,
            listener: old.listener,
            peer: old.peer,
            log: old.log,
            blob: old.blob,
            peer_buffer: old.peer_buffer,
            spare: old.spare,
            note: FROM_V1.to_owned(),
        }
    }
}

crate::app_state!(
    State,
    generation: epoch,
    fresh: { note: "v2".to_owned() },
    status: |state| format!(" note={}", state.note),
);
