//! `echo-server`'s twin on tokio: the same line protocol, the same
//! `UPGRADE`, so that `loadgen` drives either.
//!
//! `tokio-echo-server --listen 127.0.0.1:0` prints `listening <port>` and
//! answers every request line `<id> <payload>` with the same line, byte for
//! byte. A line `UPGRADE` on any connection hands the whole server (the
//! listener, every connection, the requests read but not answered yet and
//! the replies not written yet) to a new process running the binary now on
//! disk, which answers `UPGRADED <old_pid> <new_pid> <generation>` on the
//! connection that asked; if the upgrade fails, the old process answers
//! `UPGRADE-FAILED <reason>` there and carries on. `kill -USR2 <pid>`
//! upgrades it too; `SIGTERM` or `SIGINT` stop it with status 0. Under
//! systemd it can take its listener by socket activation (a socket named
//! `echo`), like `echo-server`.
//!
//! One task per connection: the idiomatic shape on tokio, and the one
//! whose quiescing is worth showing. Each task owns its connection, a
//! `Framed<TcpStream, Lines>`, whose read buffer holds the requests read
//! and not answered and whose write buffer holds the replies not written.
//! The main task owns the listener and waits for everything else: new
//! connections, `UPGRADE`s, signals, and the upgrade being prepared.
//!
//! An upgrade is prepared while every task serves on (`mitosis::prepare`,
//! then `ready().await`). Once the new process is ready, the main task
//! cancels the tasks' `CancellationToken`; each task stops at its next
//! await, between two requests, and sends its connection back over a
//! channel. The main task puts them all in the state and hands over: only
//! that is the pause. If the new process fails, the state comes back and
//! the main task spawns a task for each connection again.

use std::collections::VecDeque;
use std::error::Error;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use mitosis::{Handover, Outcome};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "tokio-echo-server",
    about = "A line echo server on tokio that upgrades itself on `UPGRADE` without dropping a \
             connection"
)]
struct Options {
    /// Where to listen, as HOST:PORT; port 0 picks a free port. Not needed
    /// when systemd passes a socket named `echo` (socket activation). A
    /// process started by an upgrade keeps the listener it is handed.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// How long the transfer may take, in milliseconds: the longest the
    /// server pauses, even for a new build that hangs after receiving its
    /// state (mitosis's default when absent).
    #[arg(long, value_name = "MS")]
    transfer_timeout_ms: Option<u64>,
    /// A broken build, for the tests: when started by an upgrade, it
    /// receives the state and then hangs without committing.
    #[arg(long, hide = true)]
    hang_after_receive: bool,
}

/// The whole server, as it crosses to the next generation.
#[derive(Handover)]
#[handover(name = "tokio-echo-server::State", version = 1)]
struct State {
    listener: TcpListener,
    /// Empty while the server serves, when each connection belongs to its
    /// task; the connections come back here only to be handed over.
    clients: Vec<Client>,
    next_client_id: u64,
    /// 1 for the process started by hand, one more for each upgrade.
    generation: u64,
    /// The process that owns this state; the next generation reports it as
    /// the old pid.
    pid: u32,
    /// The client whose `UPGRADE` the handover answers, for the new process
    /// to answer.
    upgrade_asked_by: Option<u64>,
}

#[derive(Handover)]
#[handover(name = "tokio-echo-server::Client", version = 1)]
struct Client {
    id: u64,
    /// The socket, with the requests read and not answered yet (the start
    /// of one whose end has not arrived, and any behind an `UPGRADE`) in
    /// the read buffer, and the replies not written yet in the write buffer.
    conn: Framed<TcpStream, Lines>,
    /// It has sent an `UPGRADE` that has no answer yet: its later requests
    /// wait unread, for whichever process answers it.
    wants_upgrade: bool,
    /// The client has shut down its sending side: the connection closes
    /// once every request before that has been answered.
    peer_closed: bool,
}

