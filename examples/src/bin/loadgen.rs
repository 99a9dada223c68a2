//! A load generator for `echo-server` that upgrades the server over and
//! over while clients talk to it, and checks that nobody notices.
//!
//! `loadgen --server 127.0.0.1:PORT --clients 64 --reconnect-every 10
//! --upgrades 100` keeps 64 clients busy on persistent connections. Each
//! round a client sends one to `--pipeline` requests `<client>-<seq>
//! <payload>`, in two writes split mid-line so that the server sees partial
//! requests, then reads the replies and checks that each is its request,
//! in order: a reply missing, repeated, out of order or altered is a
//! failure. Every `--reconnect-every`th request of a client goes over a
//! connection of its own (connect, one request, close). Meanwhile a control
//! connection asks for upgrades back to back (`UPGRADE`, then waits for
//! `UPGRADED`), printing one `upgrade` line for each. With `--bad-build`
//! the binary on disk is a broken build, and every upgrade must be refused
//! (`UPGRADE-FAILED`) while the clients notice nothing. Around every upgrade
//! it also holds requests of its own, so that every handover carries what
//! the clients' traffic leaves in the server only now and then: half a
//! request on one connection, its end sent after `UPGRADED`, and on another
//! connection as many requests as the server takes while their replies are
//! not read, read after `UPGRADED`. Once the upgrades are done (and
//! `--duration` has passed, and each client has made
//! `--requests-per-client` requests) the clients close their connections,
//! checking that no stray reply follows.
//!
//! With `--tls` every connection speaks TLS to the server (`echo-server
//! --tls-cert`), verifying its certificate against `--tls-ca` (or the
//! system's trusted roots) by `--tls-server-name`; everything else is the
//! same, each write of a request its own TLS record.
//!
//! It prints the counts, then the latency percentiles for requests in steady
//! state and for those that overlapped an upgrade window (from `UPGRADE`
//! sent to `UPGRADED` received), then a last line
//! `result key=value ...` for programs. It exits with status 1 if anything
//! failed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Drives echo-server with many clients while upgrading it back to back"
)]
struct Options {
    /// The echo server, as HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    server: SocketAddr,
    /// Concurrent clients, each with a persistent connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Every K-th request of a client goes over a new connection of its own
    /// (connect, one request, close); 0 for never.
    #[arg(long, value_name = "K", default_value_t = 10)]
    reconnect_every: u64,
    /// How many upgrades to ask for, one after the other.
    #[arg(long, default_value_t = 100)]
    upgrades: u64,
    /// Each client makes at least this many requests before it stops.
    #[arg(long, value_name = "N", default_value_t = 0)]
    requests_per_client: u64,
    /// The run lasts at least this long: `500ms`, `10s`, `2m`.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// The most requests a client sends before reading their replies; its
    /// rounds cycle through 1 to this many.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pipeline: u64,
    /// How long a connect, a reply or an `UPGRADED` may take before it
    /// counts as failed (`500ms`, `10s`, `2m`).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,
    /// The binary on disk is a broken build: every upgrade must fail
    /// (`UPGRADE-FAILED`), and one that succeeds counts as a failure.
    #[arg(long)]
    bad_build: bool,
    /// Speak TLS to the server (`echo-server --tls-cert`).
    #[arg(long)]
    tls: bool,
    /// Trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls"
    )]
    tls_server_name: String,
    /// What `--tls`, `--tls-ca` and `--tls-server-name` make, once read.
    #[arg(skip)]
    tls_client: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// What the clients and the control connection share.
struct Shared<'a> {
    options: &'a Options,
    /// Every client's first connect attempt, and the control connection's
    /// start: upgrades begin under the full load.
    all_connected: Barrier,
    /// Counts window edges: odd while an upgrade is in flight. A request
    /// overlapped an upgrade if it began in one or saw an edge pass.
    upgrade_windows: AtomicU64,
    /// The upgrades (and `--duration`) are over: clients stop once they have
    /// made their `--requests-per-client`.
    finishing: AtomicBool,
    /// The control connection broke: clients stop at once.
    aborting: AtomicBool,
}

impl Shared<'_> {
    fn window(&self) -> u64 {
        self.upgrade_windows.load(Ordering::SeqCst)
    }

    fn should_stop(&self, requests: u64) -> bool {
        self.aborting.load(Ordering::SeqCst)
            || (self.finishing.load(Ordering::SeqCst)
                && requests >= self.options.requests_per_client)
    }
}

