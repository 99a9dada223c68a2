//! The program with state `testdata::Deep` v1, defined here, in this
//! binary's crate, around `testdata::shape::deep_b::Inner` from the library
//! crate (`weight` is a u64), held deep in
//! `Option<Vec<BTreeMap<String, Inner>>>`. The other build is
//! `testdata-shape-deep-a`, whose `Inner` has `weight` as a u32.
//! Reports version "deep-b"; `status` adds
//! ` deep=[{first:seven/7,second:big/300},{}]`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};

use mitosis::Handover;
use testdata::shape::deep_b::Inner;

#[derive(Debug, Handover)]
#[handover(version = 1, name = "testdata::Deep")]
struct State {
    generation: u32,
    listener: TcpListener,
    peer: TcpStream,
    log: File,
    blob: Vec<u8>,
    /// Bytes read from the peer that do not yet form a whole line.
    peer_buffer: Vec<u8>,
    /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
    spare: Vec<File>,
    deep: Option<Vec<BTreeMap<String, Inner>>>,
}

testdata::app_state!(
    State,
    generation: generation,
    fresh: { deep: testdata::shape::deep_b::sample() },
    status: |state| format!(" deep={}", testdata::shape::describe_deep(&state.deep)),
);

fn main() -> std::process::ExitCode {
    testdata::run::<State>("deep-b")
}
