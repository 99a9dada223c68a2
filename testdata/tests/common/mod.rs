//! Helpers shared by the integration tests: temporary directories, the
//! testdata process and its generations, the peer (control) connection, and
//! line readers with timeouts.
//!
//! Nothing here sleeps to synchronise: every wait is for a line, an EOF or a
//! process exit, with [`TIMEOUT`] as a safety net so that a broken handover
//! fails the test instead of hanging it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

/// The safety net for every wait.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub const TESTDATA: &str = env!("CARGO_BIN_EXE_testdata");
pub const TESTDATA_V2: &str = env!("CARGO_BIN_EXE_testdata-v2");
pub const TESTDATA_SCHEMA2: &str = env!("CARGO_BIN_EXE_testdata-schema2");
pub const FAKE_CHILD: &str = env!("CARGO_BIN_EXE_fake-child");
pub const TESTDATA_MIGRATE_V2: &str = env!("CARGO_BIN_EXE_testdata-migrate-v2");
pub const TESTDATA_MIGRATE_V3: &str = env!("CARGO_BIN_EXE_testdata-migrate-v3");
pub const TESTDATA_NOMIGRATE: &str = env!("CARGO_BIN_EXE_testdata-nomigrate");
pub const ROUNDTRIP: &str = env!("CARGO_BIN_EXE_roundtrip");
pub const FD_THIEF: &str = env!("CARGO_BIN_EXE_fd-thief");

// ---------------------------------------------------------------------------
// Temporary directories

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "mitosis-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Puts a binary into the directory under `name`.
    ///
    /// A hard link where possible: copying would open the new file for
    /// writing, and a concurrent fork in another test thread could inherit
    /// that fd and make exec fail with ETXTBSY. The copy is the fallback for
    /// a temp dir on another filesystem.
    pub fn install(&self, binary: &str, name: &str) -> PathBuf {
        let target = self.join(name);
        let _ = fs::remove_file(&target);
        if fs::hard_link(binary, &target).is_err() {
            fs::copy(binary, &target)
                .unwrap_or_else(|e| panic!("copy {binary} to {}: {e}", target.display()));
        }
        target
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Reading lines with a timeout

/// Pids mentioned by the programs under test (`pid=`, `child=`), so that
/// every generation can be killed at the end of the test.
#[derive(Clone, Default)]
pub struct Pids(Arc<Mutex<Vec<u32>>>);

impl Pids {
    pub fn add(&self, pid: u32) {
        let mut pids = self.0.lock().unwrap();
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }

    /// Records every `pid=<n>` and `child=<n>` in `line`.
    pub fn scan(&self, line: &str) {
        for word in line.split(|c: char| c.is_whitespace() || c == ',') {
            for key in ["pid=", "child="] {
                if let Some(pid) = word.strip_prefix(key).and_then(|n| n.parse().ok()) {
                    self.add(pid);
                }
            }
        }
    }

    pub fn all(&self) -> Vec<u32> {
        self.0.lock().unwrap().clone()
    }
}

/// The lines of a child's stdout or stderr, read by a thread, with waits
/// that time out. Lines that do not match what a wait is looking for are
/// kept for later waits, because several generations share the pipe.
pub struct Lines {
    name: &'static str,
    receiver: Receiver<String>,
    pending: VecDeque<String>,
    seen: Vec<String>,
    eof: bool,
}

impl Lines {
    /// Reads `source` line by line on a thread. Every line is echoed to the
    /// test's stderr (captured, shown when the test fails) and scanned for
    /// pids.
    pub fn spawn(name: &'static str, source: impl Read + Send + 'static, pids: Pids) -> Lines {
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name} reader"))
            .spawn(move || {
                for line in BufReader::new(source).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{name}] {line}");
                    pids.scan(&line);
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn a reader thread");
        Lines {
            name,
            receiver,
            pending: VecDeque::new(),
            seen: Vec::new(),
            eof: false,
        }
    }

    fn receive(&mut self, deadline: Instant) -> Option<String> {
        if self.eof {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.receiver.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                None
            }
        }
    }

    /// Waits for the first line (in order, old or new) that satisfies
    /// `matches`, and removes it; the lines before it stay for later waits.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        if let Some(index) = self.pending.iter().position(|line| matches(line)) {
            return self.pending.remove(index).expect("index is in range");
        }
        let deadline = Instant::now() + TIMEOUT;
        while let Some(line) = self.receive(deadline) {
            if matches(&line) {
                return line;
            }
            self.pending.push_back(line);
        }
        panic!(
            "{}: no line {what} within {TIMEOUT:?}{}; lines so far: {:#?}",
            self.name,
            if self.eof { " (the pipe closed)" } else { "" },
            self.seen
        );
    }

    /// Waits for a line that starts with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        self.wait_for(&format!("starting with {prefix:?}"), |line| {
            line.starts_with(prefix)
        })
    }

    /// Waits for the pipe to close (every writer gone) and returns the
    /// lines not taken by earlier waits.
    pub fn wait_eof(&mut self) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        while !self.eof {
            match self.receive(deadline) {
                Some(line) => self.pending.push_back(line),
                None if self.eof => break,
                None => panic!(
                    "{}: still open after {TIMEOUT:?}; lines so far: {:#?}",
                    self.name, self.seen
                ),
            }
        }
        self.pending.drain(..).collect()
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}

