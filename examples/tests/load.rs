//! `loadgen` against `echo-server`: 64 clients keep the server busy, on
//! persistent connections and on a new connection for every tenth request,
//! while it upgrades itself 20 times back to back. Not one connection,
//! request or reply may be lost, and every generation must be a new process
//! that replaces the one before it.

mod env_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use env_support::children_of;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// How long any one expected event may take before the test fails. Generous:
/// it only matters when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

const UPGRADES: u64 = 20;
const CLIENTS: u64 = 64;

#[test]
fn twenty_upgrades_under_64_clients_lose_nothing() {
    let mut server = Server::start();
    let mut loadgen = Command::new(LOADGEN)
        .args(["--server", &format!("127.0.0.1:{}", server.port)])
        .args(["--clients", &CLIENTS.to_string()])
        .args(["--reconnect-every", "10"])
        .args(["--upgrades", &UPGRADES.to_string()])
        .args(["--timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("start loadgen");
    let stdout = lines_of(loadgen.0.stdout.take().unwrap());
    let stderr = collect(loadgen.0.stderr.take().unwrap());

    // Every upgrade line names the process that took over; the test takes
    // charge of it at once, so that it can tell when it exits and kill it
    // at the end.
    let mut pids = vec![server.first_pid()];
    let mut output = Vec::new();
    let started = Instant::now();
    while let Some(line) = next_line(&stdout, started) {
        output.push(line.clone());
        let Some(upgrade) = Upgrade::parse(&line) else {
            continue;
        };
        server.adopt(upgrade.new_pid);
        let old = *pids.last().unwrap();
        assert_eq!(
            (upgrade.old_pid, upgrade.generation),
            (old, pids.len() as u64 + 1),
            "{line:?} does not follow pids {pids:?}"
        );
        assert!(
            !pids.contains(&upgrade.new_pid),
            "{line:?} reuses one of {pids:?}"
        );
        pids.push(upgrade.new_pid);
    }
    let status = loadgen.0.wait().expect("wait for loadgen");
    let stderr = stderr.join().expect("loadgen's stderr");
    let output = output.join("\n");
    let context = format!("loadgen's output:\n{output}\nits stderr:\n{stderr}");

    let result = parse_result(&output).unwrap_or_else(|| panic!("no result line; {context}"));
    let failures = env_support::loadgen_failures(&result, &["upgrades_failed"]);
    assert_eq!(
        failures,
        format!("{} upgrades_failed=0", env_support::LOADGEN_CLEAN),
        "{context}"
    );
    assert_eq!(result["upgrades_done"], UPGRADES, "{context}");
    assert!(status.success(), "loadgen exited with {status}; {context}");
    assert_eq!(result["answered"], result["requests"], "{context}");
    // The load really overlapped the upgrades, and went over both kinds of
    // connection.
    assert!(result["upgrade_requests"] > 0, "{context}");
    assert!(result["fresh_connections"] > 0, "{context}");
    // Every handover carried a request whose end came after it, and
    // replies the server could not write before it.
    assert_eq!(result["held_partial"], UPGRADES, "{context}");
    assert!(result["held_backlog"] > 0, "{context}");

    assert_eq!(
        pids.len() as u64,
        UPGRADES + 1,
        "generations {pids:?}; {context}"
    );
    let (last, old) = pids.split_last().unwrap();
    for &pid in old {
        server.expect_gone(pid);
    }
    // The last generation still serves, on the same port.
    let mut client = TcpStream::connect(("127.0.0.1", server.port)).expect("connect at the end");
    client
        .set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    client.write_all(b"last 1\n").expect("send a request");
    let mut reply = String::new();
    BufReader::new(&client)
        .read_line(&mut reply)
        .expect("read the reply");
    assert_eq!(reply, "last 1\n");
    server.kill(*last);

    let summary: Vec<&str> = output
        .lines()
        .filter(|line| !line.starts_with("upgrade "))
        .collect();
    eprintln!("{}", summary.join("\n"));
}

/// The build on disk is broken in each of three ways (it crashes at start,
/// hangs at start, or hangs after receiving the state without committing),
/// and a deploy script puts it in place while the server runs: every
/// upgrade is refused, the server keeps its pid and its state, and not one
/// of 64 clients sees a failure, a lost reply or a reset.
#[test]
fn broken_builds_are_refused_while_64_clients_notice_nothing() {
    const ATTEMPTS: u64 = 2;
    let dir = scratch_dir("bad-builds");
    for build in ["crash", "hang-at-start", "hang-after-receive"] {
        let binary = dir.join(format!("echo-server-{build}"));
        env_support::install(&binary, Path::new(ECHO_SERVER));
        let mut server = Server::start_from(&binary, &["--start-timeout-ms", "1000"]);
        install_broken_build(&binary, build, &dir);
        let output = Command::new(LOADGEN)
            .args(["--server", &format!("127.0.0.1:{}", server.port)])
            .args(["--clients", &CLIENTS.to_string()])
            .args(["--reconnect-every", "10"])
            .args(["--upgrades", &ATTEMPTS.to_string()])
            .args(["--timeout", "20s", "--bad-build"])
            .output()
            .expect("run loadgen");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let context = format!(
            "{build}: loadgen's output:\n{stdout}\nits stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result = parse_result(&stdout).unwrap_or_else(|| panic!("no result line; {context}"));
        assert_eq!(result["failures"], 0, "{context}");
        assert_eq!(result["upgrades_refused"], ATTEMPTS, "{context}");
        assert_eq!(result["upgrades_done"], 0, "{context}");
        assert_eq!(result["answered"], result["requests"], "{context}");
        assert!(result["upgrade_requests"] > 0, "{context}");
        assert!(output.status.success(), "{context}");
        // The reasons blame the build, each in its own step.
        let expected = match build {
            "crash" => "the new process exited (exit status: 1)",
            "hang-at-start" => "start timeout",
            _ => "transfer timeout",
        };
        let refusals: Vec<&str> = stdout
            .lines()
            .filter(|line| line.starts_with("upgrade-refused "))
            .collect();
        assert!(
            refusals.len() as u64 == ATTEMPTS
                && refusals.iter().all(|line| line.contains(expected)),
            "{expected}: {refusals:#?}"
        );
        // The first process still serves, and nothing it started is left.
        assert_eq!(server.running.len(), 1, "{context}");
        let mut client =
            TcpStream::connect(("127.0.0.1", server.port)).expect("connect at the end");
        client.set_read_timeout(Some(PATIENCE)).unwrap();
        client.write_all(b"still 1\n").expect("send a request");
        let mut reply = String::new();
        BufReader::new(&client).read_line(&mut reply).unwrap();
        assert_eq!(reply, "still 1\n", "{build}");
        let pid = server.first_pid();
        assert_eq!(
            children_of(pid),
            Vec::<u32>::new(),
            "{build}: children left"
        );
        server.kill(pid);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Replaces `binary` with a broken build, as a deploy does: written
/// beside it, then renamed over it.
fn install_broken_build(binary: &Path, build: &str, dir: &Path) {
    let real = dir.join("echo-server-real");
    if !real.exists() {
        env_support::install(&real, Path::new(ECHO_SERVER));
    }
    let script = match build {
        "crash" => "#!/bin/sh\nexit 1\n".to_owned(),
        "hang-at-start" => "#!/bin/sh\nexec sleep 3600\n".to_owned(),
        _ => format!(
            "#!/bin/sh\nexec '{}' \"$@\" --hang-after-receive\n",
            real.display()
        ),
    };
    env_support::install_script(binary, &script);
}

/// A fresh directory of this test's own.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mitosis-load-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// One `upgrade` line of loadgen.
#[derive(Debug)]
struct Upgrade {
    old_pid: u32,
    new_pid: u32,
    generation: u64,
}

impl Upgrade {
    fn parse(line: &str) -> Option<Upgrade> {
        let fields = key_values(line.strip_prefix("upgrade ")?);
        Some(Upgrade {
            old_pid: fields.get("old_pid")?.parse().ok()?,
            new_pid: fields.get("new_pid")?.parse().ok()?,
            generation: fields.get("generation")?.parse().ok()?,
        })
    }
}

fn key_values(text: &str) -> BTreeMap<&str, &str> {
    text.split(' ')
        .filter_map(|word| word.split_once('='))
        .collect()
}

/// loadgen's last line, `result key=value ...`, as numbers.
fn parse_result(output: &str) -> Option<BTreeMap<String, u64>> {
    let line = output
        .lines()
        .rev()
        .find(|line| line.starts_with("result "))?;
    key_values(line.strip_prefix("result ")?)
        .into_iter()
        .map(|(key, value)| Some((key.to_owned(), value.parse().ok()?)))
        .collect()
}

/// The server: the first generation, started by the test, and the pidfds of
/// the generations that may still run.
struct Server {
    first: Child,
    port: u16,
    running: Vec<(u32, OwnedFd)>,
}

impl Server {
    fn start() -> Server {
        Server::start_from(Path::new(ECHO_SERVER), &[])
    }

    fn start_from(binary: &Path, args: &[&str]) -> Server {
        let mut first = Command::new(binary)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start echo-server");
        let pid = first.id();
        let stdout = lines_of(first.stdout.take().unwrap());
        // The server's log, shown if the test fails. Every generation
        // inherits the pipe, so this ends when the last one does.
        let log = BufReader::new(first.stderr.take().unwrap());
        thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        let mut server = Server {
            running: vec![(pid, open_pidfd(pid).expect("the first generation runs"))],
            first,
            port: 0,
        };
        let line = next_line(&stdout, Instant::now()).expect("echo-server's first line");
        server.port = line
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("echo-server said {line:?}, not `listening <port>`"));
        server
    }

    fn first_pid(&self) -> u32 {
        self.first.id()
    }

    /// Takes charge of a new generation. It may be gone already, if the
    /// upgrade after it was quicker than this test.
    fn adopt(&mut self, pid: u32) {
        if let Some(pidfd) = open_pidfd(pid) {
            self.running.push((pid, pidfd));
        }
    }

    /// Checks that generation `pid` has exited, and quietly (status 0) if it
    /// was the test's child.
    fn expect_gone(&mut self, pid: u32) {
        if let Some(index) = self.running.iter().position(|(p, _)| *p == pid) {
            let (_, pidfd) = self.running.remove(index);
            assert!(
                wait_for_exit(&pidfd),
                "pid {pid} still runs {PATIENCE:?} after its upgrade"
            );
        }
        if pid == self.first.id() {
            let status = self.first.wait().expect("wait for the first generation");
            assert!(
                status.success(),
                "the first generation exited with {status}"
            );
        }
    }

    /// Kills the last generation, which is not the test's child, and checks
    /// that it is gone.
    fn kill(&mut self, pid: u32) {
        let index = self
            .running
            .iter()
            .position(|(p, _)| *p == pid)
            .unwrap_or_else(|| panic!("the last generation, pid {pid}, was gone before the end"));
        let (_, pidfd) = self.running.remove(index);
        pidfd_send_signal(&pidfd, Signal::KILL).expect("kill the last generation");
        assert!(
            wait_for_exit(&pidfd),
            "pid {pid} still runs {PATIENCE:?} after SIGKILL"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for (_, pidfd) in &self.running {
            pidfd_send_signal(pidfd, Signal::KILL).ok();
        }
        self.first.wait().ok();
    }
}

/// A child that is killed if the test fails before waiting for it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// A pidfd for `pid`, or `None` if it has exited and been reaped.
fn open_pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).expect("a positive pid");
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => Some(pidfd),
        Err(Errno::SRCH) => None,
        Err(error) => panic!("pidfd_open({pid:?}): {error}"),
    }
}

/// Waits up to [`PATIENCE`] for the process to exit.
fn wait_for_exit(pidfd: &OwnedFd) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(ready) => return ready == 1,
            Err(Errno::INTR) => {}
            Err(error) => panic!("poll a pidfd: {error}"),
        }
    }
}

/// The lines of a child's stdout, as they come.
fn lines_of(stdout: ChildStdout) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The next line, or `None` at the end; a wait longer than [`PATIENCE`]
/// since `started` fails the test.
fn next_line(lines: &Receiver<String>, started: Instant) -> Option<String> {
    let left = PATIENCE.saturating_sub(started.elapsed());
    match lines.recv_timeout(left) {
        Ok(line) => Some(line),
        Err(mpsc::RecvTimeoutError::Disconnected) => None,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no end after {PATIENCE:?}"),
    }
}

/// Everything a child writes to a pipe, once it closes it.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).ok();
        text
    })
}
