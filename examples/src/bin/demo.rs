//! A self-contained demo: a server upgrades itself three times while one
//! client stays connected and keeps talking to it.
//!
//! Run `cargo run --release -p mitosis-examples --bin demo`. The demo plays
//! both parts: it starts `demo serve <port>` as the server, which connects
//! to the demo as its one client. Every upgrade replaces the server process
//! with a new one (a new pid), which takes over the client connection and
//! the message count without the client reconnecting.

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use mitosis::{Handover, Outcome};

/// How many times the demo upgrades the server.
const UPGRADES: u64 = 3;

/// Everything the server hands to its next generation: the counters, the
/// client's connection (as an fd), and the bytes read from it but not yet
/// handled.
#[derive(Handover)]
#[handover(version = 1)]
struct State {
    generation: u64,
    messages: u64,
    client: TcpStream,
    unread: Vec<u8>,
}

fn main() -> Result<(), Box<dyn Error>> {
    // First thing in main: a server started by `split` takes over here.
    let handed_over = mitosis::init::<State>()?;
    let args: Vec<String> = mitosis::args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("serve"), Some(port)) => serve(handed_over, port),
        _ => drive(),
    }
}

/// The client: starts the server, talks to it, and asks it to upgrade.
fn drive() -> Result<(), Box<dyn Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port().to_string();
    let mut first = Command::new(std::env::current_exe()?)
        .args(["serve", &port])
        .spawn()?;
    let (client, _) = listener.accept()?;
    let mut replies = BufReader::new(client.try_clone()?);
    let mut requests = client;
    let mut reply = String::new();
    let mut ping = 0;
    for round in 0..=UPGRADES {
        reply.clear();
        replies.read_line(&mut reply)?;
        println!("client: {}", reply.trim_end());
        for _ in 0..2 {
            ping += 1;
            writeln!(requests, "ping {ping}")?;
            reply.clear();
            replies.read_line(&mut reply)?;
            println!("client: {}", reply.trim_end());
        }
        if round < UPGRADES {
            println!("client: upgrade, please");
            writeln!(requests, "upgrade")?;
        }
    }
    writeln!(requests, "quit")?;
    reply.clear();
    let closed = replies.read_line(&mut reply)? == 0;
    first.wait()?;
    println!(
        "client: {} pings answered across {} processes on one connection; server closed it: {closed}",
        ping,
        UPGRADES + 1
    );
    Ok(())
}

/// The server: either the first generation, which connects to the client,
/// or a later one, which continues on the connection it was handed.
fn serve(handed_over: Option<State>, port: &str) -> Result<(), Box<dyn Error>> {
    let pid = std::process::id();
    let mut state = match handed_over {
        Some(mut state) => {
            state.generation += 1;
            println!(
                "server[{pid}]: generation {} took over the client connection ({} messages so far)",
                state.generation, state.messages
            );
            state
        }
        None => State {
            generation: 1,
            messages: 0,
            client: TcpStream::connect(("127.0.0.1", port.parse::<u16>()?))?,
            unread: Vec::new(),
        },
    };
    writeln!(
        state.client,
        "hello from pid {pid}, generation {}",
        state.generation
    )?;
    while let Some(line) = next_line(&mut state)? {
        state.messages += 1;
        match line.as_str() {
            "quit" => break,
            "upgrade" => {
                println!("server[{pid}]: upgrading: starting a new copy of my binary");
                state = match mitosis::split(state).wait() {
                    Outcome::Done { pid: new } => {
                        println!("server[{pid}]: pid {new} took over; exiting");
                        return Ok(());
                    }
                    Outcome::Failed { state, error } => {
                        println!("server[{pid}]: upgrade failed, carrying on: {error}");
                        state
                    }
                };
                writeln!(state.client, "upgrade failed; still pid {pid}")?;
            }
            request => writeln!(
                state.client,
                "{} -> pong from pid {pid}, generation {}, message {}",
                request, state.generation, state.messages
            )?,
        }
    }
    Ok(())
}

/// The next line from the client. Bytes read past it stay in
/// `state.unread`, which is handed over with the rest of the state, so no
/// generation loses what its predecessor had already read.
fn next_line(state: &mut State) -> std::io::Result<Option<String>> {
    loop {
        if let Some(end) = state.unread.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = state.unread.drain(..=end).collect();
            return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()));
        }
        let mut buf = [0; 4096];
        let n = (&state.client).read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        state.unread.extend_from_slice(&buf[..n]);
    }
}