/// One client's counts and latencies (in nanoseconds).
#[derive(Default)]
struct Tally {
    /// Requests sent.
    requests: u64,
    /// Requests answered with their own line, in order, once.
    answered: u64,
    /// Requests sent over a connection of their own.
    fresh_connections: u64,
    failed_connects: u64,
    /// Connections reset or closed by the server.
    resets: u64,
    /// Replies that did not come within `--timeout`.
    timeouts: u64,
    lost: u64,
    duplicated: u64,
    mismatched: u64,
    steady: Vec<u64>,
    during_upgrade: Vec<u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.answered += other.answered;
        self.fresh_connections += other.fresh_connections;
        self.failed_connects += other.failed_connects;
        self.resets += other.resets;
        self.timeouts += other.timeouts;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.mismatched += other.mismatched;
        self.steady.extend(other.steady);
        self.during_upgrade.extend(other.during_upgrade);
    }

    /// A request answered correctly, sent at `sent` while the window counter
    /// read `window`.
    fn answered(&mut self, shared: &Shared<'_>, sent: Instant, window: u64) {
        let latency = sent.elapsed().as_nanos() as u64;
        self.answered += 1;
        if window % 2 == 1 || shared.window() != window {
            self.during_upgrade.push(latency);
        } else {
            self.steady.push(latency);
        }
    }

    /// A connection failed while `pending` requests waited for replies.
    fn broken(&mut self, error: &io::Error, pending: u64) {
        if is_timeout(error) {
            self.timeouts += 1;
        } else {
            self.resets += 1;
        }
        self.lost += pending;
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A client gives up after this many connect failures in a row, so that a
/// dead server ends the run instead of spinning it.
const MAX_CONNECT_FAILURES_IN_A_ROW: u32 = 20;

struct Client<'a> {
    number: usize,
    shared: &'a Shared<'a>,
    /// The sequence number of the last request made.
    seq: u64,
    round: u64,
    conn: Option<Conn>,
    connect_failures_in_a_row: u32,
    tally: Tally,
    /// The round's requests, back to back, and where each one lies.
    requests: Vec<u8>,
    lines: Vec<Range<usize>>,
    reply: Vec<u8>,
}

fn run_client(number: usize, shared: &Shared<'_>) -> Tally {
    let mut client = Client {
        number,
        shared,
        seq: 0,
        round: 0,
        conn: None,
        connect_failures_in_a_row: 0,
        tally: Tally::default(),
        requests: Vec::new(),
        lines: Vec::new(),
        reply: Vec::new(),
    };
    client.conn = client.connect();
    shared.all_connected.wait();
    let every = shared.options.reconnect_every;
    while !shared.should_stop(client.tally.requests)
        && client.connect_failures_in_a_row < MAX_CONNECT_FAILURES_IN_A_ROW
    {
        let next = client.seq + 1;
        if every > 0 && next % every == 0 {
            client.request_on_a_connection_of_its_own();
        } else {
            // A round stops short of the next request that needs its own
            // connection.
            let before_fresh = if every > 0 {
                every - next % every
            } else {
                u64::MAX
            };
            let depth = (1 + client.round % shared.options.pipeline).min(before_fresh);
            client.round += 1;
            client.persistent_round(depth);
        }
    }
    if let Some(conn) = client.conn.take() {
        client.close(conn);
    }
    client.tally
}

