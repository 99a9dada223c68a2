//! The state of `testdata-schema2`: exactly v1's fields, but declared as
//! version 2 with no migration. Bumping the version alone changes the
//! fingerprint, so a v1 process cannot hand over to it, nor it to v1.

use std::fs::File;
use std::net::{TcpListener, TcpStream};

use mitosis::Handover;

#[derive(Debug, Handover)]
#[handover(version = 2, name = "testdata::State")]
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
}

crate::app_state!(State, generation: generation, fresh: {}, status: |_state| String::new());
