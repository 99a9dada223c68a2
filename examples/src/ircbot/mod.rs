//! An IRC bot that upgrades itself from chat without leaving its channels.
//!
//! Started by hand, the bot connects, registers and joins its channels. An
//! admin's `!upgrade` in a channel makes it hand its whole `State` (the
//! server connection with any lines it has not read yet, its nick, channels
//! and counters) to a new process running the binary now on disk. The new
//! build starts while the bot goes on answering the server (its PINGs, and
//! commands in the channels), with [`mitosis::prepare`]; only once it is
//! ready does the bot hand over. The new process continues on the same
//! connection: the server and everyone in the channels see no QUIT, PART or
//! JOIN. If the new binary fails, the old process keeps (or gets back) its
//! state and says so. An admin's `!rollback` does the same with the build
//! the bot was upgraded from ([`mitosis::SplitOptions::previous_binary`]),
//! which the bot keeps open, so that it runs even once a deploy has
//! replaced or deleted its file.
//!
//! Commands, in a channel (or in private):
//! - `!status`: `status: pid=<pid> generation=<n> version=<v> lines=<N>`,
//!   where `lines` counts every PRIVMSG the bot has received, over all
//!   generations, this `!status` included;
//! - `!upgrade` (admins only): `upgrading…`, then either
//!   `upgraded old_pid=<pid> new_pid=<pid> generation=<n> version=<v>` from
//!   the new process, or `upgrade failed: <reason>` from the old one;
//! - `!rollback` (admins only): the same, back to the build the bot was
//!   upgraded from: `going back to the previous build…`, then the same
//!   `upgraded …` line from the new process (its `version` is the previous
//!   build's), or `upgrade failed: <reason>` from the old one. A bot that
//!   was never upgraded has no previous build, and says so that way. The
//!   process it starts upgrades later, on `!upgrade`, from the path this
//!   one did.
//!
//! With `--tls` the bot speaks TLS to the server, verifying its
//! certificate against the system's trusted roots, or against the CA in
//! `--tls-ca FILE`, by the host in `--server` or `--tls-server-name`. The
//! TLS session crosses every upgrade with the rest of the state: the server
//! sees the same session go on, not a new handshake. The bot logs the
//! negotiated protocol and cipher suite when it connects and in every new
//! generation.
//!
//! `SIGUSR2` upgrades it too (`systemctl reload` with
//! `examples/systemd/ircbot.service`); the new process reports in every
//! channel, and a failure is logged. `SIGTERM` or `SIGINT` make it QUIT and
//! exit with status 0. Under systemd (`Type=notify`) it says `READY=1` once
//! it has joined its channels.

mod connection;
mod message;

use std::collections::BTreeSet;
use std::error::Error;
use std::io::{self, BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use mitosis::{Handover, Outcome};
use rustix::event::{PollFd, PollFlags, poll};

use connection::Connection;
use message::{CaseMapping, Message, one_line};

/// The command line. A process started by `split` gets the same one (plus
/// the mitosis flag) but takes everything from the state it is handed.
#[derive(Parser)]
#[command(
    name = "ircbot",
    about = "An IRC bot that upgrades itself from chat without leaving its channels"
)]
struct Options {
    /// The IRC server, as HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// The nick to register with.
    #[arg(long)]
    nick: String,
    /// A channel to join; repeat for more.
    #[arg(long = "channel", value_name = "#NAME")]
    channels: Vec<String>,
    /// A nick allowed to `!upgrade` and `!rollback` the bot; repeat for
    /// more.
    #[arg(long = "admin", value_name = "NICK")]
    admins: Vec<String>,
    /// Connect with TLS, verifying the server's certificate against the
    /// system's trusted roots (or `--tls-ca`).
    #[arg(long)]
    tls: bool,
    /// Trust the CA certificates in this PEM file instead of the system's,
    /// for a server with a private certificate.
    #[arg(long, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry; the host part of
    /// `--server` by default.
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
}

