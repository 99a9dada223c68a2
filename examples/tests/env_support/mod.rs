//! What the container, terminal and signal tests share: starting and
//! watching processes by pidfd, a line client for the echo server, loadgen,
//! and skipping (or, under `CI=true`, failing) when a tool is missing.
//!
//! Each test binary uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

pub const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
pub const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// How long any one expected event may take before the test fails.
/// Generous: it only matters when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Something a test needs from the machine.
pub enum Need {
    /// Root, for PID namespaces.
    Root,
    /// A program on `PATH` (Debian's package in the reason).
    Program {
        name: &'static str,
        package: &'static str,
    },
    /// `unshare --pid --fork --mount-proc` works here (root alone is not
    /// enough inside some containers).
    PidNamespaces,
    /// `mitosisctl`, which `cargo test --workspace` builds next to the
    /// examples' binaries (it is the mitosis package's, with the `control`
    /// feature the examples turn on).
    Mitosisctl,
}

/// Everything loadgen counts as gone wrong, and `also`, as `key=value`
/// words for one assertion against [`LOADGEN_CLEAN`] (a missing count
/// shows as `u64::MAX`).
pub fn loadgen_failures(result: &BTreeMap<String, u64>, also: &[&str]) -> String {
    [
        "failures",
        "failed_connects",
        "resets",
        "timeouts",
        "lost",
        "duplicated",
        "mismatched",
    ]
    .iter()
    .chain(also)
    .map(|key| format!("{key}={}", result.get(*key).copied().unwrap_or(u64::MAX)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// [`loadgen_failures`] of a run where nothing went wrong.
pub const LOADGEN_CLEAN: &str =
    "failures=0 failed_connects=0 resets=0 timeouts=0 lost=0 duplicated=0 mismatched=0";

/// Where `cargo test --workspace` puts `mitosisctl`: next to the examples'
/// binaries. A test that runs it says [`Need::Mitosisctl`].
pub fn mitosisctl() -> PathBuf {
    Path::new(ECHO_SERVER).with_file_name("mitosisctl")
}

/// Whether the test can run. Outside CI a missing need prints the reason
/// and the test returns early; under `CI=true` it fails, since `.ci/run`
/// installs what these tests need.
pub fn can_run(test: &str, needs: &[Need]) -> bool {
    for need in needs {
        let missing = match need {
            Need::Root => (!rustix::process::geteuid().is_root()).then(|| "not root".to_owned()),
            Need::Mitosisctl => (!mitosisctl().is_file()).then(|| {
                format!(
                    "{} is not built: run the tests with `cargo test --workspace`, or first \
                     `cargo build -p mitosis-handover --features control --bin mitosisctl`",
                    mitosisctl().display()
                )
            }),
            Need::Program { name, package } => (!on_path(name))
                .then(|| format!("{name} is not installed (apt-get install -y {package})")),
            Need::PidNamespaces => {
                let works = Command::new("unshare")
                    .args(["--pid", "--fork", "--mount-proc", "true"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
                (!works).then(|| "`unshare --pid --fork --mount-proc true` fails here".to_owned())
            }
        };
        if let Some(reason) = missing {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: CI=true but {reason}; .ci/run must provide it");
            }
            eprintln!("{test}: skipped: {reason}");
            return false;
        }
    }
    true
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// A command whose environment leaves mitosis's automatic choices to the
/// situation the test sets up, not to the one the test runs in: no
/// inherited systemd variables (`INVOCATION_ID` would turn the keeper on),
/// no keeper switch, no terminal multiplexer.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for variable in [
        "INVOCATION_ID",
        "NOTIFY_SOCKET",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "MITOSIS_KEEPER",
        "TMUX",
        "TMUX_PANE",
    ] {
        command.env_remove(variable);
    }
    command
}

/// A fresh directory of this test's own, removed when the test ends,
/// passed or not (each holds copies of the server, 30 MB apiece).
pub fn scratch_dir(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("mitosis-env-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    Scratch(dir)
}

pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// A copy of echo-server at `dir/echo-server`, which the test may replace
/// with a broken build: an upgrade runs whatever is at that path.
pub fn echo_server_copy(dir: &Path) -> PathBuf {
    let binary = dir.join("echo-server");
    install(&binary, Path::new(ECHO_SERVER));
    binary
}

/// Puts a copy of `source` at `binary` as a deploy does: written beside
/// it, then renamed over it (the running file is not touched).
///
/// The bytes are written by a child process (`cp`), never through an fd
/// of the test process: another test thread that forks meanwhile would
/// hold such an fd, open for writing, until its child execs, and exec of
/// the copy would fail with ETXTBSY ("Text file busy").
pub fn install(binary: &Path, source: &Path) {
    let staged = binary.with_extension("staged");
    let copied = Command::new("cp")
        .arg(source)
        .arg(&staged)
        .stdin(Stdio::null())
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp {source:?} {staged:?}: {copied}");
    stage_executable(&staged, binary);
}

/// Puts a shell script at `binary`, as [`install`] does (written by a
/// child process too).
pub fn install_script(binary: &Path, script: &str) {
    let staged = binary.with_extension("staged");
    let mut writer = Command::new("sh")
        .args(["-c", r#"cat > "$1""#, "sh"])
        .arg(&staged)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run sh");
    writer
        .stdin
        .take()
        .expect("a pipe")
        .write_all(script.as_bytes())
        .expect("write the script");
    let written = writer.wait().expect("wait for sh");
    assert!(written.success(), "writing {staged:?}: {written}");
    stage_executable(&staged, binary);
}

fn stage_executable(staged: &Path, binary: &Path) {
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o755))
        .expect("make it executable");
    std::fs::rename(staged, binary).expect("install the build");
}

/// A broken build: it exits with status 1 at start.
pub fn install_broken_build(binary: &Path) {
    install(binary, Path::new("/bin/false"));
}

/// A process watched through a pidfd, so that a reused pid is never
/// mistaken for it.
pub struct Process {
    pub pid: u32,
    pidfd: OwnedFd,
}

impl Process {
    /// `None` if it has exited and been reaped already.
    pub fn open(pid: u32) -> Option<Process> {
        let raw = Pid::from_raw(pid as i32).expect("a positive pid");
        match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(pidfd) => Some(Process { pid, pidfd }),
            Err(Errno::SRCH) => None,
            Err(error) => panic!("pidfd_open({pid}): {error}"),
        }
    }

    /// Like [`Process::open`], for a process that must still exist.
    pub fn expect(pid: u32, what: &str) -> Process {
        Process::open(pid).unwrap_or_else(|| panic!("{what} (pid {pid}) is gone"))
    }

    /// Whether it has exited (a zombie has exited).
    pub fn has_exited(&self) -> bool {
        readable(&self.pidfd, Duration::ZERO)
    }

    /// Waits for it to exit; fails the test after [`PATIENCE`].
    pub fn expect_exit(&self, what: &str) {
        assert!(
            readable(&self.pidfd, PATIENCE),
            "{what} (pid {}) still runs after {PATIENCE:?}",
            self.pid
        );
    }

    pub fn signal(&self, signal: Signal) {
        pidfd_send_signal(&self.pidfd, signal)
            .unwrap_or_else(|error| panic!("signal pid {}: {error}", self.pid));
    }

    pub fn kill(&self) {
        pidfd_send_signal(&self.pidfd, Signal::KILL).ok();
    }
}

/// Whether `fd` becomes readable within `timeout`.
pub fn readable(fd: impl AsFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timespec = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timespec)) {
            Ok(ready) => return ready == 1,
            Err(Errno::INTR) => {}
            Err(error) => panic!("poll: {error}"),
        }
    }
}

