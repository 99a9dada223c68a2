//! A fake new binary that speaks only protocol version 4, as a
//! build of a future mitosis might.
//!
//! Started by a real `split` in place of the new program, it reads the
//! secret from the fd channel's KEY, connects back, sends a HELLO claiming
//! versions 4..=4 with the correct token, reads the
//! WELCOME, reports it on stderr as
//! `fake-child: welcome chosen=<c> min=<a> max=<b> token=<ok|bad>`, and exits
//! 0. This drives the old process's side of a version mismatch.

use std::io::{Read, Write};
use std::process::ExitCode;

use testdata::wire;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-child: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (mut conn, _channel, secret) = wire::connect_back_as_fake_child()?;
    conn.write_all(&wire::hello(4, 4, &secret))
        .map_err(|e| format!("send HELLO: {e}"))?;
    let mut welcome = [0u8; wire::WELCOME_LEN];
    conn.read_exact(&mut welcome)
        .map_err(|e| format!("read WELCOME: {e}"))?;
    if welcome[..8] != wire::MAGIC {
        return Err(format!("bad WELCOME magic {:?}", &welcome[..8]));
    }
    let token = if welcome[14..] == secret[32..] {
        "ok"
    } else {
        "bad"
    };
    eprintln!(
        "fake-child: welcome chosen={} min={} max={} token={token}",
        wire::u16_at(&welcome, 8),
        wire::u16_at(&welcome, 10),
        wire::u16_at(&welcome, 12),
    );
    Ok(())
}
