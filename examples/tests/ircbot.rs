//! The IRC bot against a real IRC server: ngircd from Debian, one per test,
//! on a free loopback port. An observer and a flooder join the bot's
//! channel; the observer sends the commands and watches what the bot does.
//!
//! Without ngircd these tests skip with a reason, except under `CI=true`,
//! where they fail: `.ci/run` installs it.

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

const CHANNEL: &str = "#mitosis";
const BOT: &str = "bot";
const ADMIN: &str = "observer";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const NEXT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-next");

/// How long any one expected event may take before the test fails. Generous:
/// it only matters when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn five_upgrades_under_a_flood_without_rejoin() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let mut observer = Client::join(&server, ADMIN);
    let mut flooder = Client::join(&server, "flooder");
    let mut bot = Bot::start(&server, Path::new(env!("CARGO_BIN_EXE_ircbot")));
    observer.expect_bot_join();

    const FLOOD: u64 = 1000;
    const UPGRADES: u64 = 5;
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
    report_latency("five_upgrades_under_a_flood", &took);
}

#[test]
fn upgrade_runs_the_binary_renamed_over_the_old_one() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let binaries = Binaries::new("renamed");
    let mut observer = Client::join(&server, ADMIN);
    let mut bot = Bot::start(&server, &binaries.installed);
    observer.expect_bot_join();

    let before = observer.status();
    assert_eq!((before.version.as_str(), before.lines), (VERSION, 1));

    binaries.replace_with(Path::new(env!("CARGO_BIN_EXE_ircbot-next")));
    let (report, elapsed) = observer.upgrade();
    assert_eq!(report.old_pid, before.pid, "{report:?}");
    assert_eq!(report.version, NEXT_VERSION, "{report:?}");
    bot.adopt(report.new_pid);
    bot.expect_gone(before.pid);

    let after = observer.status();
    assert_eq!(after.pid, report.new_pid, "{after:?}");
    assert_eq!(after.version, NEXT_VERSION, "{after:?}");
    assert_eq!((after.generation, after.lines), (2, 3), "{after:?}");
    observer.assert_bot_never_left_or_rejoined();
    report_latency("upgrade_runs_the_binary_renamed_over", &[elapsed]);
}

/// While the new build starts (held here until the test lets it go), the
/// old process goes on answering in the channel; then it hands over.
#[test]
fn the_bot_answers_while_a_slow_build_starts() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let binaries = Binaries::new("slow");
    let mut observer = Client::join(&server, ADMIN);
    let mut bot = Bot::start(&server, &binaries.installed);
    observer.expect_bot_join();
    let first = observer.status();

    let fifo = binaries.replace_with_held();
    observer.say("!upgrade");
    observer.expect_bot_says("upgrading…");
    // The new build has not even started; the old one answers.
    for lines in [3, 4] {
        let during = observer.status();
        assert_eq!(during.pid, first.pid, "{during:?}");
        assert_eq!((during.generation, during.lines), (1, lines), "{during:?}");
    }
    observer.say("!upgrade");
    observer.expect_bot_says("an upgrade is already under way");
    // Let it start: the open for writing releases its open for reading.
    let release = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let line = observer.wait_for("the upgrade's report", |line| line.source == BOT);
    drop(release);
    assert!(line.text.starts_with("upgraded "), "{line:?}");
    let after = observer.status();
    assert_ne!(after.pid, first.pid, "{after:?}");
    assert_eq!(after.version, NEXT_VERSION, "{after:?}");
    assert_eq!((after.generation, after.lines), (2, 6), "{after:?}");
    bot.adopt(after.pid);
    bot.expect_gone(first.pid);
    observer.assert_bot_never_left_or_rejoined();
}

#[test]
fn a_binary_that_fails_at_start_rolls_back_and_the_next_upgrade_succeeds() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let binaries = Binaries::new("broken");
    let mut observer = Client::join(&server, ADMIN);
    let mut bot = Bot::start(&server, &binaries.installed);
    observer.expect_bot_join();
    let first = observer.status();

    binaries.replace_with_broken();
    observer.say("!upgrade");
    observer.expect_bot_says("upgrading…");
    let failed = observer.wait_for("the bot's next line", |line| line.source == BOT);
    assert!(failed.text.starts_with("upgrade failed"), "{failed:?}");
    assert!(failed.text.contains("exit status: 3"), "{failed:?}");

    // The old process kept its state, the connection included, and counts
    // on: !status, !upgrade, !status.
    let kept = observer.status();
    assert_eq!(kept.pid, first.pid, "{kept:?}");
    assert_eq!((kept.generation, kept.lines), (1, 3), "{kept:?}");

    binaries.restore();
    let (report, elapsed) = observer.upgrade();
    assert_eq!(
        (report.old_pid, report.generation),
        (first.pid, 2),
        "{report:?}"
    );
    bot.adopt(report.new_pid);
    bot.expect_gone(first.pid);
    let after = observer.status();
    assert_eq!((after.pid, after.lines), (report.new_pid, 5), "{after:?}");
    observer.assert_bot_never_left_or_rejoined();
    report_latency("after_a_failed_upgrade", &[elapsed]);
}

