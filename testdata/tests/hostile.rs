//! Hostile local processes during a real handover: a stranger on the
//! handover port that speaks a protocol version nobody offered, and
//! `fd-thief` on the old process's fd channel, as the same user and as
//! another one. None of them may learn a byte or get an fd, and the real
//! new process must take over with them present.

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use testdata::wire;

/// How long the thief waits for fds. Longer than [`TIMEOUT`], the longest
/// the test waits for its answer, so an answer means that the connection
/// ended, not the thief's patience.
const THIEF_PATIENCE: Duration = Duration::from_secs(60);

/// What the first generation holds before the split, to compare with what
/// the new one holds after it.
struct Before {
    status: String,
    fds: Vec<(u32, String)>,
}

impl Before {
    fn take(peer: &mut Peer) -> Before {
        let status = status(peer);
        let answer = peer.command("fds");
        let fds = parse_fds(answer.strip_prefix("fds ").expect("a fds answer"));
        Before { status, fds }
    }
}

/// Checks, after `ready`, that `child` took over everything: the old
/// process reported Done for it and removed its fd channel, and the new
/// process holds the same fds (same targets, so the same sockets), the same
/// blob and spare fds, and answers.
fn assert_took_over(run: &mut Run, peer: &mut Peer, child: u32, ready: &str, before: &Before) {
    assert_eq!(
        field(ready, "pid"),
        child.to_string(),
        "the child that was held at the fifo took over: {ready:?}"
    );
    run.stdout.expect(&format!("done pid={child} "));
    assert_eq!(
        fd_channel_dirs(run.first_pid),
        Vec::<PathBuf>::new(),
        "the old process removed its fd channel after the handover"
    );

    let answer = peer.command("fds");
    let after = parse_fds(answer.strip_prefix("fds ").expect("a fds answer"));
    assert_eq!(
        stdio(&after),
        stdio(&before.fds),
        "the same stdio: {answer:?}"
    );
    assert_eq!(
        non_stdio(&after),
        non_stdio(&before.fds),
        "the new process holds exactly the state's fds (the same sockets and files): {answer:?}"
    );

    let now = status(peer);
    assert_eq!(field(&now, "pid"), child.to_string(), "{now:?}");
    assert_eq!(field(&now, "generation"), "2", "{now:?}");
    for key in ["blob", "spare", "label"] {
        assert_eq!(
            field(&now, key),
            field(&before.status, key),
            "{key} survived the handover: {now:?} vs {:?}",
            before.status
        );
    }
    assert_eq!(peer.command("ping after"), "pong after");
}

#[test]
fn wrong_protocol_version_hello_learns_nothing() {
    let (mut run, mut peer) = Spawn::new("wrong-version").start();
    let before = Before::take(&mut peer);
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let port = mitosis_port_of(child);

    // A HELLO that looks right (the magic, the right length) but offers
    // versions 7..=9, which the old process does not speak, with a guessed
    // token. A WELCOME, even one choosing version 0, would carry the old
    // process's token.
    let hello = wire::hello(7, 9, &random_secret());
    assert_eq!(&hello[..8], &wire::MAGIC);
    assert_eq!((wire::u16_at(&hello, 8), wire::u16_at(&hello, 10)), (7, 9));
    let mut stranger =
        TcpStream::connect(("127.0.0.1", port)).expect("the stranger connects to the port");
    stranger.write_all(&hello).expect("send the HELLO");
    let end = assert_learns_nothing(&mut stranger, "the version 7..=9 stranger");
    eprintln!("the version 7..=9 stranger's connection ended by {end}, before the child connected");

    let released = Instant::now();
    let ready = release_and_expect_takeover(&fifo, &mut peer);
    eprintln!(
        "handover completed {:?} after the release, after the version 7..=9 HELLO was refused",
        released.elapsed()
    );
    assert_took_over(&mut run, &mut peer, child, &ready, &before);
}