// ---------------------------------------------------------------------------
// The testdata process

/// A testdata process, its later generations, and its output. Dropping it
/// kills every generation it knows of and removes its directory.
pub struct Run {
    /// The first generation (the only one that is the test's own child).
    pub child: Child,
    pub pids: Pids,
    pub stdout: Lines,
    pub stderr: Lines,
    /// The binary's path in the directory (`<dir>/testdata`).
    pub binary: PathBuf,
    /// The log file passed with `--log`.
    pub log: PathBuf,
    /// The TCP port testdata listens on, once `listening` was read.
    pub port: u16,
    pub first_pid: u32,
    pub dir: TempDir,
}

/// What to run: which binary, with which extra arguments and environment.
pub struct Spawn<'a> {
    pub name: &'a str,
    pub binary: &'a str,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Whether to pass `--log <dir>/testdata.log` (testdata's programs take
    /// it; `roundtrip` does not).
    pub log: bool,
}

impl<'a> Spawn<'a> {
    pub fn new(name: &'a str) -> Spawn<'a> {
        Spawn {
            name,
            binary: TESTDATA,
            args: Vec::new(),
            env: Vec::new(),
            log: true,
        }
    }

    /// Runs `binary` (installed as `<dir>/testdata`) instead of `testdata`.
    pub fn binary(mut self, binary: &'a str) -> Self {
        self.binary = binary;
        self
    }

    /// Passes no `--log` flag.
    pub fn without_log(mut self) -> Self {
        self.log = false;
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(self) -> Run {
        let dir = TempDir::new(self.name);
        let binary = dir.install(self.binary, "testdata");
        let log = dir.join("testdata.log");
        let mut command = Command::new(&binary);
        if self.log {
            command.arg("--log").arg(&log);
        }
        command
            .current_dir(dir.path())
            .args(&self.args)
            .env_remove("TESTDATA_FAULT")
            .env_remove("MITOSIS_SECRET")
            .env_remove("MITOSIS_FD_SOCKET")
            .env_remove("MITOSIS_TIMEOUT_MS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        only_stdio_inherited(&mut command);
        let mut child = spawn_retrying(&mut command);
        let pids = Pids::default();
        pids.add(child.id());
        let stdout: ChildStdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Run {
            first_pid: child.id(),
            child,
            stdout: Lines::spawn("stdout", stdout, pids.clone()),
            stderr: Lines::spawn("stderr", stderr, pids.clone()),
            pids,
            binary,
            log,
            port: 0,
            dir,
        }
    }

    /// Starts testdata, waits for `listening port=..`, and connects the peer.
    pub fn start(self) -> (Run, Peer) {
        let mut run = self.spawn();
        let listening = run.stdout.expect("listening ");
        run.port = field(&listening, "port")
            .parse()
            .unwrap_or_else(|_| panic!("no port in {listening:?}"));
        assert_eq!(
            field(&listening, "pid"),
            run.first_pid.to_string(),
            "the first generation reports its own pid: {listening:?}"
        );
        let peer = Peer::connect(run.port, run.pids.clone());
        (run, peer)
    }
}

/// Makes the process start with only fds 0, 1 and 2, whatever this test
/// process inherited without close-on-exec from its own environment (a
/// jobserver pipe, a sandbox's fds), so that the fd tests see exactly what
/// testdata and mitosis open.
fn only_stdio_inherited(command: &mut Command) {
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    // SAFETY: the closure runs between fork and exec; it only makes fcntl
    // system calls on a list prepared in advance, without allocating.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
            }
            Ok(())
        });
    }
}

