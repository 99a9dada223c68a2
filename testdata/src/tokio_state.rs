//! The program of `testdata-tokio-state` (`#[tokio::main]`, multi-thread)
//! and `testdata-tokio-state-current` (`#[tokio::main(flavor =
//! "current_thread")]`), for `tests/tokio_state.rs`: a state made of tokio
//! types, with bytes in their buffers, handed over by an awaited upgrade.
//!
//! `testdata-tokio-state-<flavour> --journal <port>`
//!
//! The first process listens on 127.0.0.1:0, connects to the test's
//! journal on `127.0.0.1:<port>` and prints `listening port=<port>
//! pid=<pid>` on stdout. Its [`State`] holds the listener, every accepted
//! connection in a `Framed` with a `LinesCodec`, and the journal in a
//! `BufWriter`. Each connection is greeted with `hello gen=<n> pid=<pid>`
//! and answered one line per command:
//!
//! - `ping <x>` → `pong <x> gen=<n> pid=<pid>`;
//! - `upgrade [broken]` → `preparing child=<pid> unread=<n>`, `<n>` being
//!   the bytes this connection's `Framed` has read but not decoded; then,
//!   once the new process is ready, `ready child=<pid>`, and the state is
//!   handed over (`hand_over(state).await`). No connection is accepted from
//!   `upgrade` to the outcome, so one made meanwhile waits in the
//!   listener's backlog for the generation that ends up owning it. The new
//!   generation greets every connection it took over with its `hello`. On
//!   a failure this one answers `failed: <error>` and serves on. `broken`
//!   gives the new process `MITOSIS_FAULT=new:commit:kill`: it dies after
//!   decoding the state, for a rollback. An upgrade that does not start
//!   answers `prepare failed: <error>`;
//! - `flush` → the journal is flushed, then `flushed gen=<n>`;
//! - `child-env` → `child-env probe=<yes|no> mitosis=<names|none>`: the
//!   `MITOSIS_*` variables that a subprocess (`env`, spawned with
//!   `TESTDATA_PROBE=1` added, which it must see) finds in its
//!   environment;
//! - `quit` → exits 0.
//!
//! The journal gets a line `gen=<n> <event>` for each event, written into
//! the `BufWriter` and flushed only on `flush`, so that its unwritten bytes
//! cross every handover. The events: `ping <x>`, `upgrade` (at `upgrade`),
//! `arrived pid=<pid>` (a new generation, before anything else) and
//! `rolled back`.

use std::future::poll_fn;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::task::Poll;

use futures_util::{SinkExt, StreamExt};
use mitosis::{Handover, Outcome, SplitOptions};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

type Conn = Framed<TcpStream, LinesCodec>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Everything the program has, handed over whole.
#[derive(Handover)]
pub struct State {
    generation: u64,
    listener: TcpListener,
    conns: Vec<Conn>,
    journal: BufWriter<TcpStream>,
}

/// What the binaries' `#[tokio::main]` functions await: `init` is called
/// inside the runtime, as such a program does.
pub async fn main(flavour: &str) -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("testdata-tokio-state-{flavour}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Error> {
    let pid = std::process::id();
    let mut state = match mitosis::init::<State>()? {
        Some(mut state) => {
            state.generation += 1;
            journal(&mut state, &format!("arrived pid={pid}")).await?;
            let hello = hello(&state);
            for conn in &mut state.conns {
                conn.send(hello.as_str()).await?;
            }
            state
        }
        None => first().await?,
    };
    loop {
        let (index, line) = tokio::select! {
            accepted = state.listener.accept() => {
                let mut conn = Framed::new(accepted?.0, LinesCodec::new());
                conn.send(hello(&state)).await?;
                state.conns.push(conn);
                continue;
            }
            (index, line) = next_line(&mut state.conns) => (index, line),
        };
        let Some(Ok(line)) = line else {
            // Hung up, or not a line: that connection is done with.
            state.conns.remove(index);
            continue;
        };
        let (command, argument) = line.split_once(' ').unwrap_or((&line, ""));
        let answer = match command {
            "ping" => {
                journal(&mut state, &format!("ping {argument}")).await?;
                format!("pong {argument} gen={} pid={pid}", state.generation)
            }
            "upgrade" => match upgrade(state, index, argument == "broken").await? {
                Some(kept) => {
                    state = kept;
                    continue;
                }
                None => return Ok(()),
            },
            "flush" => {
                state.journal.flush().await?;
                format!("flushed gen={}", state.generation)
            }
            "child-env" => child_env().await?,
            "quit" => return Ok(()),
            _ => format!("unknown {line:?}"),
        };
        state.conns[index].send(answer).await?;
    }
}

