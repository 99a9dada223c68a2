//! The state of `testdata-migrate-v3`: `testdata::State` v3.
//!
//! Compared with v2, the `note` string becomes `trail`, a list of the
//! versions the state went through; `status` still reports it as
//! `note=v1>v2>v3`.
//!
//! v3 migrates from v2 only; v2 migrates from v1. So this module holds
//! verbatim copies of both older definitions, and a v1 state reaches v3
//! through the chain: v1 → [`StateV2`] → [`State`].

use std::fs::File;
use std::net::{TcpListener, TcpStream};

use mitosis::Handover;

/// A verbatim copy of `testdata::State` v1. Never edit it.
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

/// A verbatim copy of `testdata::State` v2, with its own migration from v1.
/// Never edit it.
#[derive(Debug, Handover)]
#[handover(version = 2, name = "testdata::State", migrate_from(StateV1))]
pub struct StateV2 {
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

impl From<StateV1> for StateV2 {
    fn from(old: StateV1) -> StateV2 {
        StateV2 {
            epoch: old.generation,
            listener: old.listener,
            peer: old.peer,
            log: old.log,
            blob: old.blob,
            peer_buffer: old.peer_buffer,
            spare: old.spare,
            note: crate::v2::FROM_V1.to_owned(),
        }
    }
}

#[derive(Debug, Handover)]
#[handover(version = 3, name = "testdata::State", migrate_from(StateV2))]
pub struct State {
    pub epoch: u32,
    pub listener: TcpListener,
    pub peer: TcpStream,
    pub log: File,
    pub blob: Vec<u8>,
    /// Bytes read from the peer that do not yet form a whole line.
    pub peer_buffer: Vec<u8>,
    /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
    pub spare: Vec<File>,
    /// The versions the state went through, oldest first.
    pub trail: Vec<String>,
}

impl From<StateV2> for State {
    fn from(old: StateV2) -> State {
        let mut trail: Vec<String> = old.note.split('>').map(str::to_owned).collect();
        trail.push("v3".to_owned());
        State {
            epoch: old.epoch,
            listener: old.listener,
            peer: old.peer,
            log: old.log,
            blob: old.blob,
            peer_buffer: old.peer_buffer,
            spare: old.spare,
            trail,
        }
    }
}

crate::app_state!(
    State,
    generation: epoch,
    fresh: { trail: vec!["v3".to_owned()] },
    status: |state| format!(" note={}", state.trail.join(">")),
);