impl Client<'_> {
    fn connect(&mut self) -> Option<Conn> {
        match connect(self.shared.options, None) {
            Ok(stream) => {
                self.connect_failures_in_a_row = 0;
                Some(stream)
            }
            Err(error) => {
                self.tally.failed_connects += 1;
                self.connect_failures_in_a_row += 1;
                if self.connect_failures_in_a_row == 1 {
                    eprintln!("loadgen: client {}: connect: {error}", self.number);
                }
                None
            }
        }
    }

    /// Appends the next request to the round; every request has its own
    /// id and a payload of 0 to 120 bytes that depends on it.
    fn next_request(&mut self) {
        self.seq += 1;
        let start = self.requests.len();
        let mut random = (self.number as u64) << 40 ^ self.seq ^ 0x9e37_79b9_7f4a_7c15;
        let mut next_random = || {
            // xorshift64
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let len = next_random() % 121;
        write!(self.requests, "{}-{} ", self.number, self.seq).expect("writing to a Vec");
        const ALPHABET: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .:-";
        for _ in 0..len {
            self.requests
                .push(ALPHABET[(next_random() % ALPHABET.len() as u64) as usize]);
        }
        self.requests.push(b'\n');
        self.lines.push(start..self.requests.len());
    }

    /// The sequence number in a reply to this client, if it has one.
    fn seq_of(&self, reply: &[u8]) -> Option<u64> {
        let id = reply.split(|&b| b == b' ').next()?;
        let (client, seq) = std::str::from_utf8(id).ok()?.split_once('-')?;
        (client.parse() == Ok(self.number))
            .then(|| seq.parse().ok())
            .flatten()
    }

    /// Sends `depth` requests on the persistent connection, then checks
    /// their replies.
    fn persistent_round(&mut self, depth: u64) {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => match self.connect() {
                Some(conn) => conn,
                None => return,
            },
        };
        self.requests.clear();
        self.lines.clear();
        let first_seq = self.seq + 1;
        for _ in 0..depth {
            self.next_request();
        }
        self.tally.requests += depth;
        let window = self.shared.window();
        let sent = Instant::now();
        if let Err(error) = send_in_two_writes(&mut conn, &self.requests) {
            self.tally.broken(&error, depth);
            return;
        }
        let mut expected = 0;
        let mut in_step = true;
        while expected < self.lines.len() {
            if let Err(error) = read_reply(&mut conn, &mut self.reply) {
                self.tally
                    .broken(&error, (self.lines.len() - expected) as u64);
                return;
            }
            if self.reply == self.requests[self.lines[expected].clone()] {
                self.tally.answered(self.shared, sent, window);
                expected += 1;
                continue;
            }
            in_step = false;
            eprintln!(
                "loadgen: client {}: expected {:?}, got {:?}",
                self.number,
                String::from_utf8_lossy(&self.requests[self.lines[expected].clone()]),
                String::from_utf8_lossy(&self.reply)
            );
            let seq = self.seq_of(&self.reply);
            match seq.map(|seq| seq.checked_sub(first_seq)) {
                // A request answered earlier (or declared lost) is answered
                // again.
                Some(None) => self.tally.duplicated += 1,
                Some(Some(index)) if (index as usize) < expected => self.tally.duplicated += 1,
                // A later request of the round is answered first: the ones
                // before it are lost (or come later, as duplicates).
                Some(Some(index))
                    if (index as usize) < self.lines.len()
                        && self.reply == self.requests[self.lines[index as usize].clone()] =>
                {
                    self.tally.lost += index - expected as u64;
                    self.tally.answered(self.shared, sent, window);
                    expected = index as usize + 1;
                }
                _ => {
                    self.tally.mismatched += 1;
                    expected += 1;
                }
            }
        }
        // After a wrong reply the stream cannot be trusted: start afresh.
        if in_step {
            self.conn = Some(conn);
        }
    }

    /// Connects, sends one request, checks its reply, and closes, checking
    /// that nothing else comes.
    fn request_on_a_connection_of_its_own(&mut self) {
        self.requests.clear();
        self.lines.clear();
        self.next_request();
        // The latency includes the connect: a client that connects during
        // an upgrade waits for the next generation to accept it.
        let window = self.shared.window();
        let sent = Instant::now();
        let Some(mut conn) = self.connect() else {
            return;
        };
        self.tally.requests += 1;
        self.tally.fresh_connections += 1;
        if let Err(error) = send_in_two_writes(&mut conn, &self.requests) {
            self.tally.broken(&error, 1);
            return;
        }
        if let Err(error) = read_reply(&mut conn, &mut self.reply) {
            self.tally.broken(&error, 1);
            return;
        }
        if self.reply == self.requests {
            self.tally.answered(self.shared, sent, window);
        } else {
            eprintln!(
                "loadgen: client {}: expected {:?}, got {:?}",
                self.number,
                String::from_utf8_lossy(&self.requests),
                String::from_utf8_lossy(&self.reply)
            );
            match self.seq_of(&self.reply) {
                Some(seq) if seq < self.seq => self.tally.duplicated += 1,
                _ => self.tally.mismatched += 1,
            }
        }
        self.close(conn);
    }

    fn close(&mut self, conn: Conn) {
        close(conn, &mut self.tally, &format!("client {}", self.number));
    }
}

/// Closes the sending side, and checks that the server answers with its
/// own close and nothing more.
fn close(mut conn: Conn, tally: &mut Tally, who: &str) {
    if let Err(error) = conn.shutdown_write() {
        tally.broken(&error, 0);
        return;
    }
    let mut stray = Vec::new();
    match conn.read_until(b'\n', &mut stray) {
        Ok(0) => {}
        Ok(_) => {
            eprintln!(
                "loadgen: {who}: a stray reply after the last one: {:?}",
                String::from_utf8_lossy(&stray)
            );
            tally.duplicated += 1;
        }
        Err(error) => tally.broken(&error, 0),
    }
}