/// The processes a test started that are not its children (generations
/// started by upgrades): all killed when the test ends, passed or not.
#[derive(Default)]
pub struct Survivors(Vec<Process>);

impl Survivors {
    /// Watches `pid` from now on; `None` if it is gone already.
    pub fn adopt(&mut self, pid: u32) -> Option<&Process> {
        let process = Process::open(pid)?;
        self.0.push(process);
        self.0.last()
    }

    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.0.iter().find(|process| process.pid == pid)
    }
}

impl Drop for Survivors {
    fn drop(&mut self) {
        for process in &self.0 {
            process.kill();
        }
    }
}

/// A child that is killed if the test ends before waiting for it.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Waits for it to exit, up to [`PATIENCE`].
    pub fn expect_exit(&mut self, what: &str) -> std::process::ExitStatus {
        Process::expect(self.0.id(), what).expect_exit(what);
        self.0.wait().expect("wait for a child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// The lines read from `input`, as they come, without `\r` (a pty turns
/// `\n` into `\r\n`). The channel ends when `input` does.
pub fn lines_of(input: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(input).lines().map_while(Result::ok) {
            if sender.send(line.trim_end_matches('\r').to_owned()).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The next line; fails the test at the end or after [`PATIENCE`].
pub fn next_line(lines: &Receiver<String>, what: &str) -> String {
    match lines.recv_timeout(PATIENCE) {
        Ok(line) => line,
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: the output ended"),
        Err(RecvTimeoutError::Timeout) => panic!("{what}: nothing after {PATIENCE:?}"),
    }
}

/// Reads lines until one satisfies `wanted`, and returns it; the lines
/// before it are returned too, for the test's evidence.
pub fn line_where(
    lines: &Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> (String, Vec<String>) {
    let mut before = Vec::new();
    loop {
        let line = next_line(lines, what);
        if wanted(&line) {
            return (line, before);
        }
        before.push(line);
    }
}

/// The port in echo-server's first line, `listening <port>`, skipping
/// anything a shell or terminal printed before it.
pub fn listening_port(lines: &Receiver<String>) -> u16 {
    let (line, _) = line_where(lines, "echo-server's `listening <port>`", |line| {
        line.starts_with("listening ")
    });
    line["listening ".len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("echo-server said {line:?}, not `listening <port>`"))
}

/// A FIFO at `path`, opened for reading and writing, so that neither the
/// writers' opens nor this one block, and its lines as they come. The
/// test may write lines of its own through the returned file.
pub fn fifo(path: &Path) -> (std::fs::File, Receiver<String>) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("make a FIFO");
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the FIFO");
    let lines = lines_of(file.try_clone().expect("clone the FIFO"));
    (file, lines)
}

/// Copies every line of a child's output to the test's stderr, with a
/// prefix; it ends when every process holding the pipe has closed it.
pub fn relay(input: impl Read + Send + 'static, prefix: &'static str) {
    thread::spawn(move || {
        for line in BufReader::new(input).lines().map_while(Result::ok) {
            eprintln!("{prefix}{line}");
        }
    });
}

/// The echo server's answer to `UPGRADE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Upgraded {
        old_pid: u32,
        new_pid: u32,
        generation: u64,
    },
    Failed(String),
}

/// One connection to the echo server.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    requests: u64,
    name: String,
}

impl Client {
    pub fn connect(port: u16, name: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|error| panic!("{name}: connect to port {port}: {error}"));
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("set a read timeout");
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone a socket")),
            stream,
            requests: 0,
            name: name.to_owned(),
        }
    }

    fn read_reply(&mut self, request: &str) -> String {
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) => panic!("{}: EOF in answer to {request:?}", self.name),
            Ok(_) => reply,
            Err(error) => panic!("{}: no answer to {request:?}: {error}", self.name),
        }
    }

    /// Sends one request and checks that it comes back exactly.
    pub fn echo(&mut self) {
        self.requests += 1;
        let request = format!(
            "{}-{} payload {}\n",
            self.name, self.requests, self.requests
        );
        self.stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|error| panic!("{}: send {request:?}: {error}", self.name));
        let reply = self.read_reply(&request);
        assert_eq!(reply, request, "{}: the echo differs", self.name);
    }

    /// Checks that the server has closed the connection (after every
    /// reply it owed): the next read finds EOF, not a line.
    pub fn expect_closed(&mut self) {
        let mut rest = String::new();
        match self.reader.read_line(&mut rest) {
            Ok(0) => {}
            Ok(_) => panic!("{}: {rest:?} instead of EOF", self.name),
            // A reset also tells that the server is gone.
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            Err(error) => panic!("{}: no EOF: {error}", self.name),
        }
    }

    /// Asks for an upgrade and returns the answer.
    pub fn upgrade(&mut self) -> Reply {
        self.stream
            .write_all(b"UPGRADE\n")
            .unwrap_or_else(|error| panic!("{}: send UPGRADE: {error}", self.name));
        let reply = self.read_reply("UPGRADE");
        if let Some(reason) = reply.strip_prefix("UPGRADE-FAILED ") {
            return Reply::Failed(reason.trim_end().to_owned());
        }
        let fields: Vec<&str> = reply.split_whitespace().collect();
        match fields[..] {
            ["UPGRADED", old, new, generation] => Reply::Upgraded {
                old_pid: old.parse().expect("the old pid"),
                new_pid: new.parse().expect("the new pid"),
                generation: generation.parse().expect("the generation"),
            },
            _ => panic!("{}: {reply:?} answers UPGRADE", self.name),
        }
    }

    /// Asks for an upgrade that must succeed; returns (old, new,
    /// generation).
    pub fn expect_upgrade(&mut self) -> (u32, u32, u64) {
        match self.upgrade() {
            Reply::Upgraded {
                old_pid,
                new_pid,
                generation,
            } => (old_pid, new_pid, generation),
            Reply::Failed(reason) => panic!("{}: the upgrade failed: {reason}", self.name),
        }
    }
}