/// Spawns, retrying while exec fails with ETXTBSY (a concurrent fork in
/// another test thread may briefly hold a write fd to a fresh copy).
fn spawn_retrying(command: &mut Command) -> Child {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Ok(child) => return child,
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                attempts += 1;
                std::thread::yield_now();
            }
            Err(e) => panic!("spawn {command:?}: {e}"),
        }
    }
}

impl Run {
    /// Waits for the first generation to exit, at most [`TIMEOUT`].
    pub fn wait_first(&mut self) -> ExitStatus {
        wait_pid_exit(self.first_pid, TIMEOUT).unwrap_or_else(|| {
            panic!(
                "the first generation (pid {}) did not exit within {TIMEOUT:?}",
                self.first_pid
            )
        });
        self.child.wait().expect("wait for the first generation")
    }

    /// The fake-binary path for `split binary=<path>`: `binary` installed in
    /// this run's directory under `name`.
    pub fn install(&self, binary: &str, name: &str) -> PathBuf {
        self.dir.install(binary, name)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Every generation after the first has been reparented away from
        // this process, so kill them by pid; but only processes that run a
        // binary from this run's directory, in case a pid was reused.
        let dir = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        for pid in self.pids.all() {
            if pid == self.first_pid {
                continue;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.windows(dir.len()).any(|window| window == dir) {
                if let Some(pid) = Pid::from_raw(pid as i32) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A process killed with a split in flight cannot remove its fd
        // channel directory.
        for pid in self.pids.all() {
            for dir in fd_channel_dirs(pid) {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

/// The fd channel directories (`mitosis-<pid>-<random>`) that the process
/// `pid` has in the runtime or temp dir, as mitosis names them.
pub fn fd_channel_dirs(pid: u32) -> Vec<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let prefix = format!("mitosis-{pid}-");
    fs::read_dir(&base)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for any process (not only a child) to exit, with a pidfd. Returns
/// `None` on timeout, `Some(())` once it has exited (or if it was gone
/// already).
pub fn wait_pid_exit(pid: u32, timeout: Duration) -> Option<()> {
    let pid = Pid::from_raw(pid as i32).expect("a positive pid");
    let pidfd: OwnedFd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Some(()),
        Err(e) => panic!("pidfd_open({pid:?}): {e}"),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&timespec(left))) {
            Ok(_) if !fds[0].revents().is_empty() => return Some(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll on a pidfd: {e}"),
        }
    }
}

pub fn timespec(duration: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: duration.as_secs() as i64,
        tv_nsec: duration.subsec_nanos().into(),
    }
}

/// Whether `pid` is gone: no /proc entry, or a different process by now
/// (not a child of `parent`).
pub fn is_gone(pid: u32, parent: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // pid (comm) state ppid ...; comm may hold spaces, so split
            // after the last ')'.
            let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            let ppid: u32 = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            ppid != parent
        }
    }
}

/// Checks that `line`, the answer to a split command, is a `split failed`
/// line, and that the child that failed was reaped before the state came
/// back and left no fd channel directory behind. Returns the child's pid.
pub fn failed_and_reaped(run: &mut Run, line: &str) -> u32 {
    assert!(
        line.starts_with("split failed: "),
        "expected a failed split, got {line:?}"
    );
    let splitting = run.stdout.expect("splitting child=");
    let child: u32 = field(&splitting, "child").parse().unwrap();
    assert_eq!(
        field(line, "children"),
        "none",
        "the failed child was reaped before the state came back: {line:?}"
    );
    assert!(
        is_gone(child, run.first_pid),
        "the failed child {child} still exists as a child of {}: {line:?}",
        run.first_pid
    );
    assert_eq!(
        fd_channel_dirs(run.first_pid),
        Vec::<PathBuf>::new(),
        "the fd channel's directory is removed after the failure"
    );
    child
}

// ---------------------------------------------------------------------------
// The peer (control) connection

/// The control connection: one command line out, one answer line back.
pub struct Peer {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    pids: Pids,
}

impl Peer {
    pub fn connect(port: u16, pids: Pids) -> Peer {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect the peer to port {port}: {e}"));
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("set a read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone the peer stream"));
        Peer {
            stream,
            reader,
            pids,
        }
    }

    /// Writes `text` as is (no newline added), in one write.
    pub fn send(&mut self, text: &str) {
        self.stream
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("send {text:?} to the peer: {e}"));
    }

