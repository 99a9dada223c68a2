//! Replace a running process with a freshly built copy of itself, handing
//! over its state and its open connections, so that nobody outside notices
//! the upgrade.
//!
//! A long-running program (an IRC bot, a proxy, a game server) calls
//! [`split`] with its state when it wants to upgrade. mitosis starts the
//! binary from its path on disk, which now holds the new build, with the same
//! arguments plus `--mitosis=<port>`. The new process calls [`init`] early in
//! `main`, connects back over loopback, proves a one-time secret, and receives
//! the state: plain data encoded with postcard, and every file descriptor
//! inside it (sockets, listeners, files) over a private Unix socket. Once it
//! has decoded everything it commits, the old process closes its copies, and
//! [`Split`] reports [`Outcome::Done`]. If anything fails before that (the
//! binary is missing, the new process crashes, hangs or has an incompatible
//! state type), the new process is stopped and the old one gets its state
//! back in [`Outcome::Failed`]: nothing is lost either way.
//!
//! # Example
//!
//! A server that upgrades itself when a client says so, keeping its
//! listener, every client connection (with any half-read request) and its
//! counters:
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::{TcpListener, TcpStream};
//! use mitosis::{Handover, Outcome};
//!
//! #[derive(Handover)]
//! #[handover(version = 1)]
//! struct State {
//!     generation: u64,
//!     listener: TcpListener,
//!     clients: Vec<BufReader<TcpStream>>,
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First thing in main: take over if an older copy started us.
//!     let mut state = match mitosis::init::<State>()? {
//!         Some(state) => state,
//!         None => State {
//!             generation: 0,
//!             listener: TcpListener::bind("127.0.0.1:7000")?,
//!             clients: Vec::new(),
//!         },
//!     };
//!     state.generation += 1;
//!     loop {
//!         let (client, _) = state.listener.accept()?;
//!         let mut client = BufReader::new(client);
//!         writeln!(client.get_mut(), "generation {}; say 'upgrade'", state.generation)?;
//!         let mut line = String::new();
//!         client.read_line(&mut line)?;
//!         state.clients.push(client);
//!         if line.trim() == "upgrade" {
//!             // Runs the binary at our path on disk: the new build.
//!             state = match mitosis::split(state) {
//!                 Err(refused) => refused.state,
//!                 Ok(handle) => match handle.wait() {
//!                     Outcome::Done { .. } => return Ok(()), // it took over
//!                     Outcome::Failed { state, error } => {
//!                         eprintln!("upgrade failed, carrying on: {error}");
//!                         state
//!                     }
//!                 },
//!             };
//!         }
//!     }
//! }
//! ```
//!
//! [`Handover`] explains the derive's attributes, schema fingerprints, and
//! migrations from an older build's state.
//!
//! # Platform
//!
//! Linux only: the handover uses `pidfd`s (Linux 5.3), `SO_PEERCRED` and
//! `AT_EXECFN`.
//!
//! # Logging
//!
//! mitosis never prints and never exits; it logs through the [`log`] facade.
//!
//! See PROTOCOL.md in the repository for the wire protocol, byte by byte.

#![deny(missing_docs)]

mod args;
mod error;
mod fault;
mod fd_channel;
mod frame;
mod handover;
mod handshake;
mod init;
mod spawn;
mod split;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use args::{Flag, args};
pub use error::{Error, SplitError, Step};
pub use fd_channel::MAX_FDS_PER_MESSAGE;
pub use handover::{Decoder, Encoder, Handover, MAX_UNREAD_BYTES, Schema, SchemaInfo};
pub use init::init;
pub use mitosis_derive::Handover;
pub use split::{
    DEFAULT_COMMIT_TIMEOUT, DEFAULT_HELLO_TIMEOUT, DEFAULT_MAX_FDS, DEFAULT_MAX_STATE_BYTES,
    Outcome, Split, SplitOptions, split,
};

/// The README's examples, compiled as doctests so that they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
