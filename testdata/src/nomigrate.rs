//! The state of `testdata-nomigrate`: the same definition as
//! `testdata-migrate-v2`'s [`crate::v2::State`], without `migrate_from`.
//!
//! Its fingerprint equals that one's (the Rust name and the migration are
//! not part of it), so the two binaries hand over to each other; a v1 state
//! is refused.

use std::fs::File;
use std::net::{TcpListener, TcpStream};

use mitosis::Handover;

#[derive(Debug, Handover)]
#[handover(version = 2, name = "testdata::State")]
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

crate::app_state!(
    State,
    generation: epoch,
    fresh: { note: "n2".to_owned() },
    status: |state| format!(" note={}", state.note),
);