/// The codec: a request is a line, `\n` included, and its reply is the same
/// bytes. Not tokio-util's `LinesCodec`, which drops a `\r` before the `\n`
/// and refuses bytes that are not UTF-8: an echo gives back what it got.
/// Derived, because a `Framed` crosses with its codec.
#[derive(Handover, Default)]
#[handover(name = "tokio-echo-server::Lines", version = 1)]
struct Lines;

/// A request line longer than this closes the connection, so that a client
/// that never sends a newline cannot make the server buffer without bound.
const MAX_LINE: usize = 64 * 1024;

/// A client with this many reply bytes waiting is not read from until it
/// reads its replies (the write buffer's backpressure boundary).
const MAX_UNWRITTEN: usize = 256 * 1024;

/// Each connection's kernel send and receive buffers (Linux doubles the
/// value). Fixing them stops the kernel from growing them to megabytes for a
/// client that sends without reading its replies: the replies that do not
/// fit wait in the write buffer, which is in the state.
const SOCKET_BUFFER: usize = 64 * 1024;

/// The accept backlog asked for (tokio's `bind` asks for 1024); Linux caps
/// it at `net.core.somaxconn`. Connections that arrive during a handover
/// wait there.
const BACKLOG: u32 = 4096;

impl Decoder for Lines {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, buffer: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => Ok(Some(buffer.split_to(end + 1))),
            None if buffer.len() > MAX_LINE => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a request line over {MAX_LINE} bytes"),
            )),
            None => Ok(None),
        }
    }

    /// A request cut short by the client's shutdown is never answered, as
    /// `echo-server` does; tokio-util's default would call it an error.
    fn decode_eof(&mut self, buffer: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let line = self.decode(buffer)?;
        if line.is_none() {
            buffer.clear();
        }
        Ok(line)
    }
}

impl Encoder<BytesMut> for Lines {
    type Error = io::Error;

    fn encode(&mut self, line: BytesMut, buffer: &mut BytesMut) -> io::Result<()> {
        buffer.extend_from_slice(&line);
        Ok(())
    }
}

