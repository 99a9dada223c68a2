//! The control socket (`--control`, `mitosisctl`, issue 17), against the
//! echo server: who may use it and where it may live; what bad clients get
//! while the program serves on; `mitosisctl upgrade` under load, against a
//! broken build and while another upgrade runs; run-again (`echo-server
//! --upgrade`); and going back to a build whose file is gone.
//!
//! `echo-server` stands for v1 and `echo-server-next` for v2: the same
//! server, answering `VERSION` with another version, which a connection
//! that crossed the upgrades asks.

mod env_support;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use env_support::{
    ECHO_SERVER, KillOnDrop, LOADGEN, Need, PATIENCE, Process, Survivors, can_run, clean_command,
    echo_server_copy, eventually, install, install_broken_build, install_script, listening_port,
    next_line, relay,
};

const ECHO_SERVER_NEXT: &str = env!("CARGO_BIN_EXE_echo-server-next");
/// What `VERSION` answers in echo-server (v1) and echo-server-next (v2).
const V1: &str = env!("CARGO_PKG_VERSION");
const V2: &str = concat!(env!("CARGO_PKG_VERSION"), "-next");

/// The control socket refuses a user it does not allow, twice over: the
/// socket file is 0600, so the kernel refuses another uid's connect; and
/// when a misconfiguration opens the file to everyone (0666), the
/// program itself refuses the connection by its `SO_PEERCRED` uid. Either
/// way `mitosisctl` run as uid 65534 exits 1, for `status` and for
/// `upgrade`, and the server serves on, not upgraded.
#[test]
fn another_uid_is_refused() {
    if !can_run(
        "another_uid_is_refused",
        &[
            Need::Root,
            Need::Program {
                name: "setpriv",
                package: "util-linux",
            },
            Need::Mitosisctl,
        ],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-other-uid");
    // uid 65534 must reach mitosisctl and the socket's directory, whatever
    // the umask and wherever cargo put its binaries.
    chmod(&dir, 0o755);
    let mitosisctl = dir.join("mitosisctl");
    install(&mitosisctl, &env_support::mitosisctl());
    let socket = control_dir(&dir, 0o755).join("echo.control");
    let server = Server::start(Path::new(ECHO_SERVER), &socket, &[]);
    let mut kept = Conn::connect(server.port, "kept");
    kept.echo(1);
    let as_nobody = |command: &str| {
        run(
            Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(&mitosisctl)
                .arg("--socket")
                .arg(&socket)
                .arg(command),
            &format!("mitosisctl {command} as uid 65534"),
        )
    };

    // As bound: 0600, so the kernel refuses the connection.
    assert_eq!(mode_of(&socket), 0o600, "the socket's mode as bound");
    for command in ["status", "upgrade"] {
        let ran = as_nobody(command);
        assert_eq!(ran.code, Some(1), "{ran}");
        assert_eq!(ran.stdout, "", "{ran}");
        assert!(ran.stderr.contains("permission denied"), "{ran}");
    }

    // Opened to everyone by mistake: the connection goes through, and the
    // program refuses it by the uid the kernel recorded.
    chmod(&socket, 0o666);
    for command in ["status", "upgrade"] {
        let ran = as_nobody(command);
        assert_eq!(ran.code, Some(1), "{ran}");
        assert_eq!(ran.stdout, "", "{ran}");
        assert_eq!(
            ran.stderr,
            "error\nerror: uid 65534 may not control this program (allowed: 0); run as its \
             user or root\n",
            "{ran}"
        );
    }

    // Nothing was upgraded, and the server serves on.
    let status = server.status();
    assert_eq!(
        (
            status.field("pid"),
            status.field("generation"),
            status.field("last-upgrade")
        ),
        (server.first_pid().to_string().as_str(), "1", "none"),
        "{status}"
    );
    kept.echo(2);
}

/// A control socket in a directory that others can write (world-writable
/// and sticky like /tmp, or group-writable) is refused at start: the
/// server exits 1 before it listens, and its error names the directory,
/// its mode, and why. No socket is left at the path.
#[test]
fn a_world_writable_directory_is_refused_at_start() {
    if !can_run(
        "a_world_writable_directory_is_refused_at_start",
        &[Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-shared-dir");
    for mode in [0o1777, 0o775] {
        let shared = dir.join(format!("shared-{mode:o}"));
        std::fs::create_dir(&shared).expect("create the shared directory");
        chmod(&shared, mode);
        let socket = shared.join("x.control");
        let ran = run(
            clean_command(ECHO_SERVER)
                .args(["--listen", "127.0.0.1:0", "--control"])
                .arg(&socket),
            &format!("echo-server with its control socket in a {mode:o} directory"),
        );
        assert_eq!(ran.code, Some(1), "{ran}");
        assert_eq!(ran.stdout, "", "it never listened; {ran}");
        let why = format!(
            "its directory {} is writable by others (mode {mode:o})",
            shared.display()
        );
        assert!(ran.stderr.contains(&why), "{why:?} not in: {ran}");
        assert!(
            std::fs::symlink_metadata(&socket).is_err(),
            "{} exists",
            socket.display()
        );
        let status = ctl(&socket, &["status"]);
        assert_eq!(status.code, Some(1), "{status}");
        assert!(status.stderr.contains("no such socket"), "{status}");
    }
}

/// Clients that break the protocol each get an `error` answer, and hold
/// up nothing: a garbage line, a 10 MiB line (answered after 4096 bytes,
/// the rest refused), and a client that connects and never writes
/// (answered 5 s later, while a status request and an echo client are
/// served meanwhile). The server's pid and generation stay the same.
#[test]
fn bad_clients_get_errors_and_the_server_serves_on() {
    if !can_run(
        "bad_clients_get_errors_and_the_server_serves_on",
        &[Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-bad-clients");
    let socket = control_dir(&dir, 0o700).join("echo.control");
    let server = Server::start(Path::new(ECHO_SERVER), &socket, &[]);
    let mut kept = Conn::connect(server.port, "kept");
    kept.echo(1);

    // The silent client, in a thread: its answer takes 5 s.
    let (connected_tx, connected) = mpsc::channel();
    let (answered_tx, answered) = mpsc::channel();
    let silent = {
        let socket = socket.clone();
        thread::spawn(move || {
            let stream = UnixStream::connect(&socket).expect("connect the silent client");
            let since = Instant::now();
            connected_tx.send(()).unwrap();
            let answer = read_answer(&stream, "the silent client");
            answered_tx.send(()).ok();
            (answer, since.elapsed())
        })
    };
    connected
        .recv_timeout(PATIENCE)
        .expect("the silent client connects");
    // While it waits, the server answers status and echoes.
    let status = server.status();
    assert_eq!(status.field("upgrading"), "no", "{status}");
    kept.echo(2);
    assert!(
        answered.try_recv().is_err(),
        "the silent client was answered before the status request and the echo: they waited \
         for it"
    );

    let garbage = raw_ask(&socket, b"\x00\x01 hello garbage\n");
    assert!(garbage.starts_with("error\nerror: "), "{garbage:?}");
    assert!(garbage.contains("unknown request"), "{garbage:?}");
    assert!(
        garbage.contains("the requests are: upgrade, upgrade <absolute path>, previous, status"),
        "{garbage:?}"
    );

    // 10 MiB without a newline until the end, from a thread: the server
    // stops reading after 4096 bytes, answers and closes, so the write
    // fails, as it must, while the answer is read here.
    let stream = UnixStream::connect(&socket).expect("connect the long-line client");
    let writer = {
        let mut stream = stream.try_clone().expect("clone the socket");
        thread::spawn(move || {
            let mut line = vec![b'x'; 10 << 20];
            line.push(b'\n');
            stream.write_all(&line)
        })
    };
    let long = read_answer(&stream, "the long-line client");
    assert_eq!(
        long,
        "error\nerror: the request is longer than 4096 bytes; a request is one short line\n\n",
        "the answer to a 10 MiB line"
    );
    let written = writer.join().expect("the writer thread");
    assert!(
        matches!(
            &written,
            Err(error) if matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
        ),
        "the server took the whole 10 MiB line: {written:?}"
    );

    let (silent_answer, waited) = silent.join().expect("the silent client's thread");
    assert_eq!(
        silent_answer, "error\nerror: no whole request line within 5s of connecting\n\n",
        "the answer to a client that never wrote"
    );
    assert!(
        waited >= Duration::from_secs(5),
        "the silent client was answered after {waited:?}"
    );

    let status = server.status();
    assert_eq!(
        (
            status.field("pid"),
            status.field("generation"),
            status.field("last-upgrade")
        ),
        (server.first_pid().to_string().as_str(), "1", "none"),
        "{status}"
    );
    kept.echo(3);
    Conn::connect(server.port, "fresh").echo(1);
}

/// While an upgrade runs (the build on disk starts and then hangs, until
/// the test kills it), `status` says `upgrading: yes`, and a second
/// `upgrade` or a `previous` is refused at once with `already running`
/// while the echo clients are served. The first `upgrade` waits for its
/// outcome and reports it: failed, the new process killed. The server
/// serves on with the same pid, and takes upgrades again.
#[test]
fn a_request_while_an_upgrade_runs_is_refused() {
    if !can_run(
        "a_request_while_an_upgrade_runs_is_refused",
        &[Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-busy");
    let binary = echo_server_copy(&dir);
    let socket = control_dir(&dir, 0o700).join("echo.control");
    let (_marker, started) = env_support::fifo(&dir.join("started"));
    let server = Server::start(&binary, &socket, &[]);
    let mut kept = Conn::connect(server.port, "kept");
    kept.echo(1);
    install_script(
        &binary,
        &format!(
            "#!/bin/sh\necho \"started $$\" > '{}'\nexec sleep 3600\n",
            dir.join("started").display()
        ),
    );

    let first = start(
        Command::new(env_support::mitosisctl())
            .arg("--socket")
            .arg(&socket)
            .arg("upgrade"),
        "the first mitosisctl upgrade",
    );
    let line = next_line(&started, "the hanging build's `started`");
    let hanging: u32 = line
        .strip_prefix("started ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the script said {line:?}"));
    let hanging = Process::expect(hanging, "the hanging build");

    let status = server.status();
    assert_eq!(
        (status.field("pid"), status.field("upgrading")),
        (server.first_pid().to_string().as_str(), "yes"),
        "{status}"
    );
    for command in ["upgrade", "previous"] {
        let second = ctl(&socket, &[command]);
        assert_eq!(second.code, Some(1), "{second}");
        assert_eq!(second.stdout, "", "{second}");
        assert!(
            second.stderr.starts_with("error\nerror: ")
                && second.stderr.contains("an upgrade is already running"),
            "{second}"
        );
    }
    kept.echo(2);
    assert!(
        !first.has_exited(),
        "the first upgrade ended before the build it runs did"
    );

    hanging.kill();
    let first = first.finish();
    assert_eq!(first.code, Some(1), "{first}");
    assert_eq!(first.stdout, "", "{first}");
    let failed = Answer::parse(&first.stderr);
    assert_eq!(failed.verdict, "failed", "{first}");
    assert_eq!(
        (failed.field("old-pid"), failed.field("new-pid")),
        (
            server.first_pid().to_string().as_str(),
            hanging.pid.to_string().as_str()
        ),
        "{first}"
    );
    assert!(
        failed
            .field("error")
            .starts_with("the new process exited (signal: 9 (SIGKILL))"),
        "{first}"
    );

    let status = server.status();
    assert_eq!(
        (
            status.field("pid"),
            status.field("upgrading"),
            status.field("last-upgrade")
        ),
        (server.first_pid().to_string().as_str(), "no", "failed"),
        "{status}"
    );
    kept.echo(3);
    assert_eq!(kept.version(), V1);
}

/// `mitosisctl upgrade`, three times while loadgen's 64 clients keep the
/// server busy: each exits 0 and prints `done` with the old pid, the new
/// pid and the generation; the new pid is the one that then answers
/// `status`, and the old one exits. loadgen, running across all three,
/// loses, repeats and alters no reply.
#[test]
fn mitosisctl_upgrade_under_load_exits_0_with_the_new_pid() {
    if !can_run(
        "mitosisctl_upgrade_under_load_exits_0_with_the_new_pid",
        &[Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-load");
    let socket = control_dir(&dir, 0o700).join("echo.control");
    let mut server = Server::start(Path::new(ECHO_SERVER), &socket, &[]);
    let first = server.first_pid();
    let idle = sockets_of(first);
    let loadgen = start(
        Command::new(LOADGEN)
            .args(["--server", &format!("127.0.0.1:{}", server.port)])
            .args(["--clients", "64", "--reconnect-every", "10"])
            .args(["--upgrades", "0", "--duration", "6s", "--timeout", "20s"]),
        "loadgen",
    );
    // The load is on once loadgen's 64 clients are connected.
    eventually("loadgen's 64 clients connected", || {
        let sockets = sockets_of(first);
        (sockets >= idle + 64)
            .then_some(())
            .ok_or(format!("{sockets} sockets, {idle} before loadgen"))
    });

    let mut serving = first;
    for generation in 2..=4u64 {
        let old = Process::expect(serving, "the generation that serves");
        let ran = ctl(&socket, &["upgrade"]);
        assert_eq!(ran.code, Some(0), "{ran}");
        let done = Answer::parse(&ran.stdout);
        assert_eq!(done.verdict, "done", "{ran}");
        let new: u32 = done.field("new-pid").parse().expect("a pid");
        assert_eq!(
            (done.field("old-pid"), done.field("generation")),
            (
                serving.to_string().as_str(),
                generation.to_string().as_str()
            ),
            "{ran}"
        );
        assert_ne!(new, serving, "{ran}");
        server.adopt(new);
        old.expect_exit("the old generation after `done`");
        let status = server.status();
        assert_eq!(
            (status.field("pid"), status.field("generation")),
            (new.to_string().as_str(), generation.to_string().as_str()),
            "{status}"
        );
        serving = new;
    }
    assert!(
        !loadgen.has_exited(),
        "loadgen ended before the third upgrade did: the load did not overlap them all"
    );

    let loadgen = loadgen.finish();
    let result = loadgen_result(&loadgen.stdout);
    let failures = env_support::loadgen_failures(&result, &[]);
    assert_eq!(failures, env_support::LOADGEN_CLEAN, "{loadgen}");
    assert_eq!(result["answered"], result["requests"], "{loadgen}");
    assert!(result["fresh_connections"] > 0, "{loadgen}");
    assert_eq!(loadgen.code, Some(0), "{loadgen}");
    eprintln!(
        "3 upgrades by mitosisctl under load: {} requests answered",
        result["answered"]
    );
}

/// `mitosisctl upgrade` when the build on disk crashes at start: it exits
/// 1 and prints `failed` on stderr with the old pid and the reason. The
/// old process serves on, with the connection opened before, and its
/// status records the failure.
#[test]
fn mitosisctl_upgrade_to_a_broken_build_exits_1_and_the_old_pid_serves() {
    if !can_run(
        "mitosisctl_upgrade_to_a_broken_build_exits_1_and_the_old_pid_serves",
        &[Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-broken");
    let binary = echo_server_copy(&dir);
    let socket = control_dir(&dir, 0o700).join("echo.control");
    let server = Server::start(&binary, &socket, &[]);
    let mut kept = Conn::connect(server.port, "kept");
    kept.echo(1);
    install_broken_build(&binary);

    let ran = ctl(&socket, &["upgrade"]);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert_eq!(ran.stdout, "", "{ran}");
    assert!(ran.stderr.starts_with("failed\n"), "{ran}");
    let failed = Answer::parse(&ran.stderr);
    assert_eq!(
        (
            failed.field("old-pid"),
            failed.field("generation"),
            failed.field("binary")
        ),
        (
            server.first_pid().to_string().as_str(),
            "2",
            binary.display().to_string().as_str()
        ),
        "{ran}"
    );
    assert!(failed.field("step").starts_with("step "), "{ran}");
    assert!(
        failed
            .field("error")
            .starts_with("the new process exited (exit status: 1)"),
        "{ran}"
    );

    let status = server.status();
    assert_eq!(
        (
            status.field("pid"),
            status.field("generation"),
            status.field("upgrading"),
            status.field("last-upgrade"),
            status.field("last-old-pid"),
        ),
        (
            server.first_pid().to_string().as_str(),
            "1",
            "no",
            "failed",
            server.first_pid().to_string().as_str()
        ),
        "{status}"
    );
    kept.echo(2);
    assert_eq!(kept.version(), V1);
}

/// Run-again: with v1 serving, v2 installed under another name and run
/// with `--upgrade` asks the running server to become it. It exits 0 and
/// prints `done`; the server is now v2, running from v2's path, and a
/// connection opened to v1 is served by v2. Going back makes it v1 again,
/// upgrading from v1's path again.
#[test]
fn running_the_new_binary_upgrades_the_running_one() {
    if !can_run(
        "running_the_new_binary_upgrades_the_running_one",
        &[Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-run-again");
    let v1 = echo_server_copy(&dir);
    let v2 = dir.join("echo-server-v2");
    install(&v2, Path::new(ECHO_SERVER_NEXT));
    let socket = control_dir(&dir, 0o700).join("echo.control");
    let mut server = Server::start(&v1, &socket, &[]);
    let mut kept = Conn::connect(server.port, "kept");
    assert_eq!(kept.version(), V1);
    kept.echo(1);

    let ran = run(
        clean_command(&v2)
            .arg("--control")
            .arg(&socket)
            .arg("--upgrade"),
        "echo-server-v2 --upgrade",
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    let done = Answer::parse(&ran.stdout);
    assert_eq!(done.verdict, "done", "{ran}");
    let new: u32 = done.field("new-pid").parse().expect("a pid");
    server.adopt(new);
    assert_eq!(
        (
            done.field("old-pid"),
            done.field("generation"),
            done.field("binary")
        ),
        (
            server.first_pid().to_string().as_str(),
            "2",
            v2.display().to_string().as_str()
        ),
        "{ran}"
    );

    assert_eq!(kept.version(), V2, "the connection opened to v1");
    kept.echo(2);
    let status = server.status();
    assert_eq!(
        (
            status.field("pid"),
            status.field("binary"),
            status.field("upgrades-from"),
            status.field("previous-binary"),
        ),
        (
            new.to_string().as_str(),
            v2.display().to_string().as_str(),
            v2.display().to_string().as_str(),
            v1.display().to_string().as_str(),
        ),
        "{status}"
    );

    // Going back to v1 restores its path too: plain upgrades run v1's
    // path again, not v2's.
    let ran = ctl(&socket, &["previous"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let back: u32 = Answer::parse(&ran.stdout)
        .field("new-pid")
        .parse()
        .expect("a pid");
    server.adopt(back);
    assert_eq!(kept.version(), V1, "the connection opened to v1");
    let status = server.status();
    assert_eq!(
        (
            status.field("binary"),
            status.field("upgrades-from"),
            status.field("previous-binary"),
        ),
        (
            v1.display().to_string().as_str(),
            v1.display().to_string().as_str(),
            v2.display().to_string().as_str(),
        ),
        "{status}"
    );
}

/// The server as PID 1 of a PID namespace (a container), its control
/// socket used from outside, as `docker exec`-less operators and host
/// systemd units do: the kernel reports such a peer's pid as 0, and its
/// uid still decides. `status`, `upgrade` and `previous` answer, and a
/// connection opened before serves throughout.
#[test]
fn the_control_socket_answers_from_outside_a_pid_namespace() {
    if !can_run(
        "the_control_socket_answers_from_outside_a_pid_namespace",
        &[Need::Root, Need::PidNamespaces, Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-pid-namespace");
    let binary = echo_server_copy(&dir);
    let socket = control_dir(&dir, 0o700).join("echo.control");
    let mut unshare = clean_command("unshare")
        // --kill-child: if the test dies, so does the namespace.
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(&binary)
        .args(["--listen", "127.0.0.1:0", "--control"])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("start unshare");
    let stdout = env_support::lines_of(unshare.0.stdout.take().unwrap());
    relay(unshare.0.stderr.take().unwrap(), "  [container] ");
    let port = listening_port(&stdout);
    let mut kept = Conn::connect(port, "kept");
    kept.echo(1);

    let ran = ctl(&socket, &["status"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let status = Answer::parse(&ran.stdout);
    // Pids as the namespace sees them: the keeper is 1, the server its
    // child.
    let first = status.field("pid").to_owned();
    assert_eq!(
        (status.verdict.as_str(), status.field("generation")),
        ("status", "1"),
        "{ran}"
    );

    let ran = ctl(&socket, &["upgrade"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let done = Answer::parse(&ran.stdout);
    assert_eq!(
        (done.field("old-pid"), done.field("generation")),
        (first.as_str(), "2"),
        "{ran}"
    );
    kept.echo(2);

    let ran = ctl(&socket, &["previous"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(Answer::parse(&ran.stdout).field("generation"), "3", "{ran}");
    kept.echo(3);
    assert_eq!(kept.version(), V1);
}

/// Going back: v1 serves, v2 is renamed over v1's file, and `upgrade`
/// makes the server v2. `previous` then runs v1 again from the handle
/// kept open, although its file is gone: v1 answers on the connection
/// that crossed both upgrades, as generation 3, running a deleted file.
/// The next `upgrade` runs the path on disk (v2) again. From a fresh
/// start, `previous` has nothing to go back to and fails.
#[test]
fn going_back_runs_the_previous_build_after_its_file_is_gone() {
    if !can_run(
        "going_back_runs_the_previous_build_after_its_file_is_gone",
        &[Need::Mitosisctl],
    ) {
        return;
    }
    let dir = env_support::scratch_dir("control-previous");
    let binary = echo_server_copy(&dir);
    let path = binary.display().to_string();
    let socket = control_dir(&dir, 0o700).join("echo.control");
    let mut server = Server::start(&binary, &socket, &[]);
    let mut kept = Conn::connect(server.port, "kept");
    assert_eq!(kept.version(), V1);

    let ran = ctl(&socket, &["previous"]);
    assert_eq!(ran.code, Some(1), "{ran}");
    let failed = Answer::parse(&ran.stderr);
    assert_eq!(failed.verdict, "failed", "{ran}");
    assert!(
        failed
            .field("error")
            .starts_with("there is no previous build to go back to"),
        "{ran}"
    );

    // The deploy: v2 renamed over v1's file.
    install(&binary, Path::new(ECHO_SERVER_NEXT));
    let v2 = server.upgrade(2);
    assert_eq!(kept.version(), V2);
    let status = server.status();
    assert_eq!(
        (status.field("binary"), status.field("previous-binary")),
        (path.as_str(), format!("{path} (deleted)").as_str()),
        "{status}"
    );

    let ran = ctl(&socket, &["previous"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let done = Answer::parse(&ran.stdout);
    assert_eq!(done.verdict, "done", "{ran}");
    let v1_again: u32 = done.field("new-pid").parse().expect("a pid");
    server.adopt(v1_again);
    assert_eq!(
        (done.field("old-pid"), done.field("generation")),
        (v2.to_string().as_str(), "3"),
        "{ran}"
    );
    assert_eq!(kept.version(), V1, "after going back");
    kept.echo(1);
    let status = server.status();
    assert_eq!(
        (
            status.field("pid"),
            status.field("generation"),
            status.field("binary"),
            status.field("upgrades-from"),
            status.field("previous-binary"),
        ),
        (
            v1_again.to_string().as_str(),
            "3",
            format!("{path} (deleted)").as_str(),
            path.as_str(),
            path.as_str(),
        ),
        "{status}"
    );

    // The path it upgrades from is still the one on disk.
    server.upgrade(4);
    assert_eq!(kept.version(), V2, "after upgrading again");
    kept.echo(2);
}

/// The echo server with a control socket: the first generation (the
/// test's child), and every later one the test heard of. Whatever
/// generation serves at the end is killed, heard of or not.
struct Server {
    first: KillOnDrop,
    port: u16,
    socket: PathBuf,
    survivors: Survivors,
}

impl Server {
    fn start(binary: &Path, socket: &Path, options: &[&str]) -> Server {
        let mut first = clean_command(binary)
            .args(["--listen", "127.0.0.1:0", "--control"])
            .arg(socket)
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(KillOnDrop)
            .expect("start echo-server");
        let stdout = env_support::lines_of(first.0.stdout.take().unwrap());
        relay(first.0.stderr.take().unwrap(), "  server: ");
        let port = listening_port(&stdout);
        Server {
            first,
            port,
            socket: socket.to_owned(),
            survivors: Survivors::default(),
        }
    }

    fn first_pid(&self) -> u32 {
        self.first.0.id()
    }

    /// Watches a new generation, which must still run.
    fn adopt(&mut self, pid: u32) {
        self.survivors
            .adopt(pid)
            .unwrap_or_else(|| panic!("the new generation (pid {pid}) is gone"));
    }

    /// `mitosisctl status`, which must succeed.
    fn status(&self) -> Answer {
        let ran = ctl(&self.socket, &["status"]);
        assert_eq!(ran.code, Some(0), "{ran}");
        let status = Answer::parse(&ran.stdout);
        assert_eq!(status.verdict, "status", "{ran}");
        status
    }

    /// `mitosisctl upgrade`, which must succeed as `generation`; the
    /// new pid, which then serves (the old one exits).
    fn upgrade(&mut self, generation: u64) -> u32 {
        let old = self.status().field("pid").parse().expect("a pid");
        let old = Process::expect(old, "the generation that serves");
        let ran = ctl(&self.socket, &["upgrade"]);
        assert_eq!(ran.code, Some(0), "{ran}");
        let done = Answer::parse(&ran.stdout);
        assert_eq!(
            (
                done.verdict.as_str(),
                done.field("old-pid"),
                done.field("generation")
            ),
            (
                "done",
                old.pid.to_string().as_str(),
                generation.to_string().as_str()
            ),
            "{ran}"
        );
        let new = done.field("new-pid").parse().expect("a pid");
        self.adopt(new);
        old.expect_exit("the old generation after `done`");
        new
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The generation that serves now, which the test may not have
        // heard of if it failed half-way through an upgrade.
        let Ok(stream) = UnixStream::connect(&self.socket) else {
            return;
        };
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut answer = String::new();
        if (&stream).write_all(b"status\n").is_ok() {
            (&stream).read_to_string(&mut answer).ok();
        }
        let pid = answer
            .lines()
            .find_map(|line| line.strip_prefix("pid: "))
            .and_then(|pid| pid.parse().ok());
        if let Some(process) = pid.and_then(Process::open) {
            process.kill();
        }
    }
}

/// A directory for the control socket, that only its owner can write,
/// whatever the umask.
fn control_dir(scratch: &Path, mode: u32) -> PathBuf {
    let dir = scratch.join("run");
    std::fs::create_dir(&dir).expect("create the socket's directory");
    chmod(&dir, mode);
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|error| panic!("chmod {mode:o} {}: {error}", path.display()));
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// How many sockets process `pid` has open.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// An answer as `mitosisctl` prints it: the verdict line, then
/// `key: value` lines.
struct Answer {
    verdict: String,
    fields: BTreeMap<String, String>,
    text: String,
}

impl Answer {
    fn parse(text: &str) -> Answer {
        let mut lines = text.lines();
        let verdict = lines.next().unwrap_or_default().to_owned();
        let fields = lines
            .take_while(|line| !line.is_empty())
            .map(|line| {
                let (key, value) = line
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("{line:?} is not `key: value`, in {text:?}"));
                (key.to_owned(), value.to_owned())
            })
            .collect();
        Answer {
            verdict,
            fields,
            text: text.to_owned(),
        }
    }

    /// A field that must be there.
    fn field(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key:?} in the answer:\n{}", self.text))
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `mitosisctl --socket <socket> <args>`, run to its end.
fn ctl(socket: &Path, args: &[&str]) -> Ran {
    run(
        Command::new(env_support::mitosisctl())
            .arg("--socket")
            .arg(socket)
            .args(args),
        &format!("mitosisctl {}", args.join(" ")),
    )
}

/// A program run to its end: its exit code and output.
struct Ran {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited with {:?}\n--- stdout:\n{}--- stderr:\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

/// A program started, whose output is collected as it comes.
struct Running {
    what: String,
    child: KillOnDrop,
    process: Process,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

fn start(command: &mut Command, what: &str) -> Running {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap_or_else(|error| panic!("start {what}: {error}"));
    let process = Process::expect(child.0.id(), what);
    Running {
        what: what.to_owned(),
        stdout: collect(child.0.stdout.take().unwrap()),
        stderr: collect(child.0.stderr.take().unwrap()),
        child,
        process,
    }
}

impl Running {
    fn has_exited(&self) -> bool {
        self.process.has_exited()
    }

    /// Waits for it to exit (up to [`PATIENCE`]) and for its output.
    fn finish(mut self) -> Ran {
        let status = self.child.expect_exit(&self.what);
        Ran {
            code: status.code(),
            stdout: self.stdout.join().expect("its stdout"),
            stderr: self.stderr.join().expect("its stderr"),
            what: self.what,
        }
    }
}

fn run(command: &mut Command, what: &str) -> Ran {
    start(command, what).finish()
}

/// Everything written to a pipe, once every writer has closed it.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).ok();
        text
    })
}

/// loadgen's last line, `result key=value ...`, as numbers.
fn loadgen_result(stdout: &str) -> BTreeMap<String, u64> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line in loadgen's output:\n{stdout}"));
    line.split(' ')
        .filter_map(|word| word.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.parse().unwrap_or(u64::MAX)))
        .collect()
}

/// Sends `request` to the control socket as a client of its own, and
/// returns the answer.
fn raw_ask(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|error| panic!("connect to {}: {error}", socket.display()));
    stream.write_all(request).expect("send a request");
    read_answer(&stream, &format!("{:?}", String::from_utf8_lossy(request)))
}

/// Reads an answer up to its closing empty line, or the end.
fn read_answer(stream: &UnixStream, what: &str) -> String {
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer.ends_with(b"\n\n") {
        match (&*stream).read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            // A program that closes the connection with bytes unread
            // resets it; what it sent before that is read first.
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => panic!("{what}: reading the answer: {error}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// One connection to the echo server, which may cross upgrades.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    name: String,
}

impl Conn {
    fn connect(port: u16, name: &str) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|error| panic!("{name}: connect to port {port}: {error}"));
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("set a read timeout");
        Conn {
            reader: BufReader::new(stream.try_clone().expect("clone a socket")),
            stream,
            name: name.to_owned(),
        }
    }

    /// Sends one line and returns the reply line, without its newline.
    fn ask(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|error| panic!("{}: send {line:?}: {error}", self.name));
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) => panic!("{}: EOF in answer to {line:?}", self.name),
            Ok(_) => reply.trim_end_matches('\n').to_owned(),
            Err(error) => panic!("{}: no answer to {line:?}: {error}", self.name),
        }
    }

    /// Request `n` comes back exactly.
    fn echo(&mut self, n: u32) {
        let request = format!("{}-{n} payload {n}", self.name);
        assert_eq!(
            self.ask(&request),
            request,
            "{}: the echo differs",
            self.name
        );
    }

    /// The version of the build that answers.
    fn version(&mut self) -> String {
        let reply = self.ask("VERSION");
        reply
            .strip_prefix("VERSION ")
            .unwrap_or_else(|| panic!("{}: {reply:?} answers VERSION", self.name))
            .to_owned()
    }
}
