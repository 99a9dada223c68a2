//! A fake new binary that hangs up on the old process in the middle of the
//! state transfer (step 6), in the order that makes the old process's next
//! write fail with `EPIPE`.
//!
//! Started by a real `split` in place of the new program, it connects back,
//! proves the secret as a build of an earlier mitosis would (protocol
//! version 1, without READY), offers `testdata::State` v1, and then shuts down its
//! sending half (a FIN: the old process's end of the connection is now in
//! CLOSE_WAIT). It reads the WELCOME and the first 100,000 bytes of step 6
//! and exits with those bytes and more still unread, so that the kernel
//! answers the old process's next segment with a reset. A reset in
//! CLOSE_WAIT is `EPIPE`, which raises SIGPIPE in a writer that did not
//! ask for `MSG_NOSIGNAL`.
//!
//! A real new process that dies in step 6 leaves the same order behind
//! whenever it had read everything that had arrived; this program makes it
//! happen every time. It reports `half-close-child: hung up after <n> bytes
//! of step 6` on stderr, and exits 0.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;

use mitosis::testing::wire::{Frame, encode};
use testdata::wire;

/// How much of step 6 it reads before hanging up.
const READ_BEFORE_HANGING_UP: usize = 100_000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("half-close-child: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (mut conn, _channel, secret) = wire::connect_back_as_fake_child()?;
    let schema = mitosis::Schema::of::<testdata::State>().map_err(|e| e.to_string())?;
    let (kind, offer) = encode(&Frame::Offer {
        accepted: vec![schema],
        description: None,
    });
    // Version 1 only, as a build of an earlier mitosis: the state follows
    // STATE at once, with no READY to wait for.
    let mut hello_and_offer = wire::hello(1, 1, &secret).to_vec();
    hello_and_offer.extend_from_slice(&wire::header(kind as u8, offer.len() as u32));
    hello_and_offer.extend_from_slice(&offer);
    conn.write_all(&hello_and_offer)
        .map_err(|e| format!("send HELLO and OFFER: {e}"))?;
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("shut down the sending half: {e}"))?;

    let mut welcome = [0u8; wire::WELCOME_LEN];
    conn.read_exact(&mut welcome)
        .map_err(|e| format!("read WELCOME: {e}"))?;
    let mut state = vec![0u8; READ_BEFORE_HANGING_UP];
    conn.read_exact(&mut state)
        .map_err(|e| format!("read the state: {e}"))?;
    eprintln!("half-close-child: hung up after {READ_BEFORE_HANGING_UP} bytes of step 6");
    Ok(())
}