    /// Reads one line, without its newline; panics on EOF or timeout.
    pub fn line(&mut self) -> String {
        match self.try_line() {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the peer connection closed while a line was expected"),
            Err(e) => panic!("no line from the peer within {TIMEOUT:?}: {e}"),
        }
    }

    /// Reads one line; `Ok(None)` at EOF.
    pub fn try_line(&mut self) -> io::Result<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("a partial line {line:?} before EOF"),
            ));
        }
        line.pop();
        eprintln!("[peer] {line}");
        self.pids.scan(&line);
        Ok(Some(line))
    }

    /// Sends a command line and returns the answer line.
    pub fn command(&mut self, command: &str) -> String {
        eprintln!("[peer] > {command}");
        self.send(&format!("{command}\n"));
        self.line()
    }
}

/// Asks for `status` and checks that the answer is a status line.
pub fn status(peer: &mut Peer) -> String {
    let status = peer.command("status");
    assert!(
        status.starts_with("status pid="),
        "expected a status line, got {status:?}"
    );
    status
}

// ---------------------------------------------------------------------------
// Parsing

/// The value of `key=value` among the words of `line`.
pub fn field<'l>(line: &'l str, key: &str) -> &'l str {
    try_field(line, key).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

pub fn try_field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The `fd:target` entries of a `fds ...` answer or of the `fds=...` tail
/// of a `done` line.
pub fn parse_fds(list: &str) -> Vec<(u32, String)> {
    list.split_whitespace()
        .map(|entry| {
            let (fd, target) = entry
                .split_once(':')
                .unwrap_or_else(|| panic!("not fd:target: {entry:?} in {list:?}"));
            (
                fd.parse().unwrap_or_else(|_| panic!("bad fd in {entry:?}")),
                target.to_owned(),
            )
        })
        .collect()
}

/// The targets of the fds above 2.
/// A new generation's non-stdio fds, without the one read-only handle to
/// the previous build's executable (installed as `<dir>/testdata`) that
/// every generation started by an upgrade keeps; fails unless there is
/// exactly one.
pub fn non_stdio_but_previous_build(fds: &[(u32, String)]) -> Vec<String> {
    let (handles, others): (Vec<String>, Vec<String>) = non_stdio(fds)
        .into_iter()
        .partition(|target| target.ends_with("/testdata"));
    assert_eq!(
        handles.len(),
        1,
        "one handle to the previous build, no more: {fds:?}"
    );
    others
}

