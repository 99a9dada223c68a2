//! `flooder <port> <milliseconds>`: a hostile local process that floods a
//! handover port with connections for that long, keeping up to 1,000 of
//! them open and idle (never sending a byte) and opening more as the other
//! end closes them, then prints `flooded <n> connections` and exits 0.
//! Run as another user (through `setpriv`) by `tests/hostile.rs`.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(port), Some(ms)) = (
        args.first().and_then(|port| port.parse::<u16>().ok()),
        args.get(1).and_then(|ms| ms.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: flooder <port> <milliseconds>");
        return ExitCode::from(2);
    };
    let until = Instant::now() + Duration::from_millis(ms);
    println!("flooded {} connections", flood(port, until));
    ExitCode::SUCCESS
}

/// Opens connections to `port` until `until`, holding the newest 1,000.
pub fn flood(port: u16, until: Instant) -> u64 {
    let mut open: VecDeque<TcpStream> = VecDeque::new();
    let mut made = 0;
    while Instant::now() < until {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(conn) => {
                made += 1;
                open.push_back(conn);
                if open.len() > 1000 {
                    open.pop_front();
                }
            }
            // The port is gone (the handover finished) or full: try again.
            Err(_) => std::thread::yield_now(),
        }
    }
    made
}
