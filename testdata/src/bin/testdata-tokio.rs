//! `testdata-tokio`: a tokio program that upgrades itself with awaited
//! readiness and hand-overs, for `tests/tokio_upgrade.rs`.
//!
//! `testdata-tokio --connect <port> [--current-thread] [--gate <file>]`
//!
//! The first process connects to the test on `127.0.0.1:<port>`; each
//! generation says `hello pid=<pid> generation=<n> served=<n>` on that
//! connection and answers one command per line:
//!
//! - `ping <x>`: `pong <x> pid=<pid> served=<n>`, counting it in the state;
//! - `upgrade` (or `SIGUSR2`, through an awaited trigger): prepares, says
//!   `preparing child=<pid>`, and serves on while it awaits `ready()` in
//!   `select!`; then says `ready child=<pid>`, or `prepare failed: <error>`
//!   and serves on;
//! - once ready, `go` hands over (`hand_over(state).await`): on `Done` this
//!   process exits 0; on `Failed` it says `failed: <error>` and serves on
//!   with the state it got back;
//! - `cancel`, while preparing or ready: drops the `Upgrade` and says
//!   `cancelled`;
//! - `quit`, or the test hanging up: exits 0.
//!
//! A process started by an upgrade first sleeps for the milliseconds
//! written in the `--gate` file, if any, so that the test can keep a new
//! build starting for as long as it needs.

use std::net::{Ipv4Addr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use mitosis::supervisor::Trigger;
use mitosis::{Handover, Outcome, Upgrade};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};

/// The connection crosses as a std socket; the program serves it through
/// a tokio clone of the same socket, dropped before each hand-over.
#[derive(Handover)]
struct State {
    generation: u64,
    served: u64,
    conn: TcpStream,
}

type Conn = Lines<BufReader<tokio::net::TcpStream>>;

fn main() -> ExitCode {
    let args: Vec<String> = mitosis::args()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|at| args.get(at + 1))
    };
    let Some(port) = value("--connect").and_then(|port| port.parse::<u16>().ok()) else {
        eprintln!("usage: testdata-tokio --connect <port> [--current-thread] [--gate <file>]");
        return ExitCode::from(4);
    };
    let taking_over = std::env::args().any(|arg| arg.starts_with("--mitosis"));
    if let (true, Some(gate)) = (taking_over, value("--gate")) {
        let ms = std::fs::read_to_string(gate)
            .ok()
            .and_then(|ms| ms.trim().parse().ok());
        std::thread::sleep(Duration::from_millis(ms.unwrap_or(0)));
    }
    if args.iter().any(|arg| arg == "--current-thread") {
        current_thread(port)
    } else {
        multi_thread(port)
    }
}

#[tokio::main]
async fn multi_thread(port: u16) -> ExitCode {
    run(port).await
}

#[tokio::main(flavor = "current_thread")]
async fn current_thread(port: u16) -> ExitCode {
    run(port).await
}

async fn run(port: u16) -> ExitCode {
    match serve(port).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("testdata-tokio: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Inside the runtime, as a #[tokio::main] program calls it.
    let mut state = match mitosis::init::<State>()? {
        Some(mut state) => {
            state.generation += 1;
            state
        }
        None => State {
            generation: 1,
            served: 0,
            conn: TcpStream::connect((Ipv4Addr::LOCALHOST, port))?,
        },
    };
    let trigger = Trigger::signal(libc::SIGUSR2)?;
    let mut conn = serving(&state)?;
    let hello = format!(
        "hello pid={} generation={} served={}",
        std::process::id(),
        state.generation,
        state.served
    );
    say(&mut conn, &hello).await?;
    loop {
        let line = tokio::select! {
            fired = trigger.recv() => { fired?; "upgrade".to_string() }
            line = conn.next_line() => match line? {
                Some(line) => line,
                None => return Ok(ExitCode::SUCCESS),
            },
        };
        match line.as_str() {
            "upgrade" => {}
            "quit" => return Ok(ExitCode::SUCCESS),
            other => {
                answer(&mut state, &mut conn, other).await?;
                continue;
            }
        }
        let mut upgrade = mitosis::prepare(&state)?;
        let child = upgrade.pid().unwrap_or(0);
        say(&mut conn, &format!("preparing child={child}")).await?;
        match prepared(&mut state, &mut conn, &mut upgrade).await? {
            Prepared::Go => {}
            Prepared::Quit => return Ok(ExitCode::SUCCESS),
            Prepared::Cancelled => {
                drop(upgrade);
                say(&mut conn, "cancelled").await?;
                continue;
            }
            Prepared::Failed(error) => {
                say(&mut conn, &format!("prepare failed: {error}")).await?;
                continue;
            }
        }
        // Request and answer, one at a time: nothing is left in the
        // reader's buffer to lose with the clone.
        drop(conn);
        match upgrade.hand_over(state).await {
            Outcome::Done { .. } => return Ok(ExitCode::SUCCESS),
            Outcome::Failed { state: back, error } => {
                state = back;
                conn = serving(&state)?;
                say(&mut conn, &format!("failed: {error}")).await?;
            }
        }
    }
}

enum Prepared {
    Go,
    Cancelled,
    Failed(mitosis::Error),
    Quit,
}

/// Serves while the new process starts; each command drops the pending
/// `ready()` future, and the next pass makes a new one.
async fn prepared(
    state: &mut State,
    conn: &mut Conn,
    upgrade: &mut Upgrade<State>,
) -> Result<Prepared, Box<dyn std::error::Error>> {
    let mut ready = false;
    loop {
        let line = tokio::select! {
            result = upgrade.ready(), if !ready => {
                match result {
                    Ok(()) => {
                        ready = true;
                        let child = upgrade.pid().unwrap_or(0);
                        say(conn, &format!("ready child={child}")).await?;
                        continue;
                    }
                    Err(error) => return Ok(Prepared::Failed(error)),
                }
            }
            line = conn.next_line() => line?,
        };
        match line.as_deref() {
            None | Some("quit") => return Ok(Prepared::Quit),
            Some("cancel") => return Ok(Prepared::Cancelled),
            Some("go") if ready => return Ok(Prepared::Go),
            Some(other) => answer(state, conn, other).await?,
        }
    }
}

async fn answer(
    state: &mut State,
    conn: &mut Conn,
    line: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let reply = match line.strip_prefix("ping ") {
        Some(x) => {
            state.served += 1;
            format!(
                "pong {x} pid={} served={}",
                std::process::id(),
                state.served
            )
        }
        None => format!("unknown {line:?}"),
    };
    Ok(say(conn, &reply).await?)
}

/// A tokio clone of the state's connection, to serve through.
fn serving(state: &State) -> std::io::Result<Conn> {
    let clone = state.conn.try_clone()?;
    clone.set_nonblocking(true)?;
    Ok(BufReader::new(tokio::net::TcpStream::from_std(clone)?).lines())
}

async fn say(conn: &mut Conn, line: &str) -> std::io::Result<()> {
    let stream = conn.get_mut().get_mut();
    stream.write_all(format!("{line}\n").as_bytes()).await
}
