//! Replace a running process with a freshly built copy of itself, handing
//! over its state and its open connections, so that nobody outside notices
//! the upgrade.
//!
//! A long-running program (an IRC bot, a proxy, a game server) calls
//! [`split`] with its state when it wants to upgrade. mitosis starts the
//! binary from its path on disk, which now holds the new build, with the same
//! arguments plus `--mitosis=<port>`. The new process calls [`init`] early in
//! `main`, learns a one-time secret over a private Unix socket that only it
//! may use, connects back over loopback, proves the secret, and receives the
//! state: plain data encoded with postcard, and every file descriptor inside
//! it (sockets, listeners, files) over that Unix socket. Once it has decoded
//! everything it commits; the old process acknowledges, the new one says it
//! has taken over, and only then does [`Split`] report [`Outcome::Done`].
//! If anything fails before that (the binary is missing, the new process
//! crashes, hangs or has an incompatible state type), the new process is
//! stopped and the old one gets its state back in [`Outcome::Failed`]:
//! nothing is lost either way.
//!
//! A server that must keep serving while the new build starts uses the two
//! phases that `split` joins: [`prepare`] starts the new process and returns
//! an [`Upgrade`], a pollable handle that becomes ready once the new process
//! has connected, agreed on the schema and set itself up; only then does
//! [`Upgrade::hand_over`] pause the program, for the transfer alone. The new
//! process's side is [`arrive`], which returns before the state is asked
//! for, and [`Arrival`], which receives it, lets the program check it, and
//! commits.
//!
//! Around the handover, [`supervisor`] makes an upgrade invisible to what
//! watches the process: systemd (`Type=notify`, socket activation), a
//! container's PID 1 and pid-watching supervisors (a keeper that holds the
//! pid), and terminals (each new process leaves the old one's session). The
//! program says [`supervisor::ready`] once at first start, and may upgrade
//! on a signal with a [`supervisor::Trigger`].
//!
//! From outside, `mitosis::control` (feature `control`) lets an operator,
//! a deploy script or systemd's `ExecReload=` start an upgrade, wait for
//! its outcome and fail when it fails (`mitosisctl`), run the new binary
//! to upgrade the running one, or go back to the previous build, which
//! every generation keeps as an open handle
//! ([`SplitOptions::previous_binary`]).
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
//!             state = match mitosis::split(state).wait() {
//!                 Outcome::Done { .. } => return Ok(()), // it took over
//!                 Outcome::Failed { state, error } => {
//!                     eprintln!("upgrade failed, carrying on: {error}");
//!                     state
//!                 }
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
//! # Features
//!
//! - `clap` (on by default): [`Flag`], the hidden `--mitosis` flag for clap
//!   parsers. Without it, parse [`args`] instead.
//! - `control`: `control::Control`, a control socket through which
//!   `mitosisctl`, systemd's `ExecReload=` or the program run again start
//!   an upgrade (or go back to the previous build) and hear its outcome.
//! - `tls`: `tls::TlsStream`, a TLS connection (client or server, on
//!   rustls) whose session crosses a handover with it.
//! - `tokio`: tokio's sockets and buffered streams and tokio-util's framed
//!   ones in a state, and upgrades, readiness and triggers that are awaited
//!   (`mitosis::tokio`).
//!
//! # Logging
//!
//! mitosis never prints and never exits; it logs through the [`log`] facade.
//!
//! See PROTOCOL.md in the repository for the wire protocol, byte by byte.

#![deny(missing_docs)]

// The bottom layer: what everything else names.
mod error;
mod schema;

// How a value crosses: the trait, its encoder and decoder, std's types.
mod handover;

// The bytes on the wire, the connection that carries them, the fd channel,
// the pipe for large byte buffers, and the contract in the environment.
mod conn;
mod env;
mod fault;
mod fd_channel;
mod lineage;
mod pipe;
mod report;
mod wire;

// The two sides, each a walk through PROTOCOL.md's steps.
mod args;
mod new;
mod old;
pub mod supervisor;
// Upgrades started, reported and undone from outside.
#[cfg(feature = "control")]
pub mod control;
// Connections that carry a session of their own across: TLS.
#[cfg(feature = "tls")]
pub mod tls;
// tokio's types in a state, and awaited upgrades.
#[cfg(feature = "tokio")]
pub mod tokio;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod testing;

#[cfg(feature = "clap")]
pub use args::Flag;
pub use args::args;
pub use error::{Error, Step};
pub use handover::{Decoder, Encoder, Handover, Shapes};
pub use mitosis_derive::Handover;
pub use new::{Arrival, arrive, init};
pub use old::{Outcome, Split, SplitOptions, Upgrade, prepare, split};
pub use schema::{Schema, Shape};

/// The README's examples, compiled as doctests so that they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