#[test]
fn a_non_admin_upgrade_is_refused_and_changes_nothing() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let mut observer = Client::join(&server, ADMIN);
    let mut stranger = Client::join(&server, "stranger");
    let _bot = Bot::start(&server, Path::new(env!("CARGO_BIN_EXE_ircbot")));
    observer.expect_bot_join();
    let before = observer.status();

    stranger.say("!upgrade");
    let refusal = stranger.wait_for("the bot's refusal", |line| {
        line.source == BOT && line.text.starts_with("sorry")
    });
    assert_eq!(refusal.text, "sorry stranger, only an admin may upgrade me");

    let after = observer.status();
    assert_eq!(after.pid, before.pid, "{after:?}");
    assert_eq!((after.generation, after.lines), (1, 3), "{after:?}");
    // The observer saw the refusal, and nothing else from the bot, between
    // the two statuses.
    let said: Vec<&str> = observer
        .seen
        .iter()
        .filter(|line| line.source == BOT && line.command == "PRIVMSG")
        .map(|line| line.text.as_str())
        .collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert_eq!(said[1], refusal.text);
    observer.assert_bot_never_left_or_rejoined();
}

/// Prints what the closing notes quote: `!upgrade` to `upgraded`, as the
/// observer sees it.
fn report_latency(test: &str, took: &[Duration]) {
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
struct Ngircd {
    process: Child,
    port: u16,
    dir: PathBuf,
}

impl Ngircd {
    /// Starts one, or returns `None` with a printed reason if ngircd is not
    /// installed, which only a machine outside CI may do.
    fn start() -> Option<Ngircd> {
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
            if let Some(server) = Ngircd::try_start(&binary) {
                return Some(server);
            }
        }
        panic!("ngircd did not start on any of 5 free ports; see its output above");
    }

    fn try_start(binary: &Path) -> Option<Ngircd> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = temp_dir(&format!("ngircd-{port}"));
        let include = dir.join("conf.d");
        let run = dir.join("run");
        fs::create_dir(&include).unwrap();
        fs::create_dir(&run).unwrap();
        let config = dir.join("ngircd.conf");
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
                 IncludeDir = {include}\n",
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
        // listening, or to exit.
        let mut log = BufReader::new(process.stdout.take().unwrap());
        let mut line = String::new();
        let mut listening = false;
        while log.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("Now listening on") {
                listening = true;
                break;
            }
            eprint!("ngircd: {line}");
            line.clear();
        }
        // Keep draining its log so that it never blocks on a full pipe.
        thread::spawn(move || for _ in log.lines() {});
        if !listening {
            process.wait().ok();
            fs::remove_dir_all(&dir).ok();
            return None;
        }
        Some(Ngircd { process, port, dir })
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        self.process.kill().ok();
        self.process.wait().ok();
        fs::remove_dir_all(&self.dir).ok();
    }
}

fn find_ngircd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("ngircd"))
        .find(|candidate| candidate.is_file())
}

