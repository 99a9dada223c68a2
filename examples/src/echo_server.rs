//! A line echo server that upgrades itself under load without dropping a
//! connection, a request or a reply: `cargo run --release --bin echo-server
//! -- --help`.
//!
//! It lives in the library so that two binaries can build it:
//! `echo-server`, and `echo-server-next`, the same server reporting another
//! version, which the tests rename over `echo-server` to stand for a
//! rebuild.
//!
//! `echo-server --listen 127.0.0.1:0` prints `listening <port>` and answers
//! every request line `<id> <payload>` with the same line. A line `UPGRADE`
//! on any connection hands the whole server (the listener, every client
//! connection, the requests read but not answered yet and the replies not
//! written yet) to a new process running the binary now on disk. The new
//! process answers `UPGRADED <old_pid> <new_pid> <generation>` on the
//! connection that asked; if the upgrade fails, the old process answers
//! `UPGRADE-FAILED <reason>` there and carries on. A line `VERSION` is
//! answered with `VERSION <version>`, the build version of the process that
//! answers it (the version given to [`run`](crate::echo_server::run)):
//! requests behind an `UPGRADE` are answered by the new process, so a
//! `VERSION` there names the new build.
//!
//! One thread, non-blocking sockets and `poll`. An upgrade is prepared while
//! the server keeps serving every other connection (`mitosis::prepare`):
//! the new process starts, connects and agrees on the state's schema, and
//! the upgrade's fd, polled with the sockets, says when it is ready. Only
//! then, between two passes of the loop, when every request read is either
//! answered (its reply sits in `unwritten`) or not yet looked at (it sits in
//! `unread`), does the server hand over, so each request is answered
//! exactly once, by whichever process owns the connection at that point.
//! Bytes the clients send during that pause wait in the kernel's socket
//! buffers, and connections that arrive wait in the listener's backlog,
//! for the next generation.
//!
//! `kill -USR2 <pid>` upgrades it too (systemd's `systemctl reload`, with
//! `examples/systemd/echo-server.service`), and `SIGTERM` or `SIGINT` stop
//! it with status 0. Under systemd it can take its listener by socket
//! activation (`examples/systemd/echo-server.socket`, a socket named
//! `echo`) instead of `--listen`, and says `READY=1` once it listens.
//!
//! With `--tls-cert FILE --tls-key FILE` it speaks TLS on every
//! connection (the line protocol inside is the same), and each connection's
//! TLS session crosses the upgrades with it. Each generation reads the
//! certificate and key afresh at start, so an upgrade also puts a renewed
//! certificate in use for new connections. A TLS handshake starts once the
//! client's hello has arrived, and holds the loop for the round trip that
//! follows (a client that stalls mid-handshake holds it up to 10 s).
//!
//! `loadgen` drives it; `examples/tests/load.rs` and `examples/tests/tls.rs`
//! run both.

use std::error::Error;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mitosis::control::Control;
use mitosis::tls::TlsStream;
use mitosis::{Handover, Outcome};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

#[derive(Parser)]
#[command(
    name = "echo-server",
    about = "A line echo server that upgrades itself on `UPGRADE` without dropping a connection"
)]
struct Options {
    /// Where to listen, as HOST:PORT; port 0 picks a free port. Not needed
    /// when systemd passes a socket named `echo` (socket activation). A
    /// process started by an upgrade keeps the listener it is handed.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// How long a new build may take to start, in milliseconds, while this
    /// one serves (mitosis's default when absent).
    #[arg(long, value_name = "MS")]
    start_timeout_ms: Option<u64>,
    /// How long the transfer may take, in milliseconds: the longest the
    /// server pauses, even for a new build that hangs after receiving its
    /// state (mitosis's default when absent).
    #[arg(long, value_name = "MS")]
    transfer_timeout_ms: Option<u64>,
    /// A broken build, for the benchmarks: when started by an upgrade, it
    /// receives the state and then hangs without committing.
    #[arg(long, hide = true)]
    hang_after_receive: bool,
    /// Speak TLS to every client, with the certificate chain in this PEM
    /// file (with `--tls-key`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert`, in PEM.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve a control socket here (in a directory only this user can
    /// write), for `mitosisctl --socket PATH upgrade|previous|status`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Run again to upgrade: instead of serving, ask the server running
    /// with this `--control` socket to upgrade to this binary; print the
    /// outcome, and exit 0 when it is done, 1 when it failed.
    #[arg(long, requires = "control")]
    upgrade: bool,
}