#[test]
fn fd_channel_refuses_another_process_of_the_same_user() {
    // 300 spare fds: two batches on the fd channel.
    let (mut run, mut peer) = Spawn::new("thief-same-user")
        .args(&["--spare-fds", "300", "--blob-size", "100003"])
        .start();
    let before = Before::take(&mut peer);
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let socket = fd_channel_socket(run.first_pid);

    // The thief connects before the real child: the old process accepts
    // it, sees another pid (SO_PEERCRED), and closes it without sending
    // KEY.
    let mut thief = Thief::start(Command::new(FD_THIEF), &socket);
    thief.stderr.expect("fd-thief: connected to ");

    let released = Instant::now();
    let ready = release_and_expect_takeover(&fifo, &mut peer);
    eprintln!(
        "handover completed {:?} after the release, with a same-user thief queued on the fd \
         channel",
        released.elapsed()
    );

    let (line, stderr) = thief.finish();
    assert_eq!(
        line, "received 0 fds, 0 bytes",
        "the thief gets nothing; its stderr: {stderr:?}"
    );
    assert_eq!(
        stderr,
        ["fd-thief: ended by eof"],
        "the old process accepted the thief's connection and closed it (SO_PEERCRED names \
         another pid), before the thief's own patience ran out"
    );
    assert_took_over(&mut run, &mut peer, child, &ready, &before);
}

#[test]
fn fd_channel_refuses_another_user() {
    let Some(setpriv) = setpriv_as_root() else {
        return;
    };
    let (mut run, mut peer) = Spawn::new("thief-other-user")
        .args(&["--spare-fds", "300", "--blob-size", "100003"])
        .start();
    let before = Before::take(&mut peer);
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let socket = fd_channel_socket(run.first_pid);

    // nobody must be able to run the thief, wherever the build directory
    // is: a copy (or hard link) in a directory anyone can enter.
    let tools = TempDir::new("thief-tools");
    fs::set_permissions(tools.path(), fs::Permissions::from_mode(0o755))
        .expect("make the tools directory world-readable");
    let binary = tools.install(FD_THIEF, "fd-thief");
    let mode = fs::metadata(&binary).expect("stat fd-thief").mode();
    assert_eq!(
        mode & 0o005,
        0o005,
        "other users can run {} (mode {mode:o})",
        binary.display()
    );

    let mut command = Command::new(setpriv);
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary);
    let thief = Thief::start(command, &socket);
    // The connect fails at once, while the child is still held.
    let (line, stderr) = thief.finish();
    assert_eq!(
        line, "connect failed: EACCES: Permission denied (os error 13)",
        "user nobody cannot reach a socket in a 0700 directory; the thief's stderr: {stderr:?}"
    );
    assert_eq!(
        stderr,
        Vec::<String>::new(),
        "the thief never connected, and setpriv had nothing to say"
    );

    let released = Instant::now();
    let ready = release_and_expect_takeover(&fifo, &mut peer);
    eprintln!(
        "handover completed {:?} after the release, after user nobody failed to connect to the \
         fd channel",
        released.elapsed()
    );
    assert_took_over(&mut run, &mut peer, child, &ready, &before);
}

/// The old process's fd channel socket, after checking what protects it: a
/// single `mitosis-<pid>-<hex>` directory, owned by this user, mode 0700,
/// holding the socket `fd.sock`.
fn fd_channel_socket(old: u32) -> PathBuf {
    let dirs = fd_channel_dirs(old);
    assert_eq!(
        dirs.len(),
        1,
        "one fd channel directory for the old process {old}: {dirs:?}"
    );
    let dir = &dirs[0];
    let meta = fs::metadata(dir).unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()));
    assert_eq!(
        meta.mode() & 0o7777,
        0o700,
        "the fd channel directory {} is private",
        dir.display()
    );
    assert_eq!(
        meta.uid(),
        rustix::process::geteuid().as_raw(),
        "the fd channel directory {} belongs to the old process's user",
        dir.display()
    );
    let socket = dir.join("fd.sock");
    let kind = fs::symlink_metadata(&socket)
        .unwrap_or_else(|e| panic!("stat {}: {e}", socket.display()))
        .file_type();
    assert!(kind.is_socket(), "{} is a socket", socket.display());
    socket
}