pub fn non_stdio(fds: &[(u32, String)]) -> Vec<String> {
    let mut targets: Vec<String> = fds
        .iter()
        .filter(|(fd, _)| *fd > 2)
        .map(|(_, target)| target.clone())
        .collect();
    targets.sort();
    targets
}

/// The targets of fds 0, 1 and 2.
pub fn stdio(fds: &[(u32, String)]) -> Vec<String> {
    fds.iter()
        .filter(|(fd, _)| *fd <= 2)
        .map(|(_, target)| target.clone())
        .collect()
}

/// A TCP socket's inode from /proc/net/tcp: the first entry in `state`
/// (hex, `0A` = LISTEN, `01` = ESTABLISHED) whose local port is `local`
/// and, if given, whose remote port is `remote`.
pub fn tcp_inode(state: &str, local: u16, remote: Option<u16>) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let port = |address: &str| {
            address
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
        };
        let matches = cols.get(3) == Some(&state)
            && port(cols.get(1)?) == Some(local)
            && remote
                .is_none_or(|remote| cols.get(2).and_then(|address| port(address)) == Some(remote));
        matches.then(|| cols.get(9)?.parse().ok()).flatten()
    })
}

/// The `--mitosis=<port>` port on a process's command line, which any local
/// user can read from /proc.
///
/// Right after `spawn` returns, the command line can still read as empty:
/// the kernel lets the parent go (and closes close-on-exec fds) when the
/// new program's memory is installed, a moment before the arguments are
/// set up in it. So this polls until the command line appears.
pub fn mitosis_port_of(pid: u32) -> u16 {
    let deadline = Instant::now() + TIMEOUT;
    let cmdline = loop {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/cmdline: {e}"));
        if !cmdline.is_empty() {
            break cmdline;
        }
        assert!(
            Instant::now() < deadline,
            "the command line of pid {pid} stayed empty for {TIMEOUT:?}"
        );
        std::thread::yield_now();
    };
    cmdline
        .split(|&b| b == 0)
        .find_map(|arg| {
            // --mitosis=PORT:SIGNALS:PATH
            std::str::from_utf8(arg)
                .ok()?
                .strip_prefix("--mitosis=")?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no --mitosis=<port> in the command line of pid {pid}: {:?}",
                String::from_utf8_lossy(&cmdline)
            )
        })
}

// ---------------------------------------------------------------------------
// Strangers during a handover

/// Starts a split whose child blocks before init on a fifo, and returns
/// the child's pid and the fifo's path.
pub fn split_held_at_fifo(run: &mut Run, peer: &mut Peer) -> (u32, PathBuf) {
    split_held_at(run, peer, "release.fifo")
}

/// The same, with a fifo of that name: one for each of several splits.
pub fn split_held_at(run: &mut Run, peer: &mut Peer, name: &str) -> (u32, PathBuf) {
    let fifo = run.dir.join(name);
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    peer.send(&format!("split fifo={}\n", fifo.display()));
    let splitting = run.stdout.expect("splitting child=");
    (field(&splitting, "child").parse().unwrap(), fifo)
}

/// Releases the child held at the fifo. Opening a fifo read-write never
/// blocks on Linux, and counts as a writer, which unblocks the reader.
pub fn release(fifo: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .expect("open the fifo")
}

/// Reads `conn` to its end and asserts that not one byte arrived; returns
/// how the connection ended.
pub fn assert_learns_nothing(conn: &mut TcpStream, who: &str) -> &'static str {
    let (answer, end) = read_to_end(conn, who);
    assert!(
        answer.is_empty(),
        "{who} got {} bytes: {answer:?}",
        answer.len()
    );
    end
}

/// Lets the new process held at `fifo` go on, and expects it to take over
/// as generation 2; returns its `ready` line.
pub fn release_and_expect_takeover(fifo: &Path, peer: &mut Peer) -> String {
    let _writer = release(fifo);
    let ready = peer.line();
    assert!(
        ready.starts_with("ready "),
        "the handover succeeds: {ready:?}"
    );
    assert_eq!(field(&ready, "generation"), "2", "{ready:?}");
    ready
}