/// A fresh directory in Cargo's temp dir for this package's tests, which is
/// on the same filesystem as the built binaries, so that they can be hard
/// linked rather than copied.
fn temp_dir(name: &str) -> PathBuf {
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
struct Binaries {
    dir: PathBuf,
    installed: PathBuf,
}

impl Binaries {
    fn new(name: &str) -> Binaries {
        let dir = temp_dir(name);
        let binaries = Binaries {
            installed: dir.join("ircbot"),
            dir,
        };
        binaries.restore();
        binaries
    }

    /// Puts the good build back.
    fn restore(&self) {
        self.replace_with(Path::new(env!("CARGO_BIN_EXE_ircbot")));
    }

    /// Renames `binary` over the installed one. A hard link, not a copy:
    /// a copy leaves a moment in which the file is open for writing, and a
    /// fork by another test's thread in that moment would make executing it
    /// fail with ETXTBSY.
    fn replace_with(&self, binary: &Path) {
        let staged = self.dir.join("ircbot.new");
        fs::remove_file(&staged).ok();
        fs::hard_link(binary, &staged).unwrap();
        fs::rename(&staged, &self.installed).unwrap();
    }

    /// Renames over the installed one a build that waits, before it
    /// starts, until the returned fifo is opened for writing: a slow start
    /// that the test ends when it chooses.
    fn replace_with_held(&self) -> PathBuf {
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
    fn replace_with_broken(&self) {
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
struct Bot {
    first: Child,
    /// pidfds of the generations that may still run.
    running: Vec<(u32, OwnedFd)>,
}

impl Bot {
    fn start(server: &Ngircd, binary: &Path) -> Bot {
        let mut first = Command::new(binary)
            .args(["--server", &format!("127.0.0.1:{}", server.port)])
            .args(["--nick", BOT, "--channel", CHANNEL, "--admin", ADMIN])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the bot");
        // The bot's log, shown if the test fails. Every generation inherits
        // the pipe, so this ends when the last one does.
        let log = BufReader::new(first.stderr.take().unwrap());
        thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        let pid = first.id();
        Bot {
            running: vec![(pid, open_pidfd(pid))],
            first,
        }
    }

    fn first_pid(&self) -> u32 {
        self.first.id()
    }

    /// Takes charge of a new generation, so that it is killed at the end.
    fn adopt(&mut self, pid: u32) {
        self.running.push((pid, open_pidfd(pid)));
    }

    /// Checks that generation `pid` has exited, and quietly (status 0) if it
    /// was the test's child.
    fn expect_gone(&mut self, pid: u32) {
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

fn open_pidfd(pid: u32) -> OwnedFd {
    let pid = Pid::from_raw(pid as i32).expect("a positive pid");
    pidfd_open(pid, PidfdFlags::empty()).unwrap_or_else(|e| panic!("pidfd_open({pid:?}): {e}"))
}

// ---------------------------------------------------------------------------
// The IRC clients

/// One line the client received, taken apart.
#[derive(Debug, Clone)]
struct Line {
    /// The sender's nick, or the server's name, or "".
    source: String,
    command: String,
    /// The last parameter (a PRIVMSG's text).
    text: String,
    raw: String,
}

impl Line {
    fn parse(raw: &str) -> Line {
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
struct Status {
    pid: u32,
    generation: u64,
    version: String,
    lines: u64,
}

/// What the new generation says once it has taken over.
#[derive(Debug)]
struct Upgraded {
    old_pid: u32,
    new_pid: u32,
    generation: u64,
    version: String,
}

/// The `key=value` field `key` of `text`.
fn field<'t>(text: &'t str, key: &str) -> &'t str {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

fn number<T: std::str::FromStr>(text: &str, key: &str) -> T {
    let value = field(text, key);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{key}={value} is not a number, in {text:?}"))
}

/// A registered client in the channel. A thread reads its connection,
/// answers the server's PINGs, and hands every other line over.
struct Client {
    nick: String,
    stream: TcpStream,
    lines: Receiver<Line>,
    /// Every line received so far, in order.
    seen: Vec<Line>,
}

impl Client {
    fn join(server: &Ngircd, nick: &str) -> Client {
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

    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{} could not send {line:?}: {e}", self.nick));
    }

    fn say(&mut self, text: &str) {
        self.send(&format!("PRIVMSG {CHANNEL} :{text}"));
    }

    /// Reads lines until one matches, and returns it.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Line) -> bool) -> Line {
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

    fn recent(&self) -> String {
        let start = self.seen.len().saturating_sub(10);
        let recent: Vec<&str> = self.seen[start..].iter().map(|l| l.raw.as_str()).collect();
        recent.join("\n")
    }

    fn expect_bot_join(&mut self) {
        self.wait_for("the bot to join", |line| {
            line.source == BOT && line.command == "JOIN"
        });
    }

    fn expect_bot_says(&mut self, text: &str) {
        let line = self.wait_for("the bot's next line", |line| line.source == BOT);
        assert_eq!(line.text, text, "{line:?}");
    }

    fn status(&mut self) -> Status {
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
    fn upgrade(&mut self) -> (Upgraded, Duration) {
        let asked = Instant::now();
        self.say("!upgrade");
        self.expect_bot_says("upgrading…");
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
    fn assert_bot_never_left_or_rejoined(&self) {
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