/// Whether a connection to `port` is refused: nothing listens there.
pub fn refuses_connections(port: u16) -> bool {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(_) => false,
        Err(error) => {
            assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
            true
        }
    }
}

/// One `upgrade` line of loadgen.
#[derive(Debug, Clone, Copy)]
pub struct LoadUpgrade {
    pub old_pid: u32,
    pub new_pid: u32,
    pub generation: u64,
}

/// What a loadgen run reported.
pub struct LoadRun {
    pub upgrades: Vec<LoadUpgrade>,
    pub result: BTreeMap<String, u64>,
    /// Its output less the `upgrade` lines.
    pub summary: String,
}

/// Runs loadgen against the server on `port`: 64 clients, every tenth
/// request on a fresh connection, `upgrades` upgrades back to back. Fails
/// the test unless every upgrade succeeded and no client saw a failure.
pub fn run_loadgen(port: u16, upgrades: u64) -> LoadRun {
    run_loadgen_with(port, upgrades, &[])
}

/// [`run_loadgen`] with more of loadgen's options, such as `--tls`.
pub fn run_loadgen_with(port: u16, upgrades: u64, options: &[&str]) -> LoadRun {
    let output = Command::new(LOADGEN)
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--clients", "64", "--reconnect-every", "10"])
        .args(["--upgrades", &upgrades.to_string()])
        .args(["--timeout", "20s"])
        .args(options)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!(
        "loadgen's output:\n{stdout}\nits stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result_line = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line; {context}"));
    let result: BTreeMap<String, u64> = key_values(result_line)
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.parse().unwrap_or(u64::MAX)))
        .collect();
    let failures = loadgen_failures(&result, &["upgrades_failed"]);
    assert_eq!(
        failures,
        format!("{LOADGEN_CLEAN} upgrades_failed=0"),
        "{context}"
    );
    assert_eq!(result["upgrades_done"], upgrades, "{context}");
    assert_eq!(result["answered"], result["requests"], "{context}");
    assert!(
        result["upgrade_requests"] > 0,
        "no load overlapped the upgrades; {context}"
    );
    assert!(
        output.status.success(),
        "loadgen: {}; {context}",
        output.status
    );
    let upgrades = stdout
        .lines()
        .filter_map(|line| {
            let fields = key_values(line.strip_prefix("upgrade ")?);
            Some(LoadUpgrade {
                old_pid: fields.get("old_pid")?.parse().ok()?,
                new_pid: fields.get("new_pid")?.parse().ok()?,
                generation: fields.get("generation")?.parse().ok()?,
            })
        })
        .collect();
    let summary = stdout
        .lines()
        .filter(|line| !line.starts_with("upgrade "))
        .collect::<Vec<_>>()
        .join("\n");
    LoadRun {
        upgrades,
        result,
        summary,
    }
}