/// The first generation's state.
async fn first() -> Result<State, Error> {
    let args: Vec<String> = mitosis::args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let port = args
        .iter()
        .position(|arg| arg == "--journal")
        .and_then(|at| args.get(at + 1)?.parse::<u16>().ok())
        .ok_or("usage: testdata-tokio-state-<flavour> --journal <port>")?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let journal = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    crate::say(format!(
        "listening port={} pid={}",
        listener.local_addr()?.port(),
        std::process::id()
    ));
    Ok(State {
        generation: 1,
        listener,
        conns: Vec::new(),
        journal: BufWriter::new(journal),
    })
}

/// `upgrade [broken]` from connection `index`: the state back if the
/// program serves on, `None` if the new process took over.
async fn upgrade(mut state: State, index: usize, broken: bool) -> Result<Option<State>, Error> {
    journal(&mut state, "upgrade").await?;
    let mut options = SplitOptions::new();
    // The fault is for that new process only, never inherited further.
    match broken {
        true => options.env("MITOSIS_FAULT", "new:commit:kill"),
        false => options.env_remove("MITOSIS_FAULT"),
    };
    let mut upgrade = match options.prepare(&state) {
        Ok(upgrade) => upgrade,
        Err(error) => {
            let answer = format!("prepare failed: {error}");
            state.conns[index].send(answer).await?;
            return Ok(Some(state));
        }
    };
    let child = upgrade.pid().unwrap_or(0);
    let unread = state.conns[index].read_buffer().len();
    let answer = format!("preparing child={child} unread={unread}");
    state.conns[index].send(answer).await?;
    if let Err(error) = upgrade.ready().await {
        state.conns[index]
            .send(format!("prepare failed: {error}"))
            .await?;
        return Ok(Some(state));
    }
    state.conns[index]
        .send(format!("ready child={child}"))
        .await?;
    match upgrade.hand_over(state).await {
        Outcome::Done { .. } => Ok(None),
        Outcome::Failed { mut state, error } => {
            journal(&mut state, "rolled back").await?;
            state.conns[index].send(format!("failed: {error}")).await?;
            Ok(Some(state))
        }
    }
}

/// The next line from any connection, with the connection's index; `None`
/// when it hung up. Pending while there is no connection.
async fn next_line(conns: &mut [Conn]) -> (usize, Option<Result<String, LinesCodecError>>) {
    poll_fn(|cx| {
        for (index, conn) in conns.iter_mut().enumerate() {
            if let Poll::Ready(line) = conn.poll_next_unpin(cx) {
                return Poll::Ready((index, line));
            }
        }
        Poll::Pending
    })
    .await
}

fn hello(state: &State) -> String {
    format!("hello gen={} pid={}", state.generation, std::process::id())
}

/// Writes `gen=<n> <event>` into the journal's buffer, without flushing it.
async fn journal(state: &mut State, event: &str) -> std::io::Result<()> {
    let line = format!("gen={} {event}\n", state.generation);
    state.journal.write_all(line.as_bytes()).await
}

/// Spawns `env` with `TESTDATA_PROBE=1` added and reports the `MITOSIS_*`
/// names in its output, and whether it saw the probe.
async fn child_env() -> Result<String, Error> {
    let output = tokio::process::Command::new("env")
        .env("TESTDATA_PROBE", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !output.status.success() {
        return Err(format!("env: {}", output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let names: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, _)| name)
        .collect();
    let probe = if names.contains(&"TESTDATA_PROBE") {
        "yes"
    } else {
        "no"
    };
    let mut mitosis: Vec<&str> = names
        .into_iter()
        .filter(|name| name.starts_with("MITOSIS_"))
        .collect();
    mitosis.sort();
    let mitosis = match mitosis.is_empty() {
        true => "none".to_string(),
        false => mitosis.join(","),
    };
    Ok(format!("child-env probe={probe} mitosis={mitosis}"))
}
