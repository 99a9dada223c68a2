//! tokio: its sockets and buffered streams in a state, and upgrades,
//! readiness and triggers that are awaited (the `tokio` feature).
//!
//! Each blocking step of an upgrade has an awaited twin that never blocks
//! a runtime thread, in either runtime flavour:
//!
//! - [`Trigger::recv`](crate::supervisor::Trigger::recv) resolves when the
//!   upgrade signal arrives;
//! - [`prepare`](crate::prepare) does not block (it starts the new binary
//!   and returns), and [`Upgrade::ready`](crate::Upgrade::ready) resolves
//!   once the new process is ready, or with its failure;
//! - a [`Split`](crate::Split) is awaited for its
//!   [`Outcome`](crate::Outcome): `upgrade.hand_over(state).await`, or
//!   `mitosis::split(state).await` ([`SplitFuture`]).
//!
//! The first two are cancellation-safe, and made for `tokio::select!`:
//! until the state is handed over, dropping a future leaves everything as
//! it was, and dropping the `Upgrade` stops the new process, with the state
//! still in the program's hands. Awaiting the hand-over is the pause; await
//! it to the end ([`SplitFuture`] says why).
//!
//! # tokio's types in a state
//!
//! `tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream,
//! UdpSocket, UnixDatagram}`, `tokio::io::{BufReader, BufWriter}` over
//! them (with the bytes in their buffers), and `tokio_util::codec::{Framed,
//! FramedRead, FramedWrite}` (with their read and write buffers, and their
//! codec, which must be `Handover` itself: derive it for a codec of your
//! own; `LinesCodec` and `BytesCodec` are) go into a derived state like
//! std's types, and encode exactly as std's do, so a field may change from
//! one to the other between builds. `BufStream` cannot: it lends out neither
//! its buffers nor their sizes; hold the `BufReader<BufWriter<S>>` it wraps
//! and convert with `BufStream::from`.
//!
//! Decoding registers each socket with the reactor of the runtime that is
//! current, so [`init`](crate::init) works inside `#[tokio::main]`, in
//! either flavour, and nothing of mitosis's is left in the environment
//! for the processes the program starts. Called before any runtime exists,
//! it registers them with a small background reactor of mitosis's own (a
//! thread, started once, and a cross-thread wake-up per readiness event):
//! it works, but calling `init` inside the runtime costs nothing. That
//! reactor also puts the unread bytes of a tokio `BufReader` or a
//! `FramedRead` back while the state is decoded, since reading them needs a
//! reactor that runs while the program's own threads are busy decoding.
//! (`Framed` and `BufWriter` need none.)
//!
//! # Quick start
//!
//! A server that serves until `SIGUSR2`, keeps serving while the new build
//! starts, and then hands its listener over:
//!
//! ```no_run
//! use mitosis::{Handover, Outcome, supervisor::Trigger};
//! use tokio::net::TcpListener;
//!
//! #[derive(Handover)]
//! struct State {
//!     listener: TcpListener,
//!     accepted: u64,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut state = match mitosis::init::<State>()? {
//!         Some(state) => state,
//!         None => State { listener: TcpListener::bind("127.0.0.1:7000").await?, accepted: 0 },
//!     };
//!     let trigger = Trigger::signal(libc::SIGUSR2)?;
//!     loop {
//!         tokio::select! {
//!             fired = trigger.recv() => fired?,
//!             accepted = state.listener.accept() => {
//!                 let (_conn, _) = accepted?; // hand it to a task
//!                 state.accepted += 1;
//!                 continue;
//!             }
//!         }
//!         // The signal: prepare, and serve on until the new build is ready.
//!         let mut upgrade = mitosis::prepare(&state)?;
//!         let ready = loop {
//!             tokio::select! {
//!                 ready = upgrade.ready() => break ready,
//!                 accepted = state.listener.accept() => {
//!                     let (_conn, _) = accepted?;
//!                     state.accepted += 1;
//!                 }
//!             }
//!         };
//!         if let Err(error) = ready {
//!             log::error!("the new build did not start: {error}");
//!             continue; // the state never left
//!         }
//!         state = match upgrade.hand_over(state).await {
//!             Outcome::Done { .. } => return Ok(()), // it took over
//!             Outcome::Failed { state, error } => {
//!                 log::error!("upgrade failed, carrying on: {error}");
//!                 state
//!             }
//!         };
//!     }
//! }
//! ```

mod codec;
mod io;
mod net;
mod reactor;
#[cfg(test)]
mod tests;
mod upgrade;

pub use net::StandIn;
pub use upgrade::SplitFuture;
