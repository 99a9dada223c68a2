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
        non_stdio_but_previous_build(&after),
        non_stdio(&before.fds),
        "the new process holds exactly the state's fds (the same sockets and files) and the \
         previous build's executable: {answer:?}"
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