/// Writes the requests in two writes, split inside a line, so that the
/// server also sees a request whose end has not arrived yet.
fn send_in_two_writes(conn: &mut Conn, requests: &[u8]) -> io::Result<()> {
    let (first, second) = requests.split_at(requests.len() / 2);
    conn.write_all(first)?;
    conn.flush()?;
    conn.write_all(second)?;
    conn.flush()
}

/// Reads one reply line, its newline included. The server closing the
/// connection in the middle of a line, or before it, is an error.
fn read_reply(conn: &mut Conn, reply: &mut Vec<u8>) -> io::Result<()> {
    reply.clear();
    conn.read_until(b'\n', reply)?;
    if reply.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(())
}

/// The control connection's counts.
#[derive(Default)]
struct Upgrades {
    done: u64,
    failed: u64,
    /// With `--bad-build`: refused, as they must be.
    refused: u64,
    /// From `UPGRADE` sent to `UPGRADED` (or, with `--bad-build`,
    /// `UPGRADE-FAILED`) received, in nanoseconds.
    windows: Vec<u64>,
    /// The control connection failed, so the rest of the upgrades did not
    /// happen, and the server may be gone.
    control_broken: bool,
    held: Held,
}

/// What an `UPGRADE` got.
enum Answer {
    Upgraded { old: u32, new: u32, generation: u64 },
    Failed(String),
    Broken(String),
}

fn run_control(shared: &Shared<'_>) -> Upgrades {
    let options = shared.options;
    let mut upgrades = Upgrades::default();
    let connected = connect(options, None);
    shared.all_connected.wait();
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(error) => {
            say(&format!("control-error connect: {error}"));
            upgrades.failed = options.upgrades;
            upgrades.control_broken = true;
            return upgrades;
        }
    };
    let mut previous: Option<(u32, u64)> = None;
    let mut reply = Vec::new();
    for attempt in 1..=options.upgrades {
        upgrades.held.before_upgrade(options);
        shared.upgrade_windows.fetch_add(1, Ordering::SeqCst);
        let asked = Instant::now();
        let answer = conn
            .write_all(b"UPGRADE\n")
            .and_then(|()| conn.flush())
            .and_then(|()| read_reply(&mut conn, &mut reply));
        let took = asked.elapsed();
        shared.upgrade_windows.fetch_add(1, Ordering::SeqCst);
        let answer = match answer {
            Err(error) => Answer::Broken(error.to_string()),
            Ok(()) => parse_answer(&String::from_utf8_lossy(&reply)),
        };
        upgrades.held.after_upgrade();
        let (old, new, generation) = match answer {
            Answer::Upgraded {
                old,
                new,
                generation,
            } => (old, new, generation),
            Answer::Failed(reason) if options.bad_build => {
                say(&format!("upgrade-refused {attempt} {reason}"));
                upgrades.refused += 1;
                upgrades.windows.push(took.as_nanos() as u64);
                continue;
            }
            Answer::Failed(reason) => {
                say(&format!("upgrade-failed {attempt} {reason}"));
                upgrades.failed += 1;
                continue;
            }
            Answer::Broken(error) => {
                say(&format!("control-error upgrade {attempt}: {error}"));
                upgrades.failed += options.upgrades - attempt + 1;
                upgrades.control_broken = true;
                break;
            }
        };
        // Each report must come from the process that replaced the one
        // before, one generation on.
        let follows = match previous {
            Some((pid, previous_generation)) => old == pid && generation == previous_generation + 1,
            None => true,
        };
        previous = Some((new, generation));
        if options.bad_build {
            say(&format!(
                "upgrade-failed {attempt} UPGRADED {old} {new} {generation}, but the build on \
                 disk is a broken one"
            ));
            upgrades.failed += 1;
            continue;
        }
        if !follows || old == new {
            say(&format!(
                "upgrade-failed {attempt} UPGRADED {old} {new} {generation} does not follow \
                 the previous upgrade"
            ));
            upgrades.failed += 1;
            continue;
        }
        say(&format!(
            "upgrade {attempt} old_pid={old} new_pid={new} generation={generation} took_us={}",
            took.as_micros()
        ));
        upgrades.done += 1;
        upgrades.windows.push(took.as_nanos() as u64);
    }
    upgrades.held.close();
    upgrades
}

fn parse_answer(line: &str) -> Answer {
    let line = line.trim_end();
    if let Some(reason) = line.strip_prefix("UPGRADE-FAILED ") {
        return Answer::Failed(reason.to_owned());
    }
    let words: Vec<&str> = line.split(' ').collect();
    if let ["UPGRADED", old, new, generation] = words.as_slice() {
        if let (Ok(old), Ok(new), Ok(generation)) = (old.parse(), new.parse(), generation.parse()) {
            return Answer::Upgraded {
                old,
                new,
                generation,
            };
        }
    }
    Answer::Broken(format!("unexpected answer {line:?}"))
}

