//! tokio: its sockets and buffered streams in a state, and upgrades,
//! readiness and triggers that are awaited (the `tokio` feature).
//!
//! SKELETON: filled in by the files below.

mod codec;
mod io;
mod net;
mod reactor;
#[cfg(test)]
mod tests;
mod upgrade;

pub use net::StandIn;
