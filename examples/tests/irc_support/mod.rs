//! The IRC bot's test harness, shared by `ircbot.rs`, `tls.rs` and
//! `systemd.rs`: an ngircd of the test's own (plain, or with a TLS port
//! too), the bot's binary on disk and its generations, IRC clients that
//! watch the channel, and the scenarios more than one test runs.
//!
//! Without ngircd the tests skip with a reason, except under `CI=true`,
//! where they fail: `.ci/run` installs it.
//!
//! Each test binary uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::sockopt::set_tcp_quickack;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

pub const CHANNEL: &str = "#mitosis";
pub const BOT: &str = "bot";
pub const ADMIN: &str = "observer";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const NEXT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-next");

/// How long any one expected event may take before the test fails. Generous:
/// it only matters when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Prints what the closing notes quote: `!upgrade` to `upgraded`, as the
/// observer sees it.
pub fn report_latency(test: &str, took: &[Duration]) {
    let mut sorted = took.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let max = sorted[sorted.len() - 1];
    eprintln!(
        "{test}: !upgrade to upgraded over {} upgrades: median {:.1} ms, max {:.1} ms",
        took.len(),
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

// ---------------------------------------------------------------------------
// The server

/// An ngircd of the test's own, stopped and cleaned up on drop.
pub struct Ngircd {
    process: Child,
    /// The plain TCP port.
    pub port: u16,
    /// The TLS port, if it has one.
    pub tls_port: Option<u16>,
    dir: PathBuf,
}

/// ngircd's `[SSL]` section: the server's certificate chain and key, in
/// PEM, and a GnuTLS priority string if not ngircd's default.
pub struct NgircdTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub priority: Option<&'static str>,
}

impl Ngircd {
    /// Starts one, or returns `None` with a printed reason if ngircd is not
    /// installed, which only a machine outside CI may do.
    pub fn start() -> Option<Ngircd> {
        Ngircd::start_with(None)
    }

    /// Starts one with a TLS port as well (`tls_port`); `None` as
    /// [`Ngircd::start`].
    pub fn start_with(tls: Option<&NgircdTls>) -> Option<Ngircd> {
        let Some(binary) = find_ngircd() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "CI=true but ngircd is not installed: .ci/run installs it with \
                     `apt-get install -y ngircd`"
                );
            }
            eprintln!("skipped: ngircd is not installed (apt-get install -y ngircd)");
            return None;
        };
        // A port that was free a moment ago may be taken by the time ngircd
        // binds it; then try another.
        for _ in 0..5 {
            if let Some(server) = Ngircd::try_start(&binary, tls) {
                return Some(server);
            }
        }
        panic!("ngircd did not start on any of 5 free ports; see its output above");
    }

    fn try_start(binary: &Path, tls: Option<&NgircdTls>) -> Option<Ngircd> {
        let free_port = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port()
        };
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let dir = temp_dir(&format!("ngircd-{port}"));
        let include = dir.join("conf.d");
        let run = dir.join("run");
        fs::create_dir(&include).unwrap();
        fs::create_dir(&run).unwrap();
        let config = dir.join("ngircd.conf");
        let mut ssl = String::new();
        if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
            let cert = dir.join("cert.pem");
            let key = dir.join("key.pem");
            fs::write(&cert, &tls.cert_pem).unwrap();
            fs::write(&key, &tls.key_pem).unwrap();
            ssl = format!(
                "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {tls_port}\n",
                cert.display(),
                key.display()
            );
            if let Some(priority) = tls.priority {
                ssl.push_str(&format!("CipherList = {priority}\n"));
            }
        }
        fs::write(
            &config,
            format!(
                "[Global]\n\
                 Name = irc.mitosis.test\n\
                 Info = mitosis test server\n\
                 AdminInfo1 = mitosis tests\n\
                 AdminInfo2 = nowhere\n\
                 AdminEMail = nobody@mitosis.test\n\
                 Listen = 127.0.0.1\n\
                 Ports = {port}\n\
                 MotdPhrase = \"mitosis test server\"\n\
                 PidFile = {pidfile}\n\
                 [Limits]\n\
                 MaxConnectionsIP = 0\n\
                 MaxPenaltyTime = 0\n\
                 MaxNickLength = 30\n\
                 [Options]\n\
                 DNS = no\n\
                 Ident = no\n\
                 PAM = no\n\
                 IncludeDir = {include}\n\
                 {ssl}",
                pidfile = run.join("ngircd.pid").display(),
                include = include.display(),
            ),
        )
        .unwrap();
        // Run as root, ngircd drops to an unprivileged user ("nobody"), which
        // must still be able to read its configuration and write its pid.
        for (path, mode) in [
            (&dir, 0o755),
            (&include, 0o755),
            (&run, 0o777),
            (&config, 0o644),
        ] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut process = Command::new(binary)
            .arg("--nodaemon")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ngircd");
        // ngircd logs to stdout when not a daemon: wait for it to say it is
        // listening on every port, or to exit.
        let mut log = BufReader::new(process.stdout.take().unwrap());
        let mut line = String::new();
        let mut waiting: Vec<String> = std::iter::once(port)
            .chain(tls_port)
            .map(|port| format!("Now listening on [127.0.0.1]:{port} "))
            .collect();
        while !waiting.is_empty() && log.read_line(&mut line).unwrap_or(0) > 0 {
            waiting.retain(|expected| !line.contains(expected.as_str()));
            eprint!("ngircd: {line}");
            line.clear();
        }
        let listening = waiting.is_empty();
        // Keep draining its log so that it never blocks on a full pipe.
        thread::spawn(move || for _ in log.lines() {});
        if !listening {
            process.wait().ok();
            fs::remove_dir_all(&dir).ok();
            return None;
        }
        Some(Ngircd {
            process,
            port,
            tls_port,
            dir,
        })
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        self.process.kill().ok();
        self.process.wait().ok();
        fs::remove_dir_all(&self.dir).ok();
    }
}