/// Everything the bot knows. It crosses to the next generation whole.
///
/// Version 2 holds the connection as plain TCP or TLS; a bot running
/// version 1 (plain TCP only) upgrades into this one through
/// [`StateV1`].
#[derive(Handover)]
#[handover(name = "ircbot::State", version = 2, migrate_from(StateV1))]
struct State {
    /// The server connection. Lines the server has sent that the bot has
    /// not handled yet sit in its buffer, and cross with it.
    server: Connection,
    nick: String,
    /// The channels to join once registered.
    wanted: Vec<String>,
    /// The channels joined, as the server names them.
    joined: BTreeSet<String>,
    admins: Vec<String>,
    /// ISUPPORT tokens (005), such as `CASEMAPPING=ascii`.
    isupport: Vec<String>,
    /// Whether the server has welcomed the bot (001).
    registered: bool,
    /// PRIVMSGs received, over all generations.
    lines: u64,
    /// 1 for the process started by hand, one more for each upgrade.
    generation: u64,
    /// The process that owns this state; the next generation reports it as
    /// the old pid.
    pid: u32,
    /// Where the upgrade in flight was asked for, so that the new process
    /// reports there.
    upgrade_asked_in: Option<String>,
}

/// A verbatim copy of `ircbot::State` version 1, under another Rust name,
/// so that a bot built before TLS hands its state to this build. Never
/// edit it: it describes what those binaries send.
#[derive(Handover)]
#[handover(name = "ircbot::State", version = 1)]
struct StateV1 {
    /// The server connection. Lines the server has sent that the bot has
    /// not handled yet sit in the buffer, and cross with it.
    server: BufReader<TcpStream>,
    nick: String,
    /// The channels to join once registered.
    wanted: Vec<String>,
    /// The channels joined, as the server names them.
    joined: BTreeSet<String>,
    admins: Vec<String>,
    /// ISUPPORT tokens (005), such as `CASEMAPPING=ascii`.
    isupport: Vec<String>,
    /// Whether the server has welcomed the bot (001).
    registered: bool,
    /// PRIVMSGs received, over all generations.
    lines: u64,
    /// 1 for the process started by hand, one more for each upgrade.
    generation: u64,
    /// The process that owns this state; the next generation reports it as
    /// the old pid.
    pid: u32,
    /// Where the upgrade in flight was asked for, so that the new process
    /// reports there.
    upgrade_asked_in: Option<String>,
}

impl From<StateV1> for State {
    fn from(old: StateV1) -> State {
        State {
            server: Connection::Plain(old.server),
            nick: old.nick,
            wanted: old.wanted,
            joined: old.joined,
            admins: old.admins,
            isupport: old.isupport,
            registered: old.registered,
            lines: old.lines,
            generation: old.generation,
            pid: old.pid,
            upgrade_asked_in: old.upgrade_asked_in,
        }
    }
}

/// The longest line the bot reads; a longer one is cut into pieces rather
/// than buffered without bound. IRC lines with tags are at most 8191 bytes.
const MAX_LINE: u64 = 8192;

