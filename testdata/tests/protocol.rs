//! The handshake from the outside: fake old processes, a version mismatch
//! seen by the new process, an old process that vanishes mid-transfer, and
//! strangers on the handover port.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Instant;

use common::*;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    AddressFamily, SocketAddrUnix, SocketFlags, SocketType, bind, listen, socket_with,
};
use testdata::wire;

/// A fake old process: a TCP listener, a secret, optionally a real fd
/// channel listener, and testdata started with `--mitosis=<port>` and the
/// environment a real split would give it.
struct FakeParent {
    listener: TcpListener,
    secret: [u8; 64],
    fd_listener: Option<OwnedFd>,
    /// The new process's end of the fd channel, accepted.
    fd_conn: Option<OwnedFd>,
    run: Run,
    _sockets: TempDir,
}

impl FakeParent {
    fn start(name: &str) -> FakeParent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake old process");
        let port = listener.local_addr().unwrap().port();
        let secret = random_secret();
        let sockets = TempDir::new(&format!("{name}-sockets"));
        // The new process connects to it before it sends HELLO.
        let path = sockets.join("fd.sock");
        let (fd_socket, fd_listener) =
            (path.display().to_string(), Some(fd_channel_listener(&path)));
        let run = Spawn::new(name)
            .args(&[&format!("--mitosis={port}")])
            .env("MITOSIS_FD_SOCKET", &fd_socket)
            .spawn();
        // The new process connects to the fd channel first and reads KEY:
        // the secret, a 5 s transfer timeout, and the default limits.
        let key = wire::key(&secret, 5000, 4 << 30, 1 << 20);
        let fd_conn = accept_and_send(fd_listener.as_ref().unwrap(), &key);
        FakeParent {
            listener,
            secret,
            fd_listener,
            fd_conn: Some(fd_conn),
            run,
            _sockets: sockets,
        }
    }

    /// Accepts the new process and checks its HELLO: magic, versions 1..=3,
    /// and the first half of the secret.
    fn accept_hello(&self) -> TcpStream {
        let mut conn = accept_timeout(&self.listener);
        let mut hello = [0u8; wire::HELLO_LEN];
        conn.read_exact(&mut hello).expect("read the HELLO");
        assert_eq!(&hello[..8], &wire::MAGIC, "HELLO magic");
        assert_eq!(
            (wire::u16_at(&hello, 8), wire::u16_at(&hello, 10)),
            (1, 3),
            "this build speaks protocol versions 1 to 3"
        );
        assert_eq!(
            &hello[12..],
            &self.secret[..32],
            "the HELLO proves the first half of the secret"
        );
        conn
    }

    /// Waits for testdata to exit and returns its exit code and stderr.
    fn exit(&mut self) -> (Option<i32>, Vec<String>) {
        let status = self.run.wait_first();
        let stderr = self.run.stderr.wait_eof();
        (status.code(), stderr)
    }
}

#[test]
fn protocol_version_mismatch_child_side() {
    let mut parent = FakeParent::start("version-child");
    let mut conn = parent.accept_hello();
    conn.write_all(&wire::welcome(0, 4, 4, &parent.secret))
        .expect("send the WELCOME");
    let (code, stderr) = parent.exit();
    assert_eq!(
        code,
        Some(2),
        "init fails and testdata exits 2; stderr: {stderr:#?}"
    );
    let init = stderr.iter().find(|line| line.starts_with("init error:"));
    let init = init.unwrap_or_else(|| panic!("no init error on stderr: {stderr:#?}"));
    assert!(
        init.starts_with("init error: protocol version mismatch") && init.contains("4..=4"),
        "the new process names the mismatch and the old process's versions: {init:?}"
    );
    assert!(
        init.contains("1..=3"),
        "the new process names its own versions: {init:?}"
    );
    let stdout = parent.run.stdout.wait_eof();
    assert!(
        stdout.is_empty(),
        "no fresh start after a failed init: {stdout:?}"
    );
}

/// Accepts the new process on the fd channel (waiting at most [`TIMEOUT`])
/// and sends it `key`.
fn accept_and_send(listener: &OwnedFd, key: &[u8]) -> OwnedFd {
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    poll(&mut fds, Some(&timespec(TIMEOUT))).expect("poll the fd channel");
    assert!(
        !fds[0].revents().is_empty(),
        "the new process connects to the fd channel within {TIMEOUT:?}"
    );
    let conn = rustix::net::accept_with(listener, SocketFlags::CLOEXEC).expect("accept");
    rustix::net::send(&conn, key, rustix::net::SendFlags::NOSIGNAL).expect("send KEY");
    conn
}