pub fn find_ngircd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("ngircd"))
        .find(|candidate| candidate.is_file())
}

/// A fresh directory in Cargo's temp dir for this package's tests, which is
/// on the same filesystem as the built binaries, so that they can be hard
/// linked rather than copied.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ircbot-{name}-{}", std::process::id()));
    fs::remove_dir_all(&dir).ok();
    fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// The bot's binary on disk

/// A directory holding the binary the bot runs as, so that a test can
/// replace it by rename as a deployment would.
pub struct Binaries {
    pub dir: PathBuf,
    pub installed: PathBuf,
}

impl Binaries {
    pub fn new(name: &str) -> Binaries {
        let dir = temp_dir(name);
        let binaries = Binaries {
            installed: dir.join("ircbot"),
            dir,
        };
        binaries.restore();
        binaries
    }

    /// Puts the good build back.
    pub fn restore(&self) {
        self.replace_with(Path::new(env!("CARGO_BIN_EXE_ircbot")));
    }

    /// Renames `binary` over the installed one. A hard link, not a copy:
    /// a copy leaves a moment in which the file is open for writing, and a
    /// fork by another test's thread in that moment would make executing it
    /// fail with ETXTBSY.
    pub fn replace_with(&self, binary: &Path) {
        let staged = self.dir.join("ircbot.new");
        fs::remove_file(&staged).ok();
        fs::hard_link(binary, &staged).unwrap();
        fs::rename(&staged, &self.installed).unwrap();
    }

    /// Renames over the installed one a copy of `binary` of its own, so
    /// that once another build is renamed over it, no file on disk holds
    /// the build the bot started from: only the processes running it, and
    /// the handles to it, do. `cp` writes the copy, so that it is open for
    /// writing in that process alone, never in a fork by another test's
    /// thread (which would make executing it fail with ETXTBSY; see
    /// [`Binaries::replace_with`]).
    pub fn replace_with_copy(&self, binary: &Path) {
        let staged = self.dir.join("ircbot.new");
        fs::remove_file(&staged).ok();
        let status = Command::new("cp")
            .arg(binary)
            .arg(&staged)
            .status()
            .expect("run cp");
        assert!(
            status.success(),
            "cp {} exited with {status}",
            binary.display()
        );
        fs::rename(&staged, &self.installed).unwrap();
    }

