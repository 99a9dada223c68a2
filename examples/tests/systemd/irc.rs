//! A real IRC server (Debian's ngircd) on a free loopback port, and a
//! watching client, for the IRC bot under systemd. The same approach as
//! `examples/tests/ircbot.rs`, cut down to what the systemd test needs.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

pub const CHANNEL: &str = "#mitosis";
pub const BOT: &str = "bot";
pub const ADMIN: &str = "observer";

/// How long any one expected line may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// An ngircd of the test's own, stopped and cleaned up on drop.
pub struct Ngircd {
    process: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Ngircd {
    /// Starts one, or returns `None` with a printed reason if ngircd is not
    /// installed, which only a machine outside CI may do.
    pub fn start() -> Option<Ngircd> {
        let Some(binary) = ["/usr/sbin/ngircd", "/usr/local/sbin/ngircd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
        else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but ngircd is not installed (apt-get install -y ngircd)");
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
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "mitosis-systemd-ngircd-{port}-{}",
            std::process::id()
        ));
        fs::remove_dir_all(&dir).ok();
        let include = dir.join("conf.d");
        let run = dir.join("run");
        fs::create_dir_all(&include).unwrap();
        fs::create_dir_all(&run).unwrap();
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
        // Run as root, ngircd drops to an unprivileged user, which must still
        // be able to read its configuration and write its pid.
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

/// One line a client received, taken apart.
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
pub struct Status {
    pub pid: u32,
    pub generation: u64,
}

/// What the new generation says once it has taken over after `!upgrade`.
#[derive(Debug)]
pub struct Upgraded {
    pub old_pid: u32,
    pub new_pid: u32,
    pub generation: u64,
}

/// The `key=value` field `key` of `text`, as a number.
fn number<T: std::str::FromStr>(text: &str, key: &str) -> T {
    let value = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{key}={value} is not a number, in {text:?}"))
}

/// A registered client in the channel. A thread reads its connection,
/// answers the server's PINGs, and hands every other line over.
pub struct Client {
    nick: String,
    stream: TcpStream,
    lines: Receiver<Line>,
    /// Every line received so far, in order.
    seen: Vec<Line>,
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

    fn recent(&self) -> String {
        let start = self.seen.len().saturating_sub(10);
        let recent: Vec<&str> = self.seen[start..].iter().map(|l| l.raw.as_str()).collect();
        recent.join("\n")
    }

    pub fn expect_bot_join(&mut self) {
        self.wait_for("the bot to join", |line| {
            line.source == BOT && line.command == "JOIN"
        });
    }

    pub fn status(&mut self) -> Status {
        self.say("!status");
        let line = self.wait_for("the bot's status", |line| {
            line.source == BOT && line.text.starts_with("status:")
        });
        Status {
            pid: number(&line.text, "pid"),
            generation: number(&line.text, "generation"),
        }
    }

    /// `!upgrade`, expecting it to succeed.
    pub fn upgrade(&mut self) -> Upgraded {
        self.say("!upgrade");
        let line = self.wait_for("the bot's `upgrading…`", |line| line.source == BOT);
        assert_eq!(line.text, "upgrading…", "{line:?}");
        let line = self.wait_for("the bot's next line", |line| line.source == BOT);
        assert!(line.text.starts_with("upgraded "), "{line:?}");
        Upgraded {
            old_pid: number(&line.text, "old_pid"),
            new_pid: number(&line.text, "new_pid"),
            generation: number(&line.text, "generation"),
        }
    }

    /// The bot's lines after its first JOIN that would show the channel it
    /// left or came back: QUIT, PART, JOIN, NICK.
    pub fn bot_left_or_rejoined(&self) -> Vec<String> {
        let from_bot: Vec<&Line> = self.seen.iter().filter(|line| line.source == BOT).collect();
        let first_join = from_bot
            .iter()
            .position(|line| line.command == "JOIN")
            .expect("the bot joined");
        from_bot[first_join + 1..]
            .iter()
            .filter(|line| ["QUIT", "PART", "JOIN", "NICK"].contains(&line.command.as_str()))
            .map(|line| line.raw.clone())
            .collect()
    }
}