/// Multi-thread, as most tokio servers run: the connection tasks spread
/// over the worker threads.
#[tokio::main]
async fn main() -> ExitCode {
    mitosis_examples::log_to_stderr("tokio-echo-server", log::LevelFilter::Warn);
    // Before anything else: a process started by an upgrade connects to
    // its predecessor here. Blocking in `main` is fine: no task runs yet.
    let arrival = mitosis::arrive::<State>();
    let options = Options::parse_from(mitosis::args());
    let state = match arrival {
        Ok(Some(arrival)) => take_over(arrival, &options),
        Ok(None) => start(&options),
        Err(error) => Err(format!("could not take over: {error}").into()),
    };
    match state {
        Ok(state) => match serve(state, &options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                log::error!("{error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            log::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn start(options: &Options) -> Result<State, Box<dyn Error>> {
    let listener = match (
        mitosis::supervisor::activated::<std::net::TcpListener>("echo"),
        options.listen,
    ) {
        (Some(listener), _) => {
            // tokio requires a non-blocking socket, and systemd passes a
            // blocking one.
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)?
        }
        (None, Some(address)) => {
            listen(address).map_err(|error| format!("could not listen on {address}: {error}"))?
        }
        (None, None) => {
            return Err(
                "nowhere to listen: give --listen HOST:PORT, or start it by socket \
                 activation with a socket named `echo`"
                    .into(),
            );
        }
    };
    let port = listener.local_addr()?.port();
    // One write, since every generation shares stdout.
    println!("listening {port}");
    if let Err(error) = mitosis::supervisor::ready() {
        log::warn!("{error}");
    }
    Ok(State {
        listener,
        clients: Vec::new(),
        next_client_id: 0,
        generation: 1,
        pid: std::process::id(),
        upgrade_asked_by: None,
    })
}

fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Takes the state over (or, as the broken build of the tests and
/// benchmarks, hangs before committing).
fn take_over(arrival: mitosis::Arrival<State>, options: &Options) -> Result<State, Box<dyn Error>> {
    let state = mitosis_examples::commit_or_hang(arrival, options.hang_after_receive)?;
    Ok(resume(state))
}

/// The new generation reports to the client that asked for the upgrade,
/// after the replies its predecessor had not written yet.
fn resume(mut state: State) -> State {
    let old_pid = state.pid;
    state.pid = std::process::id();
    state.generation += 1;
    let report = format!("UPGRADED {old_pid} {} {}\n", state.pid, state.generation);
    if let Some(id) = state.upgrade_asked_by.take() {
        if let Some(client) = state.clients.iter_mut().find(|client| client.id == id) {
            client.answer_upgrade(&report);
        }
    }
    state
}

/// A connection's `UPGRADE`, sent to the main task, with where to send the
/// reason if the upgrade fails before its connection comes back.
struct Ask {
    id: u64,
    failed: oneshot::Sender<String>,
}

/// The main task's loop. It returns `Ok` once a new process has taken
/// over, or on `SIGTERM` or `SIGINT`.
async fn serve(mut state: State, options: &Options) -> Result<(), Box<dyn Error>> {
    let mut upgrades = mitosis::SplitOptions::new();
    if let Some(ms) = options.transfer_timeout_ms {
        upgrades.transfer_timeout(Duration::from_millis(ms));
    }
    let upgrade_signal = mitosis::supervisor::Trigger::signal(libc::SIGUSR2)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Unbounded, yet bounded by the connections: a task that has asked
    // reads nothing more until it has its answer.
    let (ask_sender, mut asks) = mpsc::unbounded_channel::<Ask>();
    let mut tasks = Tasks::new(ask_sender.clone());
    for client in std::mem::take(&mut state.clients) {
        tasks.spawn(client);
    }
    // The upgrade being prepared, while the tasks serve; the `UPGRADE` it
    // answers (none for SIGUSR2); the `UPGRADE`s that wait for their turn.
    let mut upgrade: Option<mitosis::Upgrade<State>> = None;
    let mut asker: Option<Ask> = None;
    let mut waiting: VecDeque<Ask> = VecDeque::new();
    let mut signalled = false;
    loop {
        // One upgrade at a time.
        if upgrade.is_none() && (signalled || !waiting.is_empty()) {
            asker = if signalled { None } else { waiting.pop_front() };
            signalled = false;
            // The clients' sockets are not in the state yet, and need not
            // be: tokio opens every socket close-on-exec.
            match upgrades.prepare(&state) {
                Ok(prepared) => upgrade = Some(prepared),
                Err(error) => fail(asker.take(), &error),
            }
        }
        tokio::select! {
            _ = terminate.recv() => {
                log::info!("stopping on SIGTERM");
                return Ok(());
            }
            _ = interrupt.recv() => {
                log::info!("stopping on SIGINT");
                return Ok(());
            }
            fired = upgrade_signal.recv() => {
                fired?;
                if upgrade.is_some() {
                    log::info!("SIGUSR2: an upgrade is already under way");
                } else {
                    signalled = true;
                }
            }
            Some(ask) = asks.recv() => waiting.push_back(ask),
            ready = ready(&mut upgrade) => {
                let Some(prepared) = upgrade.take() else { continue };
                if let Err(error) = ready {
                    fail(asker.take(), &error);
                    continue;
                }
                // Quiesce: every connection comes back with its buffers.
                state.clients = tasks.stop().await;
                // The `UPGRADE`s not answered yet travel with their
                // connections (`wants_upgrade`), and are asked again
                // wherever the connections go next.
                waiting.clear();
                while asks.try_recv().is_ok() {}
                state.upgrade_asked_by = asker.as_ref().map(|ask| ask.id);
                // Only this is the pause.
                match prepared.hand_over(state).await {
                    Outcome::Done { .. } => return Ok(()),
                    Outcome::Failed { state: kept, error } => {
                        state = kept;
                        log::warn!("upgrade failed, carrying on: {error}");
                        if let Some(id) = state.upgrade_asked_by.take() {
                            if let Some(client) = state.clients.iter_mut().find(|c| c.id == id) {
                                client.answer_upgrade(&failure(&error));
                            }
                        }
                        asker = None;
                        tasks = Tasks::new(ask_sender.clone());
                        for client in std::mem::take(&mut state.clients) {
                            tasks.spawn(client);
                        }
                    }
                }
            }
            accepted = state.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let id = state.next_client_id;
                    state.next_client_id += 1;
                    match set_up(&stream) {
                        Ok(()) => {
                            let mut conn = Framed::new(stream, Lines);
                            // It crosses with the `Framed`.
                            conn.set_backpressure_boundary(MAX_UNWRITTEN);
                            tasks.spawn(Client {
                                id,
                                conn,
                                wants_upgrade: false,
                                peer_closed: false,
                            });
                        }
                        Err(error) => log::error!("setting up an accepted connection: {error}"),
                    }
                }
                Err(error) => {
                    // Out of fds, say: the connection stays in the backlog.
                    // A pause, or accept would fail again at once, in a
                    // busy loop.
                    log::error!("accept: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Whether the upgrade being prepared is ready; never, if there is none.
async fn ready(upgrade: &mut Option<mitosis::Upgrade<State>>) -> Result<(), mitosis::Error> {
    match upgrade {
        Some(upgrade) => upgrade.ready().await,
        None => std::future::pending().await,
    }
}

/// The upgrade failed before the connections were handed back: the reason
/// goes to the task that asked, and the server carries on.
fn fail(asker: Option<Ask>, error: &mitosis::Error) {
    log::warn!("upgrade failed, carrying on: {error}");
    if let Some(ask) = asker {
        // Its connection may have gone since; nobody then waits.
        ask.failed.send(failure(error)).ok();
    }
}

fn failure(error: &mitosis::Error) -> String {
    let reason = error.to_string().replace(['\r', '\n'], " ");
    format!("UPGRADE-FAILED {reason}\n")
}

/// An accepted connection: replies go out whole, so Nagle's algorithm
/// would only delay them.
fn set_up(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    rustix::net::sockopt::set_socket_send_buffer_size(stream, SOCKET_BUFFER)?;
    rustix::net::sockopt::set_socket_recv_buffer_size(stream, SOCKET_BUFFER)?;
    Ok(())
}

/// The connection tasks between two handovers, and how to stop them.
struct Tasks {
    stop: CancellationToken,
    /// Each stopped task sends its connection here. The main task keeps
    /// one sender, for the tasks it spawns, and drops it to stop them: the
    /// channel ends once every task has either sent its connection or
    /// closed it.
    hand_back: mpsc::UnboundedSender<Client>,
    handed_back: mpsc::UnboundedReceiver<Client>,
    asks: mpsc::UnboundedSender<Ask>,
}

impl Tasks {
    fn new(asks: mpsc::UnboundedSender<Ask>) -> Tasks {
        let (hand_back, handed_back) = mpsc::unbounded_channel();
        Tasks {
            stop: CancellationToken::new(),
            hand_back,
            handed_back,
            asks,
        }
    }

    fn spawn(&self, client: Client) {
        tokio::spawn(client.serve(self.stop.clone(), self.hand_back.clone(), self.asks.clone()));
    }

    /// Stops every task, and returns their connections.
    async fn stop(self) -> Vec<Client> {
        let Tasks {
            stop,
            hand_back,
            mut handed_back,
            ..
        } = self;
        stop.cancel();
        drop(hand_back);
        let mut clients = Vec::new();
        while let Some(client) = handed_back.recv().await {
            clients.push(client);
        }
        clients
    }
}

/// What a connection's socket has for its task.
enum Io {
    Request(BytesMut),
    /// The client has shut down its sending side.
    Closed,
    Broken(io::Error),
}

impl Client {
    /// The connection's task. It ends by handing the connection back, once
    /// `stop` is cancelled, or by closing it.
    async fn serve(
        mut self,
        stop: CancellationToken,
        hand_back: mpsc::UnboundedSender<Client>,
        asks: mpsc::UnboundedSender<Ask>,
    ) {
        // An `UPGRADE` that crossed unanswered is asked again here.
        let mut failed = self.wants_upgrade.then(|| self.ask(&asks));
        loop {
            if self.peer_closed && !self.wants_upgrade && self.conn.write_buffer().is_empty() {
                log::debug!("client {}: done", self.id);
                return;
            }
            let reading = !self.peer_closed && !self.wants_upgrade;
            // Every branch is cancellation-safe, as `select!` needs: what
            // was read or not yet written stays in the `Framed`'s buffers.
            tokio::select! {
                // First, so that a busy connection stops at once.
                biased;
                () = stop.cancelled() => {
                    // The main task waits for it; it may only have gone if
                    // the main task itself has.
                    hand_back.send(self).ok();
                    return;
                }
                reason = upgrade_failed(&mut failed) => {
                    failed = None;
                    self.answer_upgrade(&reason);
                }
                io = std::future::poll_fn(|cx| poll_io(&mut self.conn, reading, cx)) => match io {
                    Io::Request(line) if line.trim_ascii_end() == b"UPGRADE" => {
                        self.wants_upgrade = true;
                        failed = Some(self.ask(&asks));
                    }
                    Io::Request(line) => {
                        // `poll_io` saw the sink ready just now.
                        if let Err(error) = self.conn.start_send_unpin(line) {
                            log::info!("client {}: {error}", self.id);
                            return;
                        }
                    }
                    Io::Closed => self.peer_closed = true,
                    Io::Broken(error) => {
                        log::info!("client {}: {error}", self.id);
                        return;
                    }
                },
            }
        }
    }

    /// Sends this connection's `UPGRADE` to the main task; the receiver
    /// says why, if the upgrade fails while the task still runs.
    fn ask(&self, asks: &mpsc::UnboundedSender<Ask>) -> oneshot::Receiver<String> {
        let (failed, reason) = oneshot::channel();
        // The main task owns the receiver until it returns.
        asks.send(Ask {
            id: self.id,
            failed,
        })
        .ok();
        reason
    }

    /// Answers this connection's `UPGRADE`, after the replies before it,
    /// and lets its next requests be read.
    fn answer_upgrade(&mut self, line: &str) {
        // Straight into the write buffer: the answer is owed whatever the
        // backlog of replies.
        self.conn
            .write_buffer_mut()
            .extend_from_slice(line.as_bytes());
        self.wants_upgrade = false;
    }
}

/// Why the upgrade this task asked for failed; never, if it has not asked,
/// or if its connection crosses instead.
async fn upgrade_failed(failed: &mut Option<oneshot::Receiver<String>>) -> String {
    match failed {
        Some(reason) => match reason.await {
            Ok(reason) => reason,
            // Dropped unanswered: the connection is being handed back.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Writes what the socket takes and, while `reading` and the replies owed
/// stay under the backpressure boundary, reads the next request: both at
/// once, so that a client sending requests while its replies back up is
/// still read up to the boundary.
fn poll_io(conn: &mut Framed<TcpStream, Lines>, reading: bool, cx: &mut Context<'_>) -> Poll<Io> {
    if !conn.write_buffer().is_empty() {
        if let Poll::Ready(Err(error)) = SinkExt::<BytesMut>::poll_flush_unpin(conn, cx) {
            return Poll::Ready(Io::Broken(error));
        }
    }
    if !reading {
        return Poll::Pending;
    }
    match SinkExt::<BytesMut>::poll_ready_unpin(conn, cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(error)) => return Poll::Ready(Io::Broken(error)),
        Poll::Pending => return Poll::Pending,
    }
    conn.poll_next_unpin(cx).map(|request| match request {
        Some(Ok(line)) => Io::Request(line),
        Some(Err(error)) => Io::Broken(error),
        None => Io::Closed,
    })
}