/// A SEQPACKET listener at `path`, like the old process's fd channel.
fn fd_channel_listener(path: &Path) -> OwnedFd {
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("a SEQPACKET socket");
    bind(&socket, &SocketAddrUnix::new(path).expect("a socket path")).expect("bind the fd channel");
    listen(&socket, 4).expect("listen on the fd channel");
    socket
}

#[test]
fn parent_vanishing_mid_transfer_fails_init_cleanly() {
    let mut parent = FakeParent::start("vanish");
    // The fake old process runs on a thread and goes away by returning,
    // which drops (closes) its connection and its fd channel listener, into
    // whose backlog the new process has connected.
    let fd_listener = parent.fd_listener.take().expect("an fd channel");
    let fd_conn = parent.fd_conn.take().expect("the new process's fd channel");
    let secret = parent.secret;
    let hello_checked = parent.accept_hello();
    let fake = std::thread::spawn(move || {
        let _fd_listener = fd_listener;
        let _fd_conn = fd_conn;
        let mut conn = hello_checked;
        conn.write_all(&wire::welcome(1, 1, 1, &secret))
            .expect("send the WELCOME");

        // OFFER: header, then payload (u16 count, then per schema u32
        // version, u64 fingerprint, u16 name length, name; then the
        // description of the new process's state).
        let mut header = [0u8; wire::HEADER_LEN];
        conn.read_exact(&mut header).expect("read the OFFER header");
        assert_eq!(header[0], wire::OFFER, "the first frame is an OFFER");
        let len = u32::from_le_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut offer = vec![0u8; len];
        conn.read_exact(&mut offer).expect("read the OFFER payload");
        assert_eq!(wire::u16_at(&offer, 0), 1, "one schema offered");
        let name_len = wire::u16_at(&offer, 2 + 12) as usize;
        let offered = &offer[2..2 + 14 + name_len];

        // STATE: the schema that was offered (the same encoding), then a
        // DATA frame that announces 1000 bytes and delivers 10.
        conn.write_all(&wire::header(wire::STATE, offered.len() as u32))
            .unwrap();
        conn.write_all(offered).unwrap();
        conn.write_all(&wire::header(wire::DATA, 1000)).unwrap();
        conn.write_all(&[0u8; 10]).unwrap();
        offer
    });
    let offer = fake.join().expect("the fake old process");
    // The derived schema of testdata's state: its fingerprint covers the
    // fields' shape, so it is not `Schema::new(name, 1)`.
    let schema = mitosis::Schema::of::<testdata::State>().unwrap();
    assert_eq!(
        (schema.name.as_ref(), schema.version),
        (testdata::STATE_NAME, 1)
    );
    let mut expected = Vec::new();
    expected.extend_from_slice(&1u16.to_le_bytes());
    expected.extend_from_slice(&schema.version.to_le_bytes());
    expected.extend_from_slice(&schema.fingerprint.to_le_bytes());
    expected.extend_from_slice(&(schema.name.len() as u16).to_le_bytes());
    expected.extend_from_slice(schema.name.as_bytes());
    assert_eq!(
        &offer[..expected.len()],
        expected,
        "the OFFER names testdata::State v1"
    );
    assert_eq!(
        offer[expected.len()],
        1,
        "and describes the new process's state"
    );

    let started = Instant::now();
    let (code, stderr) = parent.exit();
    assert_eq!(
        code,
        Some(2),
        "init fails and testdata exits 2; stderr: {stderr:#?}"
    );
    let init = stderr.iter().find(|line| line.starts_with("init error:"));
    let init = init.unwrap_or_else(|| panic!("no init error on stderr: {stderr:#?}"));
    assert!(
        init.contains("step 6 (state transfer)") && !init.contains("did not complete within"),
        "the new process sees the old one vanish during the state transfer, and does not wait \
         for its timeout to notice: {init:?} (exited {:?} after the fake parent left)",
        started.elapsed()
    );
    let stdout = parent.run.stdout.wait_eof();
    assert!(
        stdout.is_empty(),
        "no fresh start after a failed init: {stdout:?}"
    );
}