/// Connects with the usual options, and the given socket buffer size if
/// any (it must be set before connecting to shape the TCP window); with
/// `--tls`, it also shakes hands.
fn connect(options: &Options, buffer_size: Option<usize>) -> io::Result<Conn> {
    let stream = match buffer_size {
        None => TcpStream::connect_timeout(&options.server, options.timeout)?,
        Some(size) => {
            let family = match options.server {
                SocketAddr::V4(_) => AddressFamily::INET,
                SocketAddr::V6(_) => AddressFamily::INET6,
            };
            let socket =
                rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
            rustix::net::sockopt::set_socket_recv_buffer_size(&socket, size)?;
            rustix::net::sockopt::set_socket_send_buffer_size(&socket, size)?;
            rustix::net::connect(&socket, &options.server)?;
            TcpStream::from(socket)
        }
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(options.timeout))?;
    stream.set_write_timeout(Some(options.timeout))?;
    match &options.tls_client {
        None => Ok(Conn::Plain(BufReader::new(stream))),
        Some((config, name)) => {
            TlsConn::connect(Arc::clone(config), name.clone(), stream, options.timeout)
                .map(|conn| Conn::Tls(Box::new(conn)))
        }
    }
}

/// Requests the control connection holds across every upgrade, so that
/// every handover carries a request whose end has not arrived yet and
/// replies the server could not write yet; the clients' traffic only
/// sometimes leaves either in the server at the moment it hands over.
#[derive(Default)]
struct Held {
    /// Half a request goes before `UPGRADE`, the rest after `UPGRADED`.
    partial: Option<Conn>,
    partial_request: Vec<u8>,
    /// Requests go without a reply being read until the server stops
    /// taking them, which it does once it has a backlog of replies that
    /// the socket would not take.
    backlog: Option<Conn>,
    /// The requests sent on the backlog connection, and how many of their
    /// bytes went before the upgrade.
    backlog_requests: Vec<u8>,
    backlog_sent: usize,
    seq: u64,
    tally: Tally,
    /// Requests held across an upgrade: partial, and backlogged.
    partial_held: u64,
    backlog_held: u64,
    /// The largest backlog held across one upgrade, in bytes.
    backlog_max: usize,
}

/// The backlog connection's socket buffers, small so that the server's
/// replies back up soon.
const BACKLOG_SOCKET_BUFFER: usize = 16 * 1024;

/// The server is taken to have stopped reading the backlog connection, and
/// so to hold replies it could not write, once it has taken nothing for
/// this long. Were it only slow, the upgrade would carry fewer held
/// replies, not fail.
const STALL: Duration = Duration::from_millis(100);

/// An upper bound on one backlog, in case the server never stops reading.
const MAX_BACKLOG: usize = 64 * 1024 * 1024;

/// Appends the next held request, `held-<seq> <payload>`.
fn held_request(seq: &mut u64, payload: usize, into: &mut Vec<u8>) {
    *seq += 1;
    write!(into, "held-{seq} ").expect("writing to a Vec");
    into.extend((0..payload).map(|i| b'a' + ((*seq as usize + i) % 26) as u8));
    into.push(b'\n');
}