    /// Renames over the installed one a build that waits, before it
    /// starts, until the returned fifo is opened for writing: a slow start
    /// that the test ends when it chooses.
    pub fn replace_with_held(&self) -> PathBuf {
        let fifo = self.dir.join("hold.fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let staged = self.dir.join("ircbot.new");
        fs::write(
            &staged,
            format!(
                "#!/bin/sh\nexec 3<'{}'\nexec '{}' \"$@\"\n",
                fifo.display(),
                env!("CARGO_BIN_EXE_ircbot-next")
            ),
        )
        .unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&staged, &self.installed).unwrap();
        fifo
    }

    /// Renames a build that fails at start over the installed one.
    pub fn replace_with_broken(&self) {
        let staged = self.dir.join("ircbot.new");
        fs::write(
            &staged,
            "#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n",
        )
        .unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&staged, &self.installed).unwrap();
    }
}

impl Drop for Binaries {
    fn drop(&mut self) {
        fs::remove_dir_all(&self.dir).ok();
    }
}

// ---------------------------------------------------------------------------
// The bot's processes

/// The bot's generations: the first is the test's child; the later ones
/// are the previous generation's. All are killed on drop.
pub struct Bot {
    first: Child,
    /// pidfds of the generations that may still run.
    running: Vec<(u32, OwnedFd)>,
    /// The log lines of every generation, as they come.
    pub log: Receiver<String>,
}

impl Bot {
    pub fn start(server: &Ngircd, binary: &Path) -> Bot {
        Bot::start_with(binary, &["--server", &format!("127.0.0.1:{}", server.port)])
    }

    /// Starts the bot with `args` (at least `--server`) besides its nick,
    /// channel and admin.
    pub fn start_with(binary: &Path, args: &[&str]) -> Bot {
        let mut first = Command::new(binary)
            .args(args)
            .args(["--nick", BOT, "--channel", CHANNEL, "--admin", ADMIN])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the bot");
        // The bot's log, shown if the test fails, and passed on. Every
        // generation inherits the pipe, so this ends when the last one does.
        let stderr = BufReader::new(first.stderr.take().unwrap());
        let (sender, log) = mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("{line}");
                // The test may have stopped listening; the relay goes on.
                sender.send(line).ok();
            }
        });
        let pid = first.id();
        Bot {
            running: vec![(pid, open_pidfd(pid))],
            first,
            log,
        }
    }

    pub fn first_pid(&self) -> u32 {
        self.first.id()
    }

    /// The message of the next log line of generation `pid` that starts
    /// with `prefix` (the lines are `ircbot[<pid>] <LEVEL>: <message>`).
    pub fn log_line(&self, pid: u32, prefix: &str) -> String {
        let from = format!("ircbot[{pid}] ");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.log.recv_timeout(left).unwrap_or_else(|error| {
                panic!("no log line from pid {pid} starting {prefix:?}: {error}")
            });
            let message = line
                .strip_prefix(&from)
                .and_then(|rest| rest.split_once(": "))
                .map(|(_level, message)| message);
            if let Some(message) = message.filter(|message| message.starts_with(prefix)) {
                return message.to_owned();
            }
        }
    }

    /// Takes charge of a new generation, so that it is killed at the end.
    pub fn adopt(&mut self, pid: u32) {
        self.running.push((pid, open_pidfd(pid)));
    }

    /// Checks that generation `pid` has exited, and quietly (status 0) if it
    /// was the test's child.
    pub fn expect_gone(&mut self, pid: u32) {
        let index = self.running.iter().position(|(p, _)| *p == pid).unwrap();
        let (_, pidfd) = self.running.remove(index);
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: PATIENCE.as_secs() as i64,
            tv_nsec: 0,
        };
        let ready = poll(&mut fds, Some(&timeout)).expect("poll a pidfd");
        assert_eq!(
            ready, 1,
            "pid {pid} still runs {PATIENCE:?} after its upgrade"
        );
        if pid == self.first.id() {
            let status = self.first.wait().unwrap();
            assert!(
                status.success(),
                "the first generation exited with {status}"
            );
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        for (_, pidfd) in &self.running {
            pidfd_send_signal(pidfd, Signal::KILL).ok();
        }
        self.first.wait().ok();
    }
}