// ---------------------------------------------------------------------------
// Fake old processes

/// Accepts one connection on `listener`, waiting at most [`TIMEOUT`].
pub fn accept_timeout(listener: &TcpListener) -> TcpStream {
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let ready = loop {
        match poll(&mut fds, Some(&timespec(TIMEOUT))) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.expect("poll the listener"),
        }
    };
    assert!(
        ready > 0,
        "nobody connected to the fake old process within {TIMEOUT:?}"
    );
    let (stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("set a write timeout");
    stream
}

/// 64 random bytes.
pub fn random_secret() -> [u8; 64] {
    let mut secret = [0u8; 64];
    let mut filled = 0;
    while filled < secret.len() {
        filled +=
            rustix::rand::getrandom(&mut secret[filled..], rustix::rand::GetRandomFlags::empty())
                .expect("getrandom");
    }
    secret
}

/// Reads from `stream` until EOF or [`TIMEOUT`]; returns the bytes and how
/// the stream ended (`"eof"`, `"reset"`, or panics on timeout).
pub fn read_to_end(stream: &mut TcpStream, who: &str) -> (Vec<u8>, &'static str) {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a read timeout");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (bytes, "eof"),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (bytes, "reset"),
            Err(e) => panic!(
                "{who}: no EOF within {TIMEOUT:?} ({e}); received {} bytes: {:?}",
                bytes.len(),
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

/// Sends `command` (a split, plus `rest` in the same write) and returns the
/// new generation's `ready` line, after checking its generation, that the
/// old process reported the same pid as its child and as done, and that the
/// old process's fd channel directory is gone.
pub fn split_to_ready(
    run: &mut Run,
    peer: &mut Peer,
    command: &str,
    rest: &str,
    generation: u32,
) -> String {
    eprintln!("[peer] > {command} (+{rest:?})");
    peer.send(&format!("{command}\n{rest}"));
    let ready = peer.line();
    assert!(
        ready.starts_with("ready pid="),
        "expected a ready line, got {ready:?}"
    );
    assert_eq!(
        field(&ready, "generation"),
        generation.to_string(),
        "the new generation's number: {ready:?}"
    );
    let pid = field(&ready, "pid");
    let splitting = run.stdout.expect("splitting child=");
    assert_eq!(
        field(&splitting, "child"),
        pid,
        "Split::pid() names the process that took over"
    );
    let done = run.stdout.expect(&format!("done pid={pid} "));
    assert!(done.contains(" fds="), "{done:?}");
    // The old process has reported Done; its fd channel directory is gone.
    let old = run.pids.all();
    for old in old.iter().filter(|old| old.to_string() != pid) {
        assert_eq!(
            fd_channel_dirs(*old),
            Vec::<std::path::PathBuf>::new(),
            "the fd channel's directory of pid {old} is removed after the handover"
        );
    }
    ready
}

// ---------------------------------------------------------------------------
// testdata-buffered (tests/buffers.rs)

pub const TESTDATA_BUFFERED: &str = env!("CARGO_BIN_EXE_testdata-buffered");

/// `setpriv`'s path, if this process is root and has it. Otherwise the
/// test is skipped, with the reason printed, except with `CI=true`, where
/// it must run.
pub fn setpriv_as_root() -> Option<PathBuf> {
    let setpriv = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("setpriv"))
            .find(|candidate| {
                fs::metadata(candidate).is_ok_and(|meta| {
                    meta.is_file() && std::os::unix::fs::MetadataExt::mode(&meta) & 0o111 != 0
                })
            })
    });
    let reason = if !rustix::process::geteuid().is_root() {
        "this test process is not root, so it cannot run fd-thief as another user"
    } else if setpriv.is_none() {
        "setpriv (util-linux) is not on PATH"
    } else {
        return setpriv;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, so this test must run, but {reason}");
    }
    eprintln!("skipped: {reason} (with CI=true this is a failure)");
    None
}