/// A running `fd-thief`, killed on drop if it is still running.
struct Thief {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Thief {
    /// Starts `command` (fd-thief, or a wrapper that runs it) with the
    /// socket path and [`THIEF_PATIENCE`] as its last arguments.
    fn start(mut command: Command, socket: &Path) -> Thief {
        command
            .arg(socket)
            .arg(THIEF_PATIENCE.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Thief {
            child,
            stdout: Lines::spawn("fd-thief stdout", stdout, Pids::default()),
            stderr: Lines::spawn("fd-thief stderr", stderr, Pids::default()),
        }
    }

    /// Waits for the thief to exit, checks that it exited 0 and printed
    /// exactly one line, and returns that line and the stderr lines not
    /// taken yet.
    fn finish(mut self) -> (String, Vec<String>) {
        let stdout = self.stdout.wait_eof();
        let stderr = self.stderr.wait_eof();
        assert!(
            wait_pid_exit(self.child.id(), TIMEOUT).is_some(),
            "fd-thief still runs {TIMEOUT:?} after closing its output"
        );
        let status = self.child.wait().expect("reap fd-thief");
        assert!(
            status.success(),
            "fd-thief exits 0: {status}; stdout {stdout:?}, stderr {stderr:?}"
        );
        match <[String; 1]>::try_from(stdout) {
            Ok([line]) => (line, stderr),
            Err(stdout) => {
                panic!("fd-thief prints exactly one line, not {stdout:?}; its stderr: {stderr:?}")
            }
        }
    }
}

impl Drop for Thief {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `setpriv`'s path, if this process is root and has it. Otherwise the
/// test is skipped, with the reason printed, except with `CI=true`, where
/// it must run.
fn setpriv_as_root() -> Option<PathBuf> {
    let setpriv = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("setpriv"))
            .find(|candidate| {
                fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
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

// ---------------------------------------------------------------------------
// Floods of the handover port

const FLOODER: &str = env!("CARGO_BIN_EXE_flooder");

/// How many upgrades each flood test runs.
const FLOODED_UPGRADES: u32 = 20;

/// How long each upgrade's flood lasts: from before the held child is let
/// go until well after a handover on this machine completes.
const FLOOD_FOR: Duration = Duration::from_millis(400);

/// Splits `FLOODED_UPGRADES` times in a row, each time holding the new
/// process before `init` (a slow start), flooding its handover port with
/// `flood(port)`, and then letting it go: every upgrade must succeed, the
/// new generation serving with the state intact.
fn upgrades_under_a_flood(name: &str, flood: impl Fn(u16) -> Box<dyn FnOnce() -> u64>) {
    let (mut run, mut peer) = Spawn::new(name)
        .args(&["--blob-size", "100003", "--spare-fds", "10"])
        .start();
    let before = status(&mut peer);
    let mut flooded = 0;
    for upgrade in 1..=FLOODED_UPGRADES {
        let fifo = run.dir.join(&format!("release-{upgrade}.fifo"));
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .expect("mkfifo");
        peer.send(&format!("split fifo={}\n", fifo.display()));
        let splitting = run.stdout.expect("splitting child=");
        let child: u32 = field(&splitting, "child").parse().unwrap();
        // What any local user can do: read the port from the command line.
        let finish = flood(mitosis_port_of(child));
        let started = Instant::now();
        let ready = {
            let _writer = release(&fifo);
            peer.line()
        };
        let took = started.elapsed();
        flooded += finish();
        assert!(
            ready.starts_with("ready ") && field(&ready, "pid") == child.to_string(),
            "upgrade {upgrade} of {FLOODED_UPGRADES} under a flood: {ready:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "upgrade {upgrade} took {took:?} under the flood, past the 1 s hello timeout"
        );
        let now = status(&mut peer);
        assert_eq!(
            field(&now, "generation"),
            (upgrade + 1).to_string(),
            "{now:?}"
        );
        for key in ["blob", "spare"] {
            assert_eq!(field(&now, key), field(&before, key), "{key}: {now:?}");
        }
    }
    eprintln!(
        "{FLOODED_UPGRADES} of {FLOODED_UPGRADES} upgrades succeeded under {flooded} flood \
         connections"
    );
    assert!(flooded > 0, "the flood made connections");
}

/// A flood of idle connections from this user, during each of 20 slow
/// starts, fails no upgrade and delays none past the hello timeout.
#[test]
fn a_flood_from_the_same_user_fails_no_upgrade() {
    upgrades_under_a_flood("flood-same-user", |port| {
        let until = Instant::now() + FLOOD_FOR;
        let flooder = std::thread::spawn(move || {
            let made = AtomicU64::new(0);
            flood(port, &made, || Instant::now() < until);
            made.into_inner()
        });
        Box::new(move || flooder.join().expect("the flooder"))
    });
}

/// Connects to `port` for as long as `go_on` says, holding the newest 1,000
/// connections open and idle, and counts each connection in `made`.
fn flood(port: u16, made: &AtomicU64, mut go_on: impl FnMut() -> bool) {
    let mut open = std::collections::VecDeque::new();
    while go_on() {
        if let Ok(conn) = TcpStream::connect(("127.0.0.1", port)) {
            made.fetch_add(1, Ordering::Relaxed);
            open.push_back(conn);
            if open.len() > 1000 {
                open.pop_front();
            }
        }
    }
}

/// 100,000 connections from this user during one slow start, and more
/// while the new process connects: the upgrade succeeds within the hello
/// timeout.
#[test]
fn a_flood_of_100000_connections_during_a_slow_start_fails_nothing() {
    const FLOOD: u64 = 100_000;
    const THREADS: u64 = 2;
    let (mut run, mut peer) = Spawn::new("flood-100000")
        .args(&["--blob-size", "100003", "--spare-fds", "10"])
        .start();
    let before = status(&mut peer);
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let port = mitosis_port_of(child);
    let made = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (enough, flood_reached) = std::sync::mpsc::sync_channel(THREADS as usize);
    let flooders: Vec<_> = (0..THREADS)
        .map(|_| {
            let (made, stop, enough) = (made.clone(), stop.clone(), enough.clone());
            std::thread::spawn(move || {
                let mut told = false;
                flood(port, &made, || {
                    if !told && made.load(Ordering::Relaxed) >= FLOOD {
                        told = enough.send(()).is_ok();
                    }
                    !stop.load(Ordering::Relaxed)
                })
            })
        })
        .collect();
    flood_reached
        .recv_timeout(Duration::from_secs(120))
        .expect("the flood reached 100,000 connections");
    let started = Instant::now();
    let ready = {
        let _writer = release(&fifo);
        peer.line()
    };
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("a flooder");
    }
    let connected = made.load(Ordering::Relaxed);
    eprintln!("{connected} flood connections; the upgrade took {took:?} after the release");
    assert!(
        ready.starts_with("ready ") && field(&ready, "pid") == child.to_string(),
        "the upgrade under a flood of {connected} connections: {ready:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the upgrade took {took:?} under the flood, past the 1 s hello timeout"
    );
    let now = status(&mut peer);
    for key in ["blob", "spare"] {
        assert_eq!(field(&now, key), field(&before, key), "{key}: {now:?}");
    }
}

/// The same, from user nobody: the flooder is another user's process.
#[test]
fn a_flood_from_another_user_fails_no_upgrade() {
    let Some(setpriv) = setpriv_as_root() else {
        return;
    };
    let tools = TempDir::new("flooder-tools");
    fs::set_permissions(tools.path(), fs::Permissions::from_mode(0o755))
        .expect("make the tools directory world-readable");
    let binary = tools.install(FLOODER, "flooder");
    upgrades_under_a_flood("flood-other-user", |port| {
        let child = Command::new(&setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary)
            .arg(port.to_string())
            .arg(FLOOD_FOR.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the flooder as nobody");
        Box::new(move || {
            let output = child.wait_with_output().expect("the flooder's output");
            let text = String::from_utf8_lossy(&output.stdout);
            text.trim()
                .strip_prefix("flooded ")
                .and_then(|rest| rest.strip_suffix(" connections"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("the flooder said {text:?}"))
        })
    });
}