pub fn open_pidfd(pid: u32) -> OwnedFd {
    let pid = Pid::from_raw(pid as i32).expect("a positive pid");
    pidfd_open(pid, PidfdFlags::empty()).unwrap_or_else(|e| panic!("pidfd_open({pid:?}): {e}"))
}

// ---------------------------------------------------------------------------
// The IRC clients

/// One line the client received, taken apart.
#[derive(Debug, Clone)]
pub struct Line {
    /// The sender's nick, or the server's name, or "".
    pub source: String,
    pub command: String,
    /// The last parameter (a PRIVMSG's text).
    pub text: String,
    pub raw: String,
}

impl Line {
    pub fn parse(raw: &str) -> Line {
        let (source, rest) = match raw.strip_prefix(':') {
            Some(prefixed) => prefixed.split_once(' ').unwrap_or((prefixed, "")),
            None => ("", raw),
        };
        let source = source.split(['!', '@']).next().unwrap_or("");
        let (command, params) = rest.split_once(' ').unwrap_or((rest, ""));
        let text = match params.split_once(':') {
            Some((_, trailing)) => trailing,
            None => params.rsplit(' ').next().unwrap_or(""),
        };
        Line {
            source: source.to_owned(),
            command: command.to_owned(),
            text: text.to_owned(),
            raw: raw.to_owned(),
        }
    }
}

/// What `!status` answers.
#[derive(Debug)]
pub struct Status {
    pub pid: u32,
    pub generation: u64,
    pub version: String,
    pub lines: u64,
}

/// What the new generation says once it has taken over.
#[derive(Debug)]
pub struct Upgraded {
    pub old_pid: u32,
    pub new_pid: u32,
    pub generation: u64,
    pub version: String,
}

/// The `key=value` field `key` of `text`.
pub fn field<'t>(text: &'t str, key: &str) -> &'t str {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

pub fn number<T: std::str::FromStr>(text: &str, key: &str) -> T {
    let value = field(text, key);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{key}={value} is not a number, in {text:?}"))
}

/// A registered client in the channel. A thread reads its connection,
/// answers the server's PINGs, and hands every other line over.
pub struct Client {
    pub nick: String,
    pub stream: TcpStream,
    pub lines: Receiver<Line>,
    /// Every line received so far, in order.
    pub seen: Vec<Line>,
}