fn key_values(text: &str) -> BTreeMap<&str, &str> {
    text.split(' ')
        .filter_map(|word| word.split_once('='))
        .collect()
}

/// Checks that the upgrades form one chain: each new pid is the next
/// one's old pid, the generation goes up by one each time, no pid repeats.
/// Returns the pids in order, the first one's included.
pub fn chain_of(first_pid: u32, first_generation: u64, upgrades: &[LoadUpgrade]) -> Vec<u32> {
    let mut pids = vec![first_pid];
    for (index, upgrade) in upgrades.iter().enumerate() {
        assert_eq!(
            (upgrade.old_pid, upgrade.generation),
            (*pids.last().unwrap(), first_generation + index as u64 + 1),
            "{upgrade:?} does not follow {pids:?}"
        );
        assert!(
            !pids.contains(&upgrade.new_pid),
            "{upgrade:?} reuses a pid of {pids:?}"
        );
        pids.push(upgrade.new_pid);
    }
    pids
}

/// The pids whose parent is `pid`, whichever of its threads started them.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// A field of `/proc/<pid>/status`, such as `State` or `NSpid`.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim().to_owned())
    })
}

/// The program's name (`/proc/<pid>/comm`).
pub fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|name| name.trim_end().to_owned())
        .unwrap_or_else(|_| "(gone)".to_owned())
}

