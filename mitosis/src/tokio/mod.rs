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