/// The whole server. It crosses to the next generation at each upgrade.
///
/// The sockets are non-blocking. That flag belongs to the open socket, not
/// to the fd number, so it crosses with them.
#[derive(Handover)]
#[handover(name = "echo-server::State", version = 3)]
struct State {
    listener: TcpListener,
    /// `--control`: operators' upgrades, and going back.
    control: Option<Control>,
    clients: Vec<Client>,
    next_client_id: u64,
    /// 1 for the process started by hand, one more for each upgrade.
    generation: u64,
    /// The process that owns this state; the next generation reports it as
    /// the old pid.
    pid: u32,
    /// The client that asked for the upgrade in flight, for the new process
    /// to answer.
    upgrade_asked_by: Option<u64>,
}

#[derive(Handover)]
#[handover(name = "echo-server::Client", version = 2)]
struct Client {
    id: u64,
    stream: Conn,
    /// Bytes read and not answered yet: the start of a request whose end
    /// has not arrived, and whole requests that wait behind an `UPGRADE`.
    unread: Vec<u8>,
    /// Replies not written yet, because the socket's send buffer was full.
    unwritten: Vec<u8>,
    /// The client has shut down its sending side: the connection closes
    /// once every request before that has been answered.
    peer_closed: bool,
}

/// A client's connection.
#[derive(Handover)]
#[handover(name = "echo-server::Conn", version = 1)]
enum Conn {
    Plain(TcpStream),
    /// Accepted by a TLS server, before the client's hello has arrived. It
    /// crosses an upgrade as a plain socket, and the generation that owns it
    /// when the hello comes shakes hands.
    Hello(TcpStream),
    /// Boxed: it holds a session's buffers, which plain clients need not
    /// carry.
    Tls(Box<TlsStream>),
}

/// The most plaintext encrypted in one go: a client that does not read its
/// replies leaves them in `unwritten` (bounded, and in the state), and at
/// most this much more as ciphertext in its TLS stream.
const TLS_CHUNK: usize = 16 * 1024;

/// A request line longer than this closes the connection, so that a client
/// that never sends a newline cannot make the server buffer without bound.
const MAX_LINE: usize = 64 * 1024;

/// A client with this many reply bytes waiting is not read from until it
/// reads its replies.
const MAX_UNWRITTEN: usize = 256 * 1024;

/// Each connection's kernel send and receive buffers (Linux doubles the
/// value). Fixing them stops the kernel from growing them to megabytes for a
/// client that sends without reading its replies: a connection's memory
/// stays bounded, and the replies that do not fit wait in `unwritten`, in
/// the state.
const SOCKET_BUFFER: usize = 64 * 1024;

/// How much one client may send in one pass of the loop, so that a fast
/// client does not starve the others.
const READ_BUDGET: usize = 256 * 1024;

/// The accept backlog asked for; Linux caps it at `net.core.somaxconn`.
/// Connections that arrive during a handover wait there.
const BACKLOG: i32 = 4096;

