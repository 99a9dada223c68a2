//! A hostile local process that floods handover ports with connections,
//! keeping up to 1,000 of them open and idle (never sending a byte) and
//! opening more as the other end closes them. Run as another user (through
//! `setpriv`) by `tests/hostile.rs`.
//!
//! - `flooder <port> <milliseconds>` floods that port for that long, then
//!   prints `flooded <n> connections` and exits 0.
//! - `flooder watch` does what any local user can: it reads
//!   `/proc/net/tcp` over and over, and floods every loopback listener that
//!   appears after it started, until its stdin closes. It prints `watching`
//!   once it has seen the listeners already there, `port <p>` for each new
//!   one it finds, `busy <p>` once it has made 1,000 connections to it,
//!   and at the end `flooded <n> connections on <k> ports`.

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("watch") {
        return watch();
    }
    let (Some(port), Some(ms)) = (
        args.first().and_then(|port| port.parse::<u16>().ok()),
        args.get(1).and_then(|ms| ms.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: flooder <port> <milliseconds> | flooder watch");
        return ExitCode::from(2);
    };
    let until = Instant::now() + Duration::from_millis(ms);
    let made = AtomicU64::new(0);
    flood(port, &made, || Instant::now() < until);
    println!("flooded {} connections", made.into_inner());
    ExitCode::SUCCESS
}

/// Connects to `port` for as long as `go_on` says, holding the newest 1,000
/// connections open and idle, and counts each connection in `made`.
fn flood(port: u16, made: &AtomicU64, mut go_on: impl FnMut() -> bool) {
    let mut open: VecDeque<TcpStream> = VecDeque::new();
    while go_on() {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(conn) => {
                made.fetch_add(1, Ordering::Relaxed);
                open.push_back(conn);
                if open.len() > 1000 {
                    open.pop_front();
                }
            }
            // The port is gone (the handover finished) or full: try again.
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// Floods `port` until it stops listening or the watch ends. Connections
/// are refused only once the listener has closed: that is when to look.
fn flood_while_listening(port: u16, made: &AtomicU64, stop: &AtomicBool) {
    let mut open: VecDeque<TcpStream> = VecDeque::new();
    let mut here: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(conn) => {
                here += 1;
                if here == 1000 {
                    println!("busy {port}");
                }
                open.push_back(conn);
                if open.len() > 1000 {
                    open.pop_front();
                }
            }
            Err(_) if !loopback_listeners().contains(&port) => break,
            Err(_) => std::thread::yield_now(),
        }
    }
    made.fetch_add(here, Ordering::Relaxed);
}

/// `flooder watch`: floods each new loopback listener until stdin closes.
fn watch() -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut seen = loopback_listeners();
    println!("watching");
    let made = Arc::new(AtomicU64::new(0));
    let mut floods = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for port in loopback_listeners() {
            if seen.insert(port) {
                println!("port {port}");
                let (made, stop) = (Arc::clone(&made), Arc::clone(&stop));
                floods.push(std::thread::spawn(move || {
                    flood_while_listening(port, &made, &stop)
                }));
            }
        }
        std::thread::yield_now();
    }
    let ports = floods.len();
    for flood in floods {
        let _ = flood.join();
    }
    println!(
        "flooded {} connections on {ports} ports",
        made.load(Ordering::Relaxed)
    );
    ExitCode::SUCCESS
}

/// The ports of the TCP sockets listening on 127.0.0.1, as
/// `/proc/net/tcp` shows them to any user.
fn loopback_listeners() -> BTreeSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let (address, port) = local.split_once(':')?;
            // 0A is LISTEN; 0100007F is 127.0.0.1, little-endian.
            (state == "0A" && address == "0100007F")
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}
