//! Signals to a plain echo server, no supervisor: `kill -USR2 <pid>`
//! upgrades it (the convention of nginx, unicorn and puma) and keeps every
//! connection; a burst of 10 more while that upgrade is under way starts no
//! second one, whether the upgrade succeeds or fails; SIGTERM and SIGINT
//! stop it with status 0.

mod env_support;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use env_support::{
    Client, ECHO_SERVER, KillOnDrop, Process, Survivors, clean_command, echo_server_copy, install,
    install_script, line_where, lines_of, listening_port, next_line, refuses_connections,
    scratch_dir,
};
use rustix::process::Signal;

/// The echo server started by the test, its port, and its stderr's lines
/// (the log, where a failed upgrade is reported).
struct Server {
    child: KillOnDrop,
    port: u16,
    log: Receiver<String>,
}

impl Server {
    fn start(binary: &Path) -> Server {
        let mut child = clean_command(binary)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(KillOnDrop)
            .expect("start echo-server");
        let stdout = lines_of(child.0.stdout.take().unwrap());
        let log = lines_of(child.0.stderr.take().unwrap());
        let port = listening_port(&stdout);
        Server { child, port, log }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

#[test]
fn sigusr2_upgrades_and_keeps_the_connections() {
    let server = Server::start(Path::new(ECHO_SERVER));
    let mut survivors = Survivors::default();
    let mut kept = Client::connect(server.port, "kept");
    kept.echo();
    let first = Process::expect(server.pid(), "the first generation");
    let mut child = server.child;
    relay_log(server.log);

    // `kill -USR2 <pid>`: the process that got it hands over and exits,
    // quietly.
    first.signal(Signal::USR2);
    let status = child.expect_exit("the first generation after SIGUSR2");
    assert!(
        status.success(),
        "the first generation exited with {status}"
    );
    kept.echo();
    // Whoever serves now was started by the signal: the reply to an
    // UPGRADE names it as the old pid, as generation 2's successor.
    let (by_signal, third, generation) = kept.expect_upgrade();
    assert_ne!(by_signal, first.pid, "the first generation still served");
    assert_eq!(generation, 3, "one upgrade by the signal, one by UPGRADE");
    survivors.adopt(third).expect("the third generation serves");
    kept.echo();
    eprintln!(
        "kill -USR2 {}: pid {} -> {by_signal}; UPGRADE then -> {third} (generation {generation})",
        first.pid, first.pid
    );

    // A generation started by an upgrade upgrades on SIGUSR2 too.
    let third_process = survivors.get(third).unwrap();
    third_process.signal(Signal::USR2);
    third_process.expect_exit("the third generation after SIGUSR2");
    kept.echo();
    let (fourth, fifth, generation) = kept.expect_upgrade();
    assert_ne!(fourth, third, "the third generation still served");
    assert_eq!(generation, 5);
    survivors.adopt(fifth).expect("the fifth generation serves");
    eprintln!("kill -USR2 {third}: pid {third} -> {fourth}; UPGRADE then -> {fifth}");

    // A new connection is served too; then SIGTERM to a generation that
    // is not the test's child stops it.
    let mut fresh = Client::connect(server.port, "fresh");
    fresh.echo();
    let fifth_process = survivors.get(fifth).unwrap();
    fifth_process.signal(Signal::TERM);
    fifth_process.expect_exit("the fifth generation after SIGTERM");
    kept.expect_closed();
    fresh.expect_closed();
    assert!(refuses_connections(server.port));
}

/// The build on disk takes about a second to start: a script that says
/// `started <pid>` on a FIFO, sleeps, then execs the real echo server (or,
/// as a slow broken build, exits 1). SIGUSR2 starts an upgrade; once the
/// new process has said `started`, 10 more SIGUSR2 arrive while it starts.
/// Exactly one new process ever runs the script.
#[test]
fn a_burst_of_sigusr2_during_an_upgrade_starts_no_second_one() {
    let dir = scratch_dir("signal-burst");
    let binary = echo_server_copy(&dir);
    let real = dir.join("echo-server-real");
    install(&real, Path::new(ECHO_SERVER));
    let fifo = dir.join("started");
    let (mut marker, started) = env_support::fifo(&fifo);

    let server = Server::start(&binary);
    let mut survivors = Survivors::default();
    let mut kept = Client::connect(server.port, "kept");
    kept.echo();
    let first = Process::expect(server.pid(), "the first generation");
    let (mut child, log) = (server.child, server.log);

    // A slow broken build first: the upgrade fails after a second, and
    // the signals that came meanwhile start no second attempt.
    install_script(
        &binary,
        &format!(
            "#!/bin/sh\necho \"started $$\" > '{}'\nsleep 1\nexit 1\n",
            fifo.display()
        ),
    );
    first.signal(Signal::USR2);
    let attempt = next_line(&started, "the slow broken build's `started`");
    burst(&first);
    let (warning, _) = line_where(&log, "the failed upgrade's warning", |line| {
        line.contains("WARN") && line.contains("upgrade failed")
    });
    eprintln!("slow broken build ({attempt}), 10 SIGUSR2 while it started: {warning}");
    // A second attempt would start in the loop's next pass, the one that
    // answers this request.
    kept.echo();
    assert_eq!(
        lines_until_marker(&mut marker, &started, "after-failure"),
        Vec::<String>::new(),
        "a second upgrade started after the failed one"
    );
    assert!(!first.has_exited(), "the first generation exited");

    // A slow good build: one upgrade, one new process.
    install_script(
        &binary,
        &format!(
            "#!/bin/sh\necho \"started $$\" > '{}'\nsleep 1\nexec '{}' \"$@\"\n",
            fifo.display(),
            real.display()
        ),
    );
    first.signal(Signal::USR2);
    let line = next_line(&started, "the slow build's `started`");
    let new_pid: u32 = line
        .strip_prefix("started ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the script said {line:?}"));
    survivors.adopt(new_pid);
    burst(&first);
    let status = child.expect_exit("the first generation after the upgrade");
    assert!(
        status.success(),
        "the first generation exited with {status}"
    );
    relay_log(log);
    assert_eq!(
        lines_until_marker(&mut marker, &started, "after-upgrade"),
        Vec::<String>::new(),
        "a second new process started"
    );
    kept.echo();
    // The script's process, now the real server, serves as generation 2:
    // the next upgrade runs the program's path again, the script (a
    // wrapper at the program's path stays in the chain), as generation 3.
    let (old, newest, generation) = kept.expect_upgrade();
    assert_eq!(
        (old, generation),
        (new_pid, 3),
        "exactly one upgrade came of 11 signals"
    );
    survivors.adopt(newest);
    kept.echo();
    assert_eq!(
        lines_until_marker(&mut marker, &started, "at-the-end"),
        vec![format!("started {newest}")],
        "the UPGRADE ran the script once, and no stray new process started late"
    );
    eprintln!(
        "slow build: SIGUSR2 + 10 more to {}: one new process {new_pid}; UPGRADE then \
         {old} -> {newest}, generation {generation}",
        first.pid
    );
}

/// Ten SIGUSR2, a little apart so that they arrive as separate signals
/// rather than merging into one pending signal.
fn burst(process: &Process) {
    for _ in 0..10 {
        process.signal(Signal::USR2);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a marker line to the FIFO and returns the lines that came
/// before it: every line written before the marker is read before it.
fn lines_until_marker(fifo: &mut File, lines: &Receiver<String>, name: &str) -> Vec<String> {
    let marker = format!("marker {name}");
    fifo.write_all(format!("{marker}\n").as_bytes())
        .expect("write a marker");
    let (_, before) = line_where(lines, "the marker", |line| line == marker);
    before
}

fn relay_log(log: Receiver<String>) {
    std::thread::spawn(move || {
        for line in log {
            eprintln!("  {line}");
        }
    });
}

#[test]
fn sigterm_and_sigint_stop_it_with_status_0() {
    for signal in [Signal::TERM, Signal::INT] {
        let server = Server::start(Path::new(ECHO_SERVER));
        let mut kept = Client::connect(server.port, "kept");
        kept.echo();
        let process = Process::expect(server.pid(), "the server");
        let mut child = server.child;
        relay_log(server.log);
        process.signal(signal);
        let status = child.expect_exit("the server after the signal");
        assert_eq!(status.code(), Some(0), "{signal:?}: {status}");
        kept.expect_closed();
        assert!(refuses_connections(server.port), "{signal:?}");
        eprintln!("{signal:?} to {}: exited with {status}", process.pid);
    }
}

/// A process started by an upgrade ignores its predecessor's upgrade
/// signal from its first instruction until it has a trigger of its own:
/// SIGUSR2 sent to it while it sets up never kills it. Here the new build
/// receives the state and hangs without committing, so the old process
/// gives it up at its transfer timeout, and says so; had a signal killed
/// it, the old process would report that it exited.
#[test]
fn the_upgrade_signal_never_kills_a_new_process_before_its_trigger() {
    let mut server = clean_command(ECHO_SERVER)
        .args(["--listen", "127.0.0.1:0", "--transfer-timeout-ms", "1500"])
        .arg("--hang-after-receive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("start echo-server");
    let stdout = lines_of(server.0.stdout.take().unwrap());
    let port = listening_port(&stdout);
    let old = server.0.id();
    let mut kept = Client::connect(port, "kept");
    kept.echo();
    let asking = std::thread::spawn(move || {
        let reply = kept.upgrade();
        (kept, reply)
    });
    // The new process, once `arrive` has set SIGUSR2 aside (bit 12 of
    // SigIgn); nothing announces that to an outsider.
    let sigusr2_ignored = |pid: u32| {
        env_support::status_field(pid, "SigIgn")
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGUSR2 - 1)) != 0)
    };
    let new =
        env_support::eventually(
            "the new process ignores SIGUSR2",
            || match env_support::children_of(old)[..] {
                [new] if sigusr2_ignored(new) => Ok(new),
                ref children => Err(format!("children of {old}: {children:?}")),
            },
        );
    let new_process = Process::expect(new, "the new process");
    for _ in 0..5 {
        new_process.signal(Signal::USR2);
    }
    let (mut kept, reply) = asking.join().expect("the client");
    match reply {
        env_support::Reply::Failed(reason) => assert!(
            reason.contains("transfer timeout") && !reason.contains("signal"),
            "the new process was not given up at the transfer timeout: {reason}"
        ),
        other => panic!("a build that never commits was not refused: {other:?}"),
    }
    new_process.expect_exit("the new process, given up");
    kept.echo();
    eprintln!(
        "5 x SIGUSR2 to the new process {new} while it set up: it lived until the transfer timeout"
    );
}