impl Client {
    pub fn join(server: &Ngircd, nick: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect to ngircd");
        let (sender, lines) = mpsc::channel();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut ponger = stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut raw = String::new();
            while reader.read_line(&mut raw).unwrap_or(0) > 0 {
                // ngircd does not turn Nagle off, so a line it relays right
                // after another waits for this side's ACK of the first, which
                // Linux delays by 40 ms. Acking at once keeps that delay out
                // of the measured upgrade times.
                set_tcp_quickack(&ponger, true).ok();
                let line = Line::parse(raw.trim_end_matches(['\r', '\n']));
                if line.command == "PING" {
                    let pong = format!("PONG :{}\r\n", line.text);
                    if ponger.write_all(pong.as_bytes()).is_err() {
                        return;
                    }
                } else if sender.send(line).is_err() {
                    return;
                }
                raw.clear();
            }
        });
        let mut client = Client {
            nick: nick.to_owned(),
            stream,
            lines,
            seen: Vec::new(),
        };
        client.send(&format!("NICK {nick}"));
        client.send(&format!("USER {nick} 0 * :mitosis test client"));
        client.wait_for("the welcome (001)", |line| line.command == "001");
        client.send(&format!("JOIN {CHANNEL}"));
        client.wait_for("the end of NAMES (366)", |line| line.command == "366");
        client
    }

    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{} could not send {line:?}: {e}", self.nick));
    }

    pub fn say(&mut self, text: &str) {
        self.send(&format!("PRIVMSG {CHANNEL} :{text}"));
    }

    /// Reads lines until one matches, and returns it.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&Line) -> bool) -> Line {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} waited {PATIENCE:?} for {what}; the last lines were:\n{}",
                    self.nick,
                    self.recent()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}'s connection closed while waiting for {what}; the last lines were:\n{}",
                    self.nick,
                    self.recent()
                ),
            }
        }
    }

    pub fn recent(&self) -> String {
        let start = self.seen.len().saturating_sub(10);
        let recent: Vec<&str> = self.seen[start..].iter().map(|l| l.raw.as_str()).collect();
        recent.join("\n")
    }

    pub fn expect_bot_join(&mut self) {
        self.wait_for("the bot to join", |line| {
            line.source == BOT && line.command == "JOIN"
        });
    }

    pub fn expect_bot_says(&mut self, text: &str) {
        let line = self.wait_for("the bot's next line", |line| line.source == BOT);
        assert_eq!(line.text, text, "{line:?}");
    }

    pub fn status(&mut self) -> Status {
        self.say("!status");
        let line = self.wait_for("the bot's status", |line| {
            line.source == BOT && line.text.starts_with("status:")
        });
        Status {
            pid: number(&line.text, "pid"),
            generation: number(&line.text, "generation"),
            version: field(&line.text, "version").to_owned(),
            lines: number(&line.text, "lines"),
        }
    }

    /// `!upgrade`, expecting it to succeed; with the time from sending it to
    /// seeing the `upgraded` line.
    pub fn upgrade(&mut self) -> (Upgraded, Duration) {
        self.new_generation("!upgrade", "upgrading…")
    }

    /// `!rollback`, expecting it to succeed: the new process, running the
    /// previous build, reports as after an upgrade. With the time from
    /// sending it to seeing the `upgraded` line.
    pub fn rollback(&mut self) -> (Upgraded, Duration) {
        self.new_generation("!rollback", "going back to the previous build…")
    }

    /// Says `command`, expects the bot to answer `starting`, then a new
    /// generation to report.
    fn new_generation(&mut self, command: &str, starting: &str) -> (Upgraded, Duration) {
        let asked = Instant::now();
        self.say(command);
        self.expect_bot_says(starting);
        let line = self.wait_for("the bot's next line", |line| line.source == BOT);
        let took = asked.elapsed();
        assert!(line.text.starts_with("upgraded "), "{line:?}");
        let report = Upgraded {
            old_pid: number(&line.text, "old_pid"),
            new_pid: number(&line.text, "new_pid"),
            generation: number(&line.text, "generation"),
            version: field(&line.text, "version").to_owned(),
        };
        (report, took)
    }

    /// The promise to the channel: after its first JOIN, the bot never
    /// quits, parts, rejoins or changes nick, whatever happens to it.
    pub fn assert_bot_never_left_or_rejoined(&self) {
        let from_bot: Vec<&Line> = self.seen.iter().filter(|line| line.source == BOT).collect();
        let first_join = from_bot
            .iter()
            .position(|line| line.command == "JOIN")
            .expect("the bot joined");
        let noise: BTreeSet<&str> = from_bot[first_join + 1..]
            .iter()
            .filter(|line| ["QUIT", "PART", "JOIN", "NICK"].contains(&line.command.as_str()))
            .map(|line| line.raw.as_str())
            .collect();
        assert!(noise.is_empty(), "the observer saw the bot do {noise:?}");
        let privmsgs = from_bot
            .iter()
            .filter(|line| line.command == "PRIVMSG")
            .count();
        assert!(privmsgs > 0, "the check saw none of the bot's messages");
    }
}

// ---------------------------------------------------------------------------
// Scenarios

/// Lines in the flood, and upgrades during it.
pub const FLOOD: u64 = 1000;
pub const UPGRADES: u64 = 5;

