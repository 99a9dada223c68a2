//! Code shared by the example programs. The IRC bot lives here so that two
//! binaries can build it: `ircbot`, and `ircbot-next`, the same bot
//! reporting another version, which the tests rename over `ircbot` to stand
//! for a rebuild.

pub mod ircbot;