/// A process's place among sessions and terminals, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub process_group: u32,
    pub session: u32,
    /// The controlling terminal's device number, 0 for none.
    pub tty: u32,
    /// The terminal's foreground process group, or -1 without a terminal.
    pub foreground_group: i32,
}

pub fn session_of(pid: u32) -> Option<Session> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces, in
    // parentheses): state ppid pgrp session tty_nr tpgid ...
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    Some(Session {
        process_group: fields[2].parse().ok()?,
        session: fields[3].parse().ok()?,
        tty: fields[4].parse().ok()?,
        foreground_group: fields[5].parse().ok()?,
    })
}

/// One line of evidence about a process's session and terminal.
pub fn describe_session(pid: u32) -> String {
    match session_of(pid) {
        Some(s) => format!(
            "pid {pid} ({}): session {}{}, process group {}, {}",
            command_name(pid),
            s.session,
            if s.session == pid {
                " (its leader)"
            } else {
                ""
            },
            s.process_group,
            if s.tty == 0 {
                "no controlling terminal".to_owned()
            } else if s.foreground_group == s.process_group as i32 {
                format!("terminal {:#x}, in the foreground", s.tty)
            } else {
                format!("terminal {:#x}, in the background", s.tty)
            }
        ),
        None => format!("pid {pid}: gone"),
    }
}

/// Waits, up to [`PATIENCE`], for `condition` to hold, checking every 10
/// ms; only for states that no event announces to an outsider (the
/// reaping of another process's child, say).
pub fn eventually<T>(what: &str, mut condition: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match condition() {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("{what}: still not so after {PATIENCE:?}: {state}")
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}