/// Runs the server, built as `version`, and returns when it has handed
/// over to a new process or stopped on a signal (success), or on a fatal
/// error.
///
/// The `echo-server` binary is this function with the version it was built
/// as:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     mitosis_examples::echo_server::run("1.2.3")
/// }
/// ```
pub fn run(version: &'static str) -> ExitCode {
    // Before mitosis: the TLS sessions handed over are rebuilt with the
    // process-wide crypto provider.
    crate::tls::install_crypto_provider();
    crate::log_to_stderr("echo-server", log::LevelFilter::Warn);
    // Run again with --upgrade, it only asks: it must not become a server
    // (or, under a supervisor, a keeper) in `arrive`.
    let options = Options::parse_from(mitosis::args());
    if options.upgrade {
        return upgrade_the_running_server(&options);
    }
    // Then, before anything else: a process started by an upgrade
    // connects to its predecessor here.
    let arrival = mitosis::arrive::<State>();
    // A new generation that cannot read the certificate fails before it
    // commits, so the old one serves on.
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => crate::tls::server_config(cert, key).map(Some),
        _ => Ok(None),
    };
    let started = tls.map_err(Box::<dyn Error>::from).and_then(|tls| {
        let state = match arrival {
            Ok(Some(arrival)) => take_over(arrival, &options),
            Ok(None) => start(&options),
            Err(error) => Err(format!("could not take over: {error}").into()),
        };
        state.map(|state| (state, tls))
    });
    match started.and_then(|(state, tls)| serve(state, &options, tls.as_ref(), version)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// `--upgrade`: the server at `--control` becomes this build.
fn upgrade_the_running_server(options: &Options) -> ExitCode {
    let socket = options.control.as_deref().expect("clap requires --control");
    match mitosis::control::upgrade_to_this_binary(socket) {
        Ok(answer) if answer.succeeded() => {
            print!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprint!("{answer}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("echo-server: {error}");
            ExitCode::FAILURE
        }
    }
}

fn start(options: &Options) -> Result<State, Box<dyn Error>> {
    // First, so that a second server with the same socket stops before
    // it listens.
    let control = options.control.as_ref().map(Control::bind).transpose()?;
    let listener = match (
        mitosis::supervisor::activated::<TcpListener>("echo"),
        options.listen,
    ) {
        (Some(listener), _) => {
            listener.set_nonblocking(true)?;
            listener
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
    say(&format!("listening {port}"))?;
    if let Err(error) = mitosis::supervisor::ready() {
        log::warn!("{error}");
    }
    Ok(State {
        listener,
        control,
        clients: Vec::new(),
        next_client_id: 0,
        generation: 1,
        pid: std::process::id(),
        upgrade_asked_by: None,
    })
}

/// A non-blocking listener with a large backlog (std's `bind` asks for 128).
fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let family = match address {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &address)?;
    rustix::net::listen(&socket, BACKLOG)?;
    Ok(TcpListener::from(socket))
}

/// Takes the state over (or, as the broken build of the tests and
/// benchmarks, hangs before committing).
fn take_over(arrival: mitosis::Arrival<State>, options: &Options) -> Result<State, Box<dyn Error>> {
    let state = crate::commit_or_hang(arrival, options.hang_after_receive)?;
    Ok(resume(state))
}

/// The new generation reports to the client that asked for the upgrade,
/// after the replies its predecessor had not written yet.
fn resume(mut state: State) -> State {
    let old_pid = state.pid;
    state.pid = std::process::id();
    state.generation += 1;
    let report = format!("UPGRADED {old_pid} {} {}\n", state.pid, state.generation);
    if let Some(client) = state.take_upgrade_asker() {
        client.unwritten.extend_from_slice(report.as_bytes());
    }
    state
}

/// The loop. It returns `Ok` once a new process has taken over. `version`
/// is this build's, not part of the state: each generation answers
/// `VERSION` with its own.
fn serve(
    mut state: State,
    options: &Options,
    tls: Option<&Arc<rustls::ServerConfig>>,
    version: &str,
) -> Result<(), Box<dyn Error>> {
    let mut upgrades = mitosis::SplitOptions::new();
    if let Some(ms) = options.start_timeout_ms {
        upgrades.start_timeout(std::time::Duration::from_millis(ms));
    }
    if let Some(ms) = options.transfer_timeout_ms {
        upgrades.transfer_timeout(std::time::Duration::from_millis(ms));
    }
    let upgrade_signal = mitosis::supervisor::Trigger::signal(libc::SIGUSR2)?;
    let stop_signal = crate::Stop::on_sigterm_and_sigint()?;
    // The upgrade being prepared, while this process serves.
    let mut upgrade: Option<mitosis::Upgrade<State>> = None;
    let mut signalled = false;
    loop {
        if stop_signal.fired() {
            log::info!("stopping on a signal");
            return Ok(());
        }
        if upgrade_signal.fired() {
            if upgrade.is_some() || state.upgrade_asked_by.is_some() {
                log::info!("SIGUSR2: an upgrade is already under way");
            } else {
                signalled = true;
            }
        }
        // A new generation may hold whole requests that its predecessor
        // read, so it answers what it holds before it waits for more.
        state.answer_requests(version);
        state.clients.retain_mut(Client::flush_and_keep);
        if (state.upgrade_asked_by.is_some() || signalled) && upgrade.is_none() {
            signalled = false;
            match upgrades.prepare(&state) {
                Ok(prepared) => upgrade = Some(prepared),
                Err(error) => state.upgrade_failed(&error),
            }
        }
        // An operator's request (mitosisctl, run-again), which hears the
        // outcome from mitosis. While an upgrade runs, mitosis refuses
        // more.
        if let Some(request) = state.control.as_mut().and_then(Control::request)
            && upgrade.is_none()
        {
            match request.prepare(&upgrades, &state) {
                Ok(prepared) => upgrade = Some(prepared),
                Err(error) => state.upgrade_failed(&error),
            }
        }
        if let Some(prepared) = upgrade.as_mut() {
            match prepared.is_ready() {
                Ok(false) => {}
                // Between two passes: hand over. Only this is the pause.
                Ok(true) => {
                    let prepared = upgrade.take().expect("checked just above");
                    match prepared.hand_over(state).wait() {
                        Outcome::Done { .. } => return Ok(()),
                        Outcome::Failed { state: kept, error } => {
                            state = kept;
                            state.upgrade_failed(&error);
                        }
                    }
                    continue;
                }
                Err(error) => {
                    upgrade = None;
                    state.upgrade_failed(&error);
                    continue;
                }
            }
        }
        let mut events = vec![upgrade_signal.as_fd(), stop_signal.as_fd()];
        events.extend(upgrade.as_ref().map(AsFd::as_fd));
        // Out of the state while it is polled with the state's sockets.
        let control = state.control.take();
        events.extend(control.as_ref().map(AsFd::as_fd));
        let waited = state.wait_and_read(&events, tls);
        drop(events);
        state.control = control;
        waited?;
    }
}

impl State {
    /// The upgrade failed: the reason goes to the connection that asked,
    /// and the server carries on with its state.
    fn upgrade_failed(&mut self, error: &mitosis::Error) {
        log::warn!("upgrade failed, carrying on: {error}");
        let reason = error.to_string().replace(['\r', '\n'], " ");
        if let Some(client) = self.take_upgrade_asker() {
            client
                .unwritten
                .extend_from_slice(format!("UPGRADE-FAILED {reason}\n").as_bytes());
        }
    }

    /// The client that asked for the upgrade, if it is still connected.
    fn take_upgrade_asker(&mut self) -> Option<&mut Client> {
        let id = self.upgrade_asked_by.take()?;
        self.clients.iter_mut().find(|client| client.id == id)
    }

    /// Answers every whole request read so far. An `UPGRADE` stops its
    /// connection there, so that the requests behind it are answered after
    /// the upgrade, by whichever process then owns the connection. A
    /// `VERSION` is answered with `version`, this build's.
    fn answer_requests(&mut self, version: &str) {
        for client in &mut self.clients {
            if self.upgrade_asked_by == Some(client.id) {
                // It waits for its upgrade's outcome.
                continue;
            }
            let mut answered = 0;
            while let Some(end) = client.unread[answered..].iter().position(|&b| b == b'\n') {
                let line = &client.unread[answered..answered + end + 1];
                let request = line.trim_ascii_end();
                if request == b"UPGRADE" {
                    // One upgrade at a time: a second one waits, and the new
                    // process reads it as its first request on this
                    // connection.
                    if self.upgrade_asked_by.is_none() {
                        self.upgrade_asked_by = Some(client.id);
                        answered += line.len();
                    }
                    break;
                }
                if request == b"VERSION" {
                    client
                        .unwritten
                        .extend_from_slice(format!("VERSION {version}\n").as_bytes());
                } else {
                    client.unwritten.extend_from_slice(line);
                }
                answered += line.len();
            }
            client.unread.drain(..answered);
        }
    }

    /// Waits until a socket (or the upgrade being prepared) is ready, then
    /// accepts and reads what it can.
    fn wait_and_read(
        &mut self,
        events: &[BorrowedFd<'_>],
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> Result<(), Box<dyn Error>> {
        let mut fds = Vec::with_capacity(1 + self.clients.len() + events.len());
        fds.push(PollFd::new(&self.listener, PollFlags::IN));
        // Plaintext already decrypted (left by the read budget) is not in
        // the socket: poll must not wait for it.
        let mut decrypted = false;
        for client in &self.clients {
            let mut interest = PollFlags::empty();
            if client.wants_input() {
                interest |= PollFlags::IN;
                decrypted |= !client.stream.decrypted().is_empty();
            }
            if !client.unwritten.is_empty() || client.stream.wants_write() {
                interest |= PollFlags::OUT;
            }
            fds.push(PollFd::new(client.stream.socket(), interest));
        }
        // Last, so that the clients' entries keep their places.
        for event in events {
            fds.push(PollFd::from_borrowed_fd(*event, PollFlags::IN));
        }
        let timeout = decrypted.then_some(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        loop {
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => break,
                Err(Errno::INTR) => {}
                Err(error) => return Err(format!("poll: {error}").into()),
            }
        }
        let ready: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
        drop(fds);

        let mut client_ready = ready[1..=self.clients.len()].iter();
        self.clients.retain_mut(|client| {
            let revents = *client_ready.next().expect("one poll entry per client");
            let readable = revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR)
                || !client.stream.decrypted().is_empty();
            if !(readable && client.wants_input()) {
                return true;
            }
            if let Conn::Hello(_) = client.stream {
                return client.shake_hands(tls);
            }
            client.read_available()
        });
        // Writable sockets are written at the top of the loop, after the
        // requests just read have been answered.
        if !ready[0].is_empty() {
            self.accept_waiting(tls);
        }
        Ok(())
    }

    fn accept_waiting(&mut self, tls: Option<&Arc<rustls::ServerConfig>>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    // Out of fds, say: the connection stays in the backlog,
                    // and the next pass tries again.
                    log::error!("accept: {error}");
                    return;
                }
            };
            // An accepted socket does not inherit O_NONBLOCK. Replies go out
            // whole, so Nagle's algorithm would only delay them.
            if let Err(error) = stream
                .set_nonblocking(true)
                .and_then(|()| stream.set_nodelay(true))
                .and_then(|()| {
                    rustix::net::sockopt::set_socket_send_buffer_size(&stream, SOCKET_BUFFER)?;
                    rustix::net::sockopt::set_socket_recv_buffer_size(&stream, SOCKET_BUFFER)?;
                    Ok(())
                })
            {
                log::error!("setting up an accepted connection: {error}");
                continue;
            }
            let stream = match tls {
                Some(_) => Conn::Hello(stream),
                None => Conn::Plain(stream),
            };
            self.clients.push(Client {
                id: self.next_client_id,
                stream,
                unread: Vec::new(),
                unwritten: Vec::new(),
                peer_closed: false,
            });
            self.next_client_id += 1;
        }
    }
}

impl Client {
    fn wants_input(&self) -> bool {
        !self.peer_closed && self.unwritten.len() < MAX_UNWRITTEN
    }

    /// The client's hello has arrived: runs the TLS handshake. `false` when
    /// it fails, or this server does not speak TLS (a generation started
    /// without `--tls-cert` after one with it).
    fn shake_hands(&mut self, tls: Option<&Arc<rustls::ServerConfig>>) -> bool {
        let Conn::Hello(socket) = &self.stream else {
            return true;
        };
        let Some(config) = tls else {
            log::warn!(
                "client {}: a TLS client, and no --tls-cert to answer it",
                self.id
            );
            return false;
        };
        // A second fd of the socket goes into the stream; the first closes
        // when the Hello it sits in is replaced.
        let accepted = socket
            .try_clone()
            .and_then(|socket| TlsStream::accept(Arc::clone(config), socket));
        match accepted {
            Ok(stream) => {
                self.stream = Conn::Tls(Box::new(stream));
                true
            }
            Err(error) => {
                log::warn!("client {}: TLS handshake: {error}", self.id);
                false
            }
        }
    }

    /// Reads what the socket holds, up to the budget. `false` when the
    /// connection is broken or its request line is too long.
    fn read_available(&mut self) -> bool {
        let mut buffer = [0; 16 * 1024];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    self.peer_closed = true;
                    break;
                }
                Ok(n) => {
                    self.unread.extend_from_slice(&buffer[..n]);
                    budget = budget.saturating_sub(n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let partial = match self.unread.iter().rposition(|&b| b == b'\n') {
            Some(end) => self.unread.len() - end - 1,
            None => self.unread.len(),
        };
        if partial > MAX_LINE {
            log::warn!("client {}: request line over {MAX_LINE} bytes", self.id);
            return false;
        }
        true
    }

    /// Writes what the socket takes. `false` when the connection is broken,
    /// or done: the client has closed its side and has every reply.
    fn flush_and_keep(&mut self) -> bool {
        let mut written = 0;
        loop {
            // TLS: what was encrypted goes out before more is, so that the
            // replies a slow reader has not taken wait in `unwritten`.
            match self.stream.flush_encrypted() {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if written == self.unwritten.len() {
                break;
            }
            match self.stream.write(&self.unwritten[written..]) {
                Ok(0) => return false,
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.unwritten.drain(..written);
        // A request that waits behind an upgrade still needs its answer.
        let waiting = self.unread.contains(&b'\n');
        let done =
            self.peer_closed && self.unwritten.is_empty() && !self.stream.wants_write() && !waiting;
        if done {
            self.stream.close();
        }
        !done
    }
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(socket) | Conn::Hello(socket) => socket,
            Conn::Tls(stream) => stream.get_ref(),
        }
    }

    /// Plaintext the TLS stream has decrypted and the server not read.
    fn decrypted(&self) -> &[u8] {
        match self {
            Conn::Plain(_) | Conn::Hello(_) => &[],
            Conn::Tls(stream) => stream.buffer(),
        }
    }

    /// Whether encrypted bytes wait for the socket to take them.
    fn wants_write(&self) -> bool {
        match self {
            Conn::Plain(_) | Conn::Hello(_) => false,
            Conn::Tls(stream) => stream.wants_write(),
        }
    }

    /// Writes the encrypted bytes that wait; `WouldBlock` if the socket
    /// does not take them all.
    fn flush_encrypted(&mut self) -> io::Result<()> {
        match self {
            Conn::Tls(stream) if stream.wants_write() => stream.flush(),
            _ => Ok(()),
        }
    }

    /// Says goodbye in TLS (close_notify), so that the client can tell the
    /// end of the replies from a cut connection. The socket closes when the
    /// client is dropped.
    fn close(&mut self) {
        if let Conn::Tls(stream) = self {
            if let Err(error) = stream.close() {
                log::info!("TLS close_notify: {error}");
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(socket) => socket.read(buf),
            // Nothing to read before the handshake.
            Conn::Hello(_) => Err(io::ErrorKind::WouldBlock.into()),
            Conn::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Conn {
    /// Plain: what the socket takes. TLS: at most [`TLS_CHUNK`] bytes,
    /// encrypted, and written as far as the socket takes them.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(socket) => socket.write(buf),
            Conn::Hello(_) => Err(io::ErrorKind::WouldBlock.into()),
            Conn::Tls(stream) => stream.write(&buf[..buf.len().min(TLS_CHUNK)]),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_encrypted()
    }
}

/// Prints a line on stdout in one write: every generation shares stdout.
fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())?;
    out.flush()
}