/// A real old process is SIGKILLed while it streams a 512 MiB state. The new
/// process must fail its init (never hang, never take over), whatever step
/// it was in.
#[test]
fn parent_sigkilled_mid_transfer() {
    const BLOB: usize = 512 << 20;
    let (mut run, mut peer) = Spawn::new("sigkill")
        .args(&["--blob-size", &BLOB.to_string()])
        .start();
    // An answer means the blob exists (`status` would checksum it, slowly).
    assert_eq!(peer.command("ping 0"), "pong 0");
    peer.send("split\n");
    let splitting = run.stdout.expect("splitting child=");
    let child: u32 = field(&splitting, "child").parse().unwrap();

    // Kill the old process once the new one has received some of the
    // state: its memory grows as the DATA frames arrive. If the new process
    // exits first, or the transfer never gets that far, kill anyway.
    let deadline = Instant::now() + TIMEOUT;
    let mut observed = "before any state arrived";
    while Instant::now() < deadline {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{child}/status")) else {
            observed = "after the new process was gone";
            break;
        };
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        if rss_kib > 64 << 10 {
            observed = "mid-transfer";
            break;
        }
        std::thread::yield_now();
    }
    run.child.kill().expect("SIGKILL the old process");
    let killed = Instant::now();
    eprintln!("killed the old process {observed}");
    run.child.wait().expect("reap the old process");

    // The new process is not this test's child; its pidfd says when it is
    // gone, and its init error is on the shared stderr.
    assert!(
        wait_pid_exit(child, TIMEOUT).is_some(),
        "the new process {child} still runs {TIMEOUT:?} after its parent was killed {observed}"
    );
    let init = run.stderr.expect("init error:");
    eprintln!(
        "the new process exited {:?} after the kill: {init}",
        killed.elapsed()
    );
    // Nobody took over: the peer gets EOF, with no ready line.
    match peer.try_line() {
        Ok(None) => {}
        Ok(Some(line)) => {
            panic!("the peer got {line:?} after the old process was killed {observed}")
        }
        Err(e) => panic!("the peer connection did not close: {e}"),
    }
}

#[test]
fn attacker_connects_first_and_learns_nothing() {
    let (mut run, mut peer) = Spawn::new("attacker").start();
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    // What any local user can do: read the port from the command line.
    let port = mitosis_port_of(child);

    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("the idle attacker connects");
    let mut liar = TcpStream::connect(("127.0.0.1", port)).expect("the lying attacker connects");
    // A well-formed HELLO with the wrong secret.
    liar.write_all(&wire::hello(1, 1, &random_secret()))
        .expect("send a forged HELLO");
    let end = assert_learns_nothing(&mut liar, "the lying attacker");
    eprintln!("the lying attacker's connection ended by {end}, before the child connected");

    let ready = release_and_expect_takeover(&fifo, &mut peer);
    assert_eq!(field(&ready, "pid"), child.to_string(), "{ready:?}");

    let end = assert_learns_nothing(&mut idle, "the idle attacker");
    eprintln!("the idle attacker's connection ended by {end}");
    assert_eq!(peer.command("ping 1"), "pong 1");
}

#[test]
fn garbage_sender_does_not_delay_handover() {
    // With a 60 s hello timeout, a handover that waited on the idle or the
    // garbage connection would blow the 20 s safety net.
    let (mut run, mut peer) = Spawn::new("garbage")
        .args(&["--hello-timeout-ms", "60000", "--timeout-ms", "60000"])
        .start();
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let port = mitosis_port_of(child);

    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("the idle attacker connects");
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).expect("the garbage sender connects");
    // As many bytes as a HELLO, none of them right.
    let mut junk = [b'.'; wire::HELLO_LEN];
    junk[..16].copy_from_slice(b"GET / HTTP/1.1\r\n");
    garbage.write_all(&junk).expect("send garbage");
    let end = assert_learns_nothing(&mut garbage, "the garbage sender");
    eprintln!("the garbage sender's connection ended by {end}, before the child connected");

    let released = Instant::now();
    release_and_expect_takeover(&fifo, &mut peer);
    eprintln!(
        "handover completed {:?} after the release, with the idle attacker still connected",
        released.elapsed()
    );
    let end = assert_learns_nothing(&mut idle, "the idle attacker");
    eprintln!("the idle attacker's connection ended by {end}");
    assert_eq!(peer.command("ping 1"), "pong 1");
}

#[test]
fn connection_flood_does_not_block_handover() {
    // More idle connections than the old process keeps pending (64), all
    // before the real new process connects, with a 60 s hello timeout.
    let (mut run, mut peer) = Spawn::new("flood")
        .args(&["--hello-timeout-ms", "60000", "--timeout-ms", "60000"])
        .start();
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let port = mitosis_port_of(child);
    let mut flood: Vec<TcpStream> = (0..100)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("flood connection {i}: {e}"))
        })
        .collect();

    release_and_expect_takeover(&fifo, &mut peer);
    for (i, conn) in flood.iter_mut().enumerate() {
        assert_learns_nothing(conn, &format!("flood connection {i}"));
    }
}