/// Runs the bot, reporting itself as `version`, and returns when it has
/// handed over to a new process (success), or on a fatal error.
///
/// The `ircbot` binary is this function with the version it was built as:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     mitosis_examples::ircbot::run("1.2.3")
/// }
/// ```
pub fn run(version: &'static str) -> ExitCode {
    // Before mitosis::init(): a TLS session handed over is rebuilt with the
    // process-wide crypto provider.
    crate::tls::install_crypto_provider();
    crate::log_to_stderr("ircbot", log::LevelFilter::Info);
    match start(version).and_then(|state| serve(state, version)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Either takes over from the old process or connects afresh.
fn start(version: &'static str) -> Result<State, Box<dyn Error>> {
    // First: a process started by `split` takes over here.
    let handed_over = mitosis::init::<State>()?;
    let matches = Options::command()
        .version(version)
        .get_matches_from(mitosis::args());
    let options = Options::from_arg_matches(&matches)?;
    match handed_over {
        Some(state) => resume(state, version),
        None => connect(options),
    }
}

fn connect(options: Options) -> Result<State, Box<dyn Error>> {
    // Bad TLS options are found before the server is bothered.
    let tls = match options.tls {
        true => Some((
            crate::tls::client_config(options.tls_ca.as_deref())?,
            crate::tls::server_name(options.tls_server_name.as_deref(), &options.server)?,
        )),
        false => None,
    };
    let stream = TcpStream::connect(&options.server)
        .map_err(|e| format!("could not connect to {}: {e}", options.server))?;
    // Replies are small writes in a row ("upgrading…", then "upgraded"
    // from the next process): with Nagle, each would wait for the server's
    // delayed ACK of the one before. The option stays with the socket
    // across upgrades.
    stream.set_nodelay(true)?;
    let server = match tls {
        None => {
            log::info!("connected to {}", options.server);
            Connection::Plain(BufReader::new(stream))
        }
        Some((config, name)) => {
            let name_shown = name.to_str().into_owned();
            let stream = mitosis::tls::TlsStream::connect(config, name, stream).map_err(|e| {
                format!("TLS with {} (as {name_shown}) failed: {e}", options.server)
            })?;
            let server = Connection::Tls(Box::new(stream));
            log::info!(
                "connected to {} with TLS: {}",
                options.server,
                server.tls().unwrap_or_default()
            );
            server
        }
    };
    let mut state = State {
        server,
        nick: options.nick,
        wanted: options.channels,
        joined: BTreeSet::new(),
        admins: options.admins,
        isupport: Vec::new(),
        registered: false,
        lines: 0,
        generation: 1,
        pid: std::process::id(),
        upgrade_asked_in: None,
    };
    state.send(&format!("NICK {}", state.nick))?;
    state.send(&format!("USER {} 0 * :mitosis ircbot", state.nick))?;
    Ok(state)
}

/// The new generation: no connect, no registration, no join. It reports to
/// where the upgrade was asked for, and carries on with the next line.
fn resume(mut state: State, version: &str) -> Result<State, Box<dyn Error>> {
    let old_pid = state.pid;
    state.pid = std::process::id();
    state.generation += 1;
    log::info!(
        "took over from pid {old_pid} as generation {}",
        state.generation
    );
    if let Some(tls) = state.server.tls() {
        log::info!("the TLS session goes on: {tls}");
    }
    let report = format!(
        "upgraded old_pid={old_pid} new_pid={} generation={} version={version}",
        state.pid, state.generation
    );
    match state.upgrade_asked_in.take() {
        Some(target) => state.say(&target, &report)?,
        None => {
            for channel in state.joined.clone() {
                state.say(&channel, &report)?;
            }
        }
    }
    Ok(state)
}

/// The bot's loop: one line from the server at a time, and, while an
/// upgrade is being prepared, its readiness.
fn serve(mut state: State, version: &'static str) -> Result<(), Box<dyn Error>> {
    let mut buffer = Vec::new();
    let mut upgrade: Option<mitosis::Upgrade<State>> = None;
    let upgrade_signal = mitosis::supervisor::Trigger::signal(libc::SIGUSR2)?;
    let stop_signal = crate::Stop::on_sigterm_and_sigint()?;
    // A process started by an upgrade is ready already; mitosis told the
    // service manager so.
    let mut told_ready = state.generation > 1;
    loop {
        if stop_signal.fired() {
            log::info!("stopping on a signal");
            state.send("QUIT :stopping")?;
            return Ok(());
        }
        if upgrade_signal.fired() {
            if upgrade.is_some() {
                log::info!("SIGUSR2: an upgrade is already under way");
            } else {
                upgrade = prepare_upgrade(&mut state, Build::Next, None)?;
            }
        }
        if !told_ready && state.registered && state.wanted.len() <= state.joined.len() {
            told_ready = true;
            if let Err(error) = mitosis::supervisor::ready() {
                log::warn!("{error}");
            }
        }
        let signals = [upgrade_signal.as_fd(), stop_signal.as_fd()];
        if let Some(mut prepared) = upgrade.take() {
            if !settled(&state, &prepared, &signals)? {
                upgrade = Some(prepared);
            } else {
                match prepared.is_ready() {
                    // Between two lines: hand over. Only this is the pause.
                    Ok(true) => match hand_over(state, prepared)? {
                        Some(kept) => state = kept,
                        None => return Ok(()),
                    },
                    Ok(false) => upgrade = Some(prepared),
                    Err(error) => state.upgrade_failed(&error)?,
                }
                continue;
            }
        }
        if !line_at_hand(&state, &signals)? {
            // A signal: it is handled at the top of the loop.
            continue;
        }
        buffer.clear();
        let read = (&mut state.server)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buffer)?;
        if read == 0 {
            return Err("the server closed the connection".into());
        }
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end_matches(['\r', '\n']);
        let Some(message) = Message::parse(line) else {
            continue;
        };
        match message.command {
            "PING" => state.send(&format!("PONG :{}", message.param(0)))?,
            "ERROR" => return Err(format!("the server closed the link: {line}").into()),
            // Welcome: the server may have shortened the nick.
            "001" => {
                state.registered = true;
                state.nick = message.param(0).to_owned();
                if !state.wanted.is_empty() {
                    state.send(&format!("JOIN {}", state.wanted.join(",")))?;
                }
            }
            "005" => {
                let tokens = &message.params[1..message.params.len().saturating_sub(1)];
                state.isupport.extend(tokens.iter().map(|t| t.to_string()));
            }
            // Nick in use, while registering: try another.
            "433" if !state.registered => {
                state.nick.push('_');
                state.send(&format!("NICK {}", state.nick))?;
            }
            "JOIN" if state.is_me(message.source) => {
                log::info!("joined {}", message.param(0));
                state.joined.insert(message.param(0).to_owned());
            }
            "PART" if state.is_me(message.source) => state.leave(message.param(0)),
            "KICK" if state.is_me(Some(message.param(1))) => state.leave(message.param(0)),
            "NICK" if state.is_me(message.source) => state.nick = message.param(0).to_owned(),
            "PRIVMSG" => {
                state.lines += 1;
                match command(&state, &message) {
                    Some(Command::Status(reply_to)) => {
                        let status = format!(
                            "status: pid={} generation={} version={version} lines={}",
                            state.pid, state.generation, state.lines
                        );
                        state.say(&reply_to, &status)?;
                    }
                    Some(Command::Upgrade(_, reply_to)) if upgrade.is_some() => {
                        state.say(&reply_to, "an upgrade is already under way")?;
                    }
                    Some(Command::Upgrade(build, reply_to)) => {
                        upgrade = prepare_upgrade(&mut state, build, Some(reply_to))?;
                    }
                    Some(Command::Refuse(reply_to, nick)) => {
                        let refusal = format!("sorry {nick}, only an admin may upgrade me");
                        state.say(&reply_to, &refusal)?;
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
}

enum Command {
    Status(String),
    /// `!upgrade` (to the next build) or `!rollback` (to the previous one).
    Upgrade(Build, String),
    /// An `!upgrade` or `!rollback` from a nick that is not an admin.
    Refuse(String, String),
}

/// The build an upgrade runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    /// The binary now on disk (`!upgrade`, `SIGUSR2`).
    Next,
    /// The build this process was upgraded from, from the handle mitosis
    /// keeps (`!rollback`).
    Previous,
}

impl Build {
    fn options(self) -> mitosis::SplitOptions {
        let mut options = mitosis::SplitOptions::new();
        if self == Build::Previous {
            options.previous_binary();
        }
        options
    }

    /// The command's name, for the log.
    fn name(self) -> &'static str {
        match self {
            Build::Next => "upgrade",
            Build::Previous => "rollback",
        }
    }

    /// What the bot says as it starts.
    fn starting(self) -> &'static str {
        match self {
            Build::Next => "upgrading…",
            Build::Previous => "going back to the previous build…",
        }
    }
}

/// The command in a PRIVMSG, with where to reply: the channel, or the
/// sender for a private message.
fn command(state: &State, message: &Message<'_>) -> Option<Command> {
    let sender = message.source?;
    let target = message.param(0);
    let reply_to = if state.is_me(Some(target)) {
        sender
    } else {
        target
    };
    let build = match message.param(1).trim() {
        "!status" => return Some(Command::Status(reply_to.to_owned())),
        "!upgrade" => Build::Next,
        "!rollback" => Build::Previous,
        _ => return None,
    };
    match state.is_admin(sender) {
        true => Some(Command::Upgrade(build, reply_to.to_owned())),
        false => Some(Command::Refuse(reply_to.to_owned(), sender.to_owned())),
    }
}

/// Starts `build` (the binary now on disk, or the previous build), which
/// sets itself up while this process goes on serving. `None` if no upgrade
/// could start (such as a rollback with no previous build); the reason is
/// said where the upgrade was asked for (`None`: by a signal; then logged).
fn prepare_upgrade(
    state: &mut State,
    build: Build,
    reply_to: Option<String>,
) -> Result<Option<mitosis::Upgrade<State>>, Box<dyn Error>> {
    match &reply_to {
        Some(reply_to) => {
            state.say(reply_to, build.starting())?;
            log::info!("{}, asked in {reply_to}", build.name());
        }
        None => log::info!("{}, asked by a signal", build.name()),
    }
    state.upgrade_asked_in = reply_to;
    match build.options().prepare(&*state) {
        Ok(prepared) => Ok(Some(prepared)),
        Err(error) => {
            state.upgrade_failed(&error)?;
            Ok(None)
        }
    }
}

/// Whether the upgrade has settled (ready, or failed) before the next whole
/// line is at hand; waits for one or the other, or a signal.
fn settled(
    state: &State,
    upgrade: &mitosis::Upgrade<State>,
    signals: &[BorrowedFd<'_>],
) -> io::Result<bool> {
    if state.server.buffer().contains(&b'\n') {
        return Ok(false);
    }
    let ready = wait(state, &[&[upgrade.as_fd()], signals].concat())?;
    Ok(ready[0])
}

/// Whether the server's next line is at hand (or at least bytes of it),
/// rather than a signal.
fn line_at_hand(state: &State, signals: &[BorrowedFd<'_>]) -> io::Result<bool> {
    if !state.server.buffer().is_empty() {
        return Ok(true);
    }
    let ready = wait(state, signals)?;
    Ok(!ready.iter().any(|&ready| ready))
}

/// Waits until the server's socket or one of `others` is readable; says
/// which of `others` are.
fn wait(state: &State, others: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut fds: Vec<PollFd<'_>> = std::iter::once(state.server.socket().as_fd())
        .chain(others.iter().copied())
        .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    loop {
        match poll(&mut fds, None) {
            Ok(_) => return Ok(fds[1..].iter().map(|fd| !fd.revents().is_empty()).collect()),
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Hands the state to the new process, which is ready. `None` once it has
/// taken over; the old one then exits without a word to the server.
/// Otherwise the state comes back, the connection with it.
fn hand_over(
    state: State,
    upgrade: mitosis::Upgrade<State>,
) -> Result<Option<State>, Box<dyn Error>> {
    match upgrade.hand_over(state).wait() {
        Outcome::Done { pid } => {
            log::info!("pid {pid} took over; exiting");
            Ok(None)
        }
        Outcome::Failed { mut state, error } => {
            state.upgrade_failed(&error)?;
            Ok(Some(state))
        }
    }
}

impl State {
    /// Says why the upgrade failed where it was asked for; the bot carries
    /// on.
    fn upgrade_failed(&mut self, error: &mitosis::Error) -> io::Result<()> {
        log::warn!("upgrade failed, carrying on: {error}");
        match self.upgrade_asked_in.take() {
            Some(reply_to) => self.say(&reply_to, &format!("upgrade failed: {error}")),
            None => Ok(()),
        }
    }

    /// Sends one line, whole, in one write (one record, with TLS).
    fn send(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.server.send(&bytes)
    }

    fn say(&mut self, target: &str, text: &str) -> io::Result<()> {
        self.send(&format!("PRIVMSG {target} :{}", one_line(text)))
    }

    fn casemapping(&self) -> CaseMapping {
        CaseMapping::from_isupport(self.isupport.iter().map(String::as_str))
    }

    fn is_me(&self, nick: Option<&str>) -> bool {
        nick.is_some_and(|nick| self.casemapping().eq(nick, &self.nick))
    }

    fn is_admin(&self, nick: &str) -> bool {
        let casemapping = self.casemapping();
        self.admins.iter().any(|admin| casemapping.eq(admin, nick))
    }

    fn leave(&mut self, channel: &str) {
        let casemapping = self.casemapping();
        self.joined
            .retain(|joined| !casemapping.eq(joined, channel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bot's state, as the handshake describes it to the other build:
    /// well inside the description's bounds, so that a refused upgrade
    /// names the fields that differ.
    #[test]
    fn the_state_is_described_in_full() {
        let shape = State::shape(&mut mitosis::Shapes::new()).unwrap();
        let len = shape
            .description_len()
            .expect("the description fits its bounds");
        eprintln!("ircbot::State's description: {len} bytes");
        assert!(len < 1024, "{len} bytes");
        let mitosis::Shape::Struct { fields, .. } = shape else {
            panic!("a struct");
        };
        assert_eq!(fields[0].0, "server");
    }
}