/// The flooder says `flood 1` to `flood 1000` over about two seconds while
/// the observer upgrades the bot five times in the thick of it. Each report
/// must name the generation before it and a new pid; `after_each` sees each
/// new generation once the old one has gone. At the end `!status` must
/// count every line exactly, and the bot must never have left or rejoined.
/// Returns the status, and the pids in order, the first included.
pub fn five_upgrades_during_a_flood(
    test: &str,
    observer: &mut Client,
    mut flooder: Client,
    bot: &mut Bot,
    mut after_each: impl FnMut(&mut Bot, &Upgraded),
) -> (Status, Vec<u32>) {
    let flooding = thread::spawn(move || {
        for n in 1..=FLOOD {
            flooder.say(&format!("flood {n}"));
            // Pacing, not synchronisation: it spreads the flood over about
            // two seconds, so that the upgrades happen in the middle of it.
            thread::sleep(Duration::from_millis(2));
        }
        flooder
    });

    let mut pids = vec![bot.first_pid()];
    let mut took = Vec::new();
    for upgrade in 1..=UPGRADES {
        // Each upgrade starts in the thick of the flood: after line 100,
        // 300, 500, 700, 900.
        let after = format!("flood {}", 200 * upgrade - 100);
        observer.wait_for(&format!("{after:?} from the flooder"), |line| {
            line.source == "flooder" && line.text == after
        });
        let (report, elapsed) = observer.upgrade();
        let old = pids.last().copied().unwrap();
        assert_eq!(report.old_pid, old, "{report:?}");
        assert!(
            !pids.contains(&report.new_pid),
            "{report:?} reuses a pid of {pids:?}"
        );
        assert_eq!(report.generation, upgrade + 1, "{report:?}");
        assert_eq!(report.version, VERSION, "{report:?}");
        bot.adopt(report.new_pid);
        bot.expect_gone(old);
        after_each(bot, &report);
        pids.push(report.new_pid);
        took.push(elapsed);
    }
    flooding.join().expect("the flooder thread");
    observer.wait_for("the flood's last line", |line| {
        line.source == "flooder" && line.text == format!("flood {FLOOD}")
    });

    let status = observer.status();
    assert_eq!(status.pid, *pids.last().unwrap(), "{status:?}");
    assert_eq!(status.generation, UPGRADES + 1, "{status:?}");
    // Every PRIVMSG sent to the channel: the flood, the upgrades, and this
    // !status.
    assert_eq!(status.lines, FLOOD + UPGRADES + 1, "{status:?}");
    observer.assert_bot_never_left_or_rejoined();
    report_latency(test, &took);
    (status, pids)
}

/// A build that fails at start is renamed over the bot's binary: the
/// upgrade fails, and the old process carries on with its state and its
/// connection. With the good build back, the next upgrade succeeds.
/// `before` is the bot's last status; returns the report of the upgrade
/// that succeeded.
pub fn a_broken_build_rolls_back(
    test: &str,
    observer: &mut Client,
    bot: &mut Bot,
    binaries: &Binaries,
    before: &Status,
) -> Upgraded {
    binaries.replace_with_broken();
    observer.say("!upgrade");
    observer.expect_bot_says("upgrading…");
    let failed = observer.wait_for("the bot's next line", |line| line.source == BOT);
    assert!(failed.text.starts_with("upgrade failed"), "{failed:?}");
    assert!(failed.text.contains("exit status: 3"), "{failed:?}");

    // The old process kept its state, the connection included, and counts
    // on: !upgrade, !status.
    let kept = observer.status();
    assert_eq!(kept.pid, before.pid, "{kept:?}");
    assert_eq!(
        (kept.generation, kept.lines),
        (before.generation, before.lines + 2),
        "{kept:?}"
    );

    binaries.restore();
    let (report, elapsed) = observer.upgrade();
    assert_eq!(
        (report.old_pid, report.generation),
        (before.pid, before.generation + 1),
        "{report:?}"
    );
    bot.adopt(report.new_pid);
    bot.expect_gone(before.pid);
    let after = observer.status();
    assert_eq!(
        (after.pid, after.lines),
        (report.new_pid, before.lines + 4),
        "{after:?}"
    );
    observer.assert_bot_never_left_or_rejoined();
    report_latency(test, &[elapsed]);
    report
}