/// Writes requests until the server stops taking them; returns how many
/// bytes went.
fn write_until_stalled(
    conn: &mut Conn,
    requests: &mut Vec<u8>,
    seq: &mut u64,
) -> io::Result<usize> {
    let stall = Timespec {
        tv_sec: 0,
        tv_nsec: STALL.as_nanos() as i64,
    };
    let mut sent = 0;
    while sent < MAX_BACKLOG {
        if sent == requests.len() {
            for _ in 0..64 {
                held_request(seq, 1000, requests);
            }
        }
        match conn.write(&requests[sent..]) {
            Ok(n) => sent += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(conn.socket(), PollFlags::OUT)];
                match poll(&mut fds, Some(&stall)) {
                    Ok(0) => break,
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(sent)
}

impl Held {
    fn before_upgrade(&mut self, options: &Options) {
        if self.partial.is_none() {
            self.partial = self.connect(options, None);
        }
        if let Some(conn) = &mut self.partial {
            let mut request = std::mem::take(&mut self.partial_request);
            request.clear();
            held_request(&mut self.seq, 40, &mut request);
            self.tally.requests += 1;
            let half = request.len() / 2;
            let sent = conn.write_all(&request[..half]).and_then(|()| conn.flush());
            if let Err(error) = sent {
                self.tally.broken(&error, 1);
                self.partial = None;
            }
            self.partial_request = request;
        }

        if self.backlog.is_none() {
            self.backlog = self.connect(options, Some(BACKLOG_SOCKET_BUFFER));
        }
        let Some(conn) = &mut self.backlog else {
            return;
        };
        let mut requests = std::mem::take(&mut self.backlog_requests);
        requests.clear();
        let sent = conn
            .socket()
            .set_nonblocking(true)
            .and_then(|()| write_until_stalled(conn, &mut requests, &mut self.seq))
            .and_then(|sent| conn.socket().set_nonblocking(false).map(|()| sent));
        match sent {
            Ok(sent) => {
                // The requests not begun are not sent at all.
                let line_end = requests[sent..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(sent, |at| sent + at + 1);
                requests.truncate(line_end);
                self.backlog_sent = sent;
                let count = requests.iter().filter(|&&b| b == b'\n').count() as u64;
                self.tally.requests += count;
                self.backlog_held += count;
                self.backlog_max = self.backlog_max.max(sent);
            }
            Err(error) => {
                self.tally.broken(&error, 0);
                self.backlog = None;
                requests.clear();
            }
        }
        self.backlog_requests = requests;
    }

    fn after_upgrade(&mut self) {
        if let Some(mut conn) = self.partial.take() {
            let half = self.partial_request.len() / 2;
            let mut reply = Vec::new();
            let answer = conn
                .write_all(&self.partial_request[half..])
                .and_then(|()| conn.flush())
                .and_then(|()| read_reply(&mut conn, &mut reply));
            match answer {
                Err(error) => self.tally.broken(&error, 1),
                Ok(()) if reply == self.partial_request => {
                    self.tally.answered += 1;
                    self.partial_held += 1;
                    self.partial = Some(conn);
                }
                Ok(()) => {
                    self.mismatch(&self.partial_request, &reply);
                    self.tally.mismatched += 1;
                }
            }
        }

        let Some(mut conn) = self.backlog.take() else {
            return;
        };
        let requests = std::mem::take(&mut self.backlog_requests);
        let mut reply = Vec::new();
        let mut lines = requests.split_inclusive(|&b| b == b'\n');
        let mut in_step = true;
        let mut line_start = 0;
        while let Some(line) = lines.next() {
            // The end of the request cut short goes only once every reply
            // before it has been read: until then the server does not read.
            let line_end = line_start + line.len();
            if line_end > self.backlog_sent {
                if let Err(error) = conn
                    .write_all(&requests[self.backlog_sent..line_end])
                    .and_then(|()| conn.flush())
                {
                    self.tally.broken(&error, 1 + lines.count() as u64);
                    in_step = false;
                    break;
                }
            }
            line_start = line_end;
            if let Err(error) = read_reply(&mut conn, &mut reply) {
                self.tally.broken(&error, 1 + lines.count() as u64);
                in_step = false;
                break;
            }
            if reply != line {
                self.mismatch(line, &reply);
                self.tally.mismatched += 1;
                self.tally.lost += lines.count() as u64;
                in_step = false;
                break;
            }
            self.tally.answered += 1;
        }
        if in_step {
            self.backlog = Some(conn);
        }
        self.backlog_requests = requests;
    }

    fn connect(&mut self, options: &Options, buffer_size: Option<usize>) -> Option<Conn> {
        match connect(options, buffer_size) {
            Ok(conn) => Some(conn),
            Err(error) => {
                eprintln!("loadgen: a held-request connection: connect: {error}");
                self.tally.failed_connects += 1;
                None
            }
        }
    }

    fn close(&mut self) {
        for conn in [self.partial.take(), self.backlog.take()]
            .into_iter()
            .flatten()
        {
            close(conn, &mut self.tally, "held-request connection");
        }
    }

    fn mismatch(&self, expected: &[u8], reply: &[u8]) {
        eprintln!(
            "loadgen: held request: expected {:?}, got {:?}",
            String::from_utf8_lossy(expected),
            String::from_utf8_lossy(reply)
        );
    }
}

fn main() -> ExitCode {
    let mut options = Options::parse();
    if options.tls {
        let config = mitosis_examples::tls::client_config(options.tls_ca.as_deref());
        let name = mitosis_examples::tls::server_name(Some(&options.tls_server_name), "");
        match config.and_then(|config| Ok((config, name?))) {
            Ok(client) => options.tls_client = Some(client),
            Err(error) => {
                eprintln!("loadgen: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let shared = Shared {
        options: &options,
        all_connected: Barrier::new(options.clients + 1),
        upgrade_windows: AtomicU64::new(0),
        finishing: AtomicBool::new(false),
        aborting: AtomicBool::new(false),
    };
    let started = Instant::now();
    let (tally, upgrades) = thread::scope(|scope| {
        let shared = &shared;
        let clients: Vec<_> = (0..options.clients)
            .map(|number| {
                thread::Builder::new()
                    .name(format!("client-{number}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || run_client(number, shared))
                    .expect("starting a client thread")
            })
            .collect();
        let upgrades = run_control(shared);
        if upgrades.control_broken {
            shared.aborting.store(true, Ordering::SeqCst);
        } else if let Some(duration) = options.duration {
            // Pacing, not synchronisation: the run is asked to last this
            // long.
            thread::sleep(duration.saturating_sub(started.elapsed()));
        }
        shared.finishing.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for client in clients {
            tally.merge(client.join().expect("a client thread panicked"));
        }
        (tally, upgrades)
    });
    report(&options, tally, upgrades, started.elapsed())
}

/// The percentiles of a set of latencies, in nanoseconds.
struct Percentiles {
    count: usize,
    p50: u64,
    p99: u64,
    max: u64,
}

impl Percentiles {
    fn of(mut latencies: Vec<u64>) -> Percentiles {
        latencies.sort_unstable();
        let at = |fraction: f64| {
            let rank = (fraction * latencies.len() as f64).ceil() as usize;
            latencies.get(rank.saturating_sub(1)).copied().unwrap_or(0)
        };
        Percentiles {
            count: latencies.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or(0),
        }
    }

    fn human(&self) -> String {
        if self.count == 0 {
            return "none".into();
        }
        let ms = |nanos: u64| nanos as f64 / 1e6;
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }

    fn fields(&self, prefix: &str) -> String {
        format!(
            "{prefix}_requests={} {prefix}_p50_us={} {prefix}_p99_us={} {prefix}_max_us={}",
            self.count,
            self.p50 / 1000,
            self.p99 / 1000,
            self.max / 1000
        )
    }
}

fn report(options: &Options, mut tally: Tally, upgrades: Upgrades, elapsed: Duration) -> ExitCode {
    let held = upgrades.held;
    tally.merge(held.tally);
    let failures = tally.failed_connects
        + tally.resets
        + tally.timeouts
        + tally.lost
        + tally.duplicated
        + tally.mismatched
        + upgrades.failed;
    let steady = Percentiles::of(tally.steady);
    let during_upgrade = Percentiles::of(tally.during_upgrade);
    let windows = Percentiles::of(upgrades.windows);
    let seconds = elapsed.as_secs_f64();
    say(&format!(
        "requests: {} sent, {} answered, {:.0}/s over {seconds:.2} s, by {} clients; {} over \
         connections of their own",
        tally.requests,
        tally.answered,
        tally.answered as f64 / seconds,
        options.clients,
        tally.fresh_connections
    ));
    say(&format!(
        "held across upgrades: {} requests split around UPGRADE, {} requests sent before it \
         without reading their replies (at most {} KiB at once)",
        held.partial_held,
        held.backlog_held,
        held.backlog_max / 1024
    ));
    say(&format!("failed connects: {}", tally.failed_connects));
    say(&format!(
        "resets (reset or closed by the server): {}",
        tally.resets
    ));
    say(&format!("timeouts: {}", tally.timeouts));
    say(&format!(
        "responses: {} lost, {} duplicated, {} mismatched",
        tally.lost, tally.duplicated, tally.mismatched
    ));
    say(&format!(
        "upgrades: {} done, {} refused by a broken build, {} failed; UPGRADE to its answer {}",
        upgrades.done,
        upgrades.refused,
        upgrades.failed,
        windows.human()
    ));
    say(&format!(
        "latency, steady state ({} requests): {}",
        steady.count,
        steady.human()
    ));
    say(&format!(
        "latency, overlapping an upgrade ({} requests): {}",
        during_upgrade.count,
        during_upgrade.human()
    ));
    say(&format!(
        "result requests={} answered={} fresh_connections={} failures={failures} \
         failed_connects={} resets={} timeouts={} lost={} duplicated={} mismatched={} \
         upgrades_done={} upgrades_refused={} upgrades_failed={} held_partial={} held_backlog={} \
         held_backlog_max_bytes={} {} {} {} elapsed_ms={}",
        tally.requests,
        tally.answered,
        tally.fresh_connections,
        tally.failed_connects,
        tally.resets,
        tally.timeouts,
        tally.lost,
        tally.duplicated,
        tally.mismatched,
        upgrades.done,
        upgrades.refused,
        upgrades.failed,
        held.partial_held,
        held.backlog_held,
        held.backlog_max,
        steady.fields("steady"),
        during_upgrade.fields("upgrade"),
        windows.fields("window"),
        elapsed.as_millis()
    ));
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints a line on stdout in one write, so that a reader sees whole lines
/// as they happen.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes()).ok();
    out.flush().ok();
}

/// A connection to the server: plain TCP, or TLS over it.
enum Conn {
    Plain(BufReader<TcpStream>),
    Tls(Box<TlsConn>),
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(reader) => reader.get_ref(),
            Conn::Tls(tls) => &tls.socket,
        }
    }

    /// Says that no more requests come: in TLS a close_notify, then, in
    /// both, the TCP shutdown.
    fn shutdown_write(&mut self) -> io::Result<()> {
        if let Conn::Tls(tls) = self {
            tls.tls.send_close_notify();
            tls.flush()?;
        }
        self.socket().shutdown(Shutdown::Write)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(reader) => reader.read(buf),
            Conn::Tls(tls) => tls.read(buf),
        }
    }
}

impl BufRead for Conn {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Conn::Plain(reader) => reader.fill_buf(),
            Conn::Tls(tls) => tls.fill_buf(),
        }
    }

    fn consume(&mut self, amount: usize) {
        match self {
            Conn::Plain(reader) => reader.consume(amount),
            Conn::Tls(tls) => tls.consume(amount),
        }
    }
}

impl Write for Conn {
    /// Past any bytes read ahead: the BufReader only reads.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(reader) => reader.get_mut().write(buf),
            Conn::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(_) => Ok(()),
            Conn::Tls(tls) => tls.flush(),
        }
    }
}

/// A TLS client connection.
///
/// Not rustls's `StreamOwned`: its reads first write out whatever
/// ciphertext waits, blocking, and a backlog connection that stalled with
/// ciphertext still to go would then wait on a server that waits for its
/// replies to be read. Here a read writes only what the socket takes at
/// once, and reads meanwhile.
struct TlsConn {
    tls: ClientConnection,
    socket: TcpStream,
    /// How long a read may wait for the server.
    timeout: Duration,
}

impl TlsConn {
    fn connect(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        mut socket: TcpStream,
        timeout: Duration,
    ) -> io::Result<TlsConn> {
        let mut tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
        // The socket blocks, with timeouts, so this ends.
        while tls.is_handshaking() {
            tls.complete_io(&mut socket)?;
        }
        Ok(TlsConn {
            tls,
            socket,
            timeout,
        })
    }

    /// Waits for the socket, then reads what it holds and writes what it
    /// takes, without blocking in either.
    fn pump(&mut self) -> io::Result<()> {
        let mut interest = PollFlags::IN;
        if self.tls.wants_write() {
            interest |= PollFlags::OUT;
        }
        let timeout = Timespec {
            tv_sec: self.timeout.as_secs() as i64,
            tv_nsec: self.timeout.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&self.socket, interest)];
        let ready = match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err(io::ErrorKind::TimedOut.into()),
            Ok(_) => fds[0].revents(),
            Err(Errno::INTR) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let mut socket = DontWait(&self.socket);
        if ready.contains(PollFlags::OUT) {
            match self.tls.write_tls(&mut socket) {
                Err(error) if error.kind() != io::ErrorKind::WouldBlock => return Err(error),
                _ => {}
            }
        }
        if ready.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            match self.tls.read_tls(&mut socket) {
                Ok(_) => {
                    if let Err(error) = self.tls.process_new_packets() {
                        // The alert that says why, if the socket takes it.
                        self.tls.write_tls(&mut socket).ok();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

impl Read for TlsConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for TlsConn {
    /// Plaintext, or `[]` once the server has closed with close_notify; a
    /// close without it is an `UnexpectedEof` error.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.tls.reader().fill_buf() {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.pump()?,
                _ => break,
            }
        }
        self.tls.reader().into_first_chunk()
    }

    fn consume(&mut self, amount: usize) {
        self.tls.reader().consume(amount);
    }
}

impl Write for TlsConn {
    /// Encrypts `buf` as one record (up to rustls's buffer limit) once what
    /// was encrypted before has gone; on a non-blocking socket,
    /// `WouldBlock` until it has.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush()?;
        let n = self.tls.writer().write(buf)?;
        match self.flush() {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            flushed => flushed?,
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut &self.socket)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

/// A socket read and written without blocking, whatever its mode.
struct DontWait<'a>(&'a TcpStream);

impl Read for DontWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::net::recv(self.0, buf, RecvFlags::DONTWAIT)?.0)
    }
}

impl Write for DontWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(
            self.0,
            buf,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
