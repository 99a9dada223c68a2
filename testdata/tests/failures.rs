//! Failed handovers: the old process gets its state back, the failed new
//! process is gone and reaped, and serving goes on as if nothing happened.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Checks that the old process still serves, unchanged: same pid, same
/// generation.
fn still_serving(run: &Run, peer: &mut Peer, label: &str) {
    let status = peer.command("status");
    assert_eq!(
        field(&status, "pid"),
        run.first_pid.to_string(),
        "{label}: {status:?}"
    );
    assert_eq!(field(&status, "generation"), "1", "{label}: {status:?}");
    assert_eq!(peer.command("ping after"), "pong after", "{label}");
}

/// Sends `command` and returns the `split failed` line, how long it took,
/// and the pid of the child that failed.
fn failed_split(run: &mut Run, peer: &mut Peer, command: &str) -> (String, Duration, u32) {
    let started = Instant::now();
    let line = peer.command(command);
    let elapsed = started.elapsed();
    let child = failed_and_reaped(run, &line);
    (line, elapsed, child)
}

/// A child that fails before committing, with 60 s timeouts: the
/// failure must be reported as soon as the child is gone, not at the
/// timeout.
fn child_fails_before_commit(name: &str, fault: &str, exit: &str) {
    let (mut run, mut peer) = Spawn::new(name).args(&["--timeout-ms", "60000"]).start();
    let (line, elapsed, _) = failed_split(&mut run, &mut peer, &format!("split {fault}"));
    assert!(
        elapsed < Duration::from_secs(30),
        "the failure came after {elapsed:?}, as if the parent waited for the 60 s timeout: {line:?}"
    );
    assert!(
        line.contains("the new process exited") && line.contains(exit),
        "the message names the exit ({exit}): {line:?}"
    );
    assert!(line.contains("step=step "), "the step is named: {line:?}");
    still_serving(&run, &mut peer, "after the failed split");
}

#[test]
fn child_exits_before_commit() {
    child_fails_before_commit("exit", "exit", "exit status: 3");
}

#[test]
fn child_panics_before_commit() {
    child_fails_before_commit("panic", "panic", "exit status: 101");
    // (the panic message itself went to the shared stderr)
}

#[test]
fn child_aborts_before_commit() {
    child_fails_before_commit("abort", "abort", "SIGABRT");
}

#[test]
fn child_hangs_is_killed_at_timeout() {
    let (mut run, mut peer) = Spawn::new("hang").args(&["--timeout-ms", "1000"]).start();
    let (line, elapsed, child) = failed_split(&mut run, &mut peer, "split hang");
    assert!(
        line.contains("not ready within the start timeout of 1s") && line.contains("was killed"),
        "a timeout message: {line:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1000),
        "the child was given its full start timeout, but the failure came after {elapsed:?}"
    );
    assert!(
        is_gone(child, run.first_pid),
        "the hung child {child} was killed and reaped"
    );
    still_serving(&run, &mut peer, "after the timeout");
    // The in-flight flag is released: the next split works.
    peer.send("split\n");
    let ready = peer.line();
    assert!(
        ready.starts_with("ready "),
        "a split after the timeout succeeds: {ready:?}"
    );
    assert_eq!(field(&ready, "generation"), "2", "{ready:?}");
}

#[test]
fn spawn_fails_returns_state() {
    let (run, mut peer) = Spawn::new("spawn-fails").start();
    let line = peer.command("split binary=/nonexistent/x");
    assert!(
        line.starts_with("split refused: could not start the new binary /nonexistent/x"),
        "the split is refused before spawning, naming the binary: {line:?}"
    );
    still_serving(&run, &mut peer, "after the refused split");
}

#[test]
fn spawn_fails_for_a_binary_that_is_not_executable() {
    let (run, mut peer) = Spawn::new("spawn-noexec").start();
    let binary = run.dir.join("not-executable");
    std::fs::write(&binary, b"#!/bin/sh\n").unwrap();
    let line = peer.command(&format!("split binary={}", binary.display()));
    assert!(
        line.starts_with(&format!(
            "split refused: could not start the new binary {}",
            binary.display()
        )) && line.contains("Permission denied"),
        "the split is refused before spawning, naming the binary and the cause: {line:?}"
    );
    still_serving(&run, &mut peer, "after the refused split");
}

/// `init` in a real process, given a flag no split would pass.
#[test]
fn malformed_flag_is_a_clear_error() {
    let cases = [
        (
            &["--mitosis=abc"][..],
            "bad mitosis flag `--mitosis=abc`: the port is not a number",
        ),
        (
            &["--mitosis=0"],
            "bad mitosis flag `--mitosis=0`: port 0 is not a port",
        ),
        (
            &["--mitosis=65536"],
            "bad mitosis flag `--mitosis=65536`: the port is above 65535",
        ),
        (
            &["--mitosis", "x"],
            "bad mitosis flag `--mitosis x`: the port is not a number",
        ),
        (
            &["--mitosis"],
            "bad mitosis flag `--mitosis`: the port is missing",
        ),
        (
            &["--mitosis=4000"],
            "started with --mitosis but the environment variable MITOSIS_FD_SOCKET is missing",
        ),
        (
            &["--mitosis=4000:x:/run/fd"],
            "bad mitosis flag `--mitosis=4000:x:/run/fd`: the signals are not numbers",
        ),
        (
            &["--mitosis=4000:12"],
            "bad mitosis flag `--mitosis=4000:12`: the fd channel's path is missing",
        ),
    ];
    for (args, expected) in cases {
        let output = std::process::Command::new(TESTDATA)
            .args(args)
            .env_remove("MITOSIS_FD_SOCKET")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(i32::from(testdata::EXIT_INIT_ERROR)),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.starts_with(&format!("init error: {expected}")),
            "{args:?} gives {stderr:?}, expected {expected:?}"
        );
        assert!(output.stdout.is_empty(), "{args:?} started serving anyway");
    }
}

#[test]
fn schema_mismatch_rolls_back() {
    let (mut run, mut peer) = Spawn::new("schema").start();
    let schema2 = run.install(TESTDATA_SCHEMA2, "testdata-schema2");
    let (line, _, _) = failed_split(
        &mut run,
        &mut peer,
        &format!("split binary={}", schema2.display()),
    );
    assert!(
        line.contains("testdata::State v1") && line.contains("testdata::State v2"),
        "the old process's error names both schemas: {line:?}"
    );
    let init = run.stderr.expect("init error:");
    assert!(
        init.contains("testdata::State v1") && init.contains("testdata::State v2"),
        "the new process's error names both schemas: {init:?}"
    );
    still_serving(&run, &mut peer, "after the schema mismatch");
}

/// A state over a limit fails in both processes, each saying which limit,
/// and comes back whole.
fn over_a_limit_rolls_back(name: &str, args: &[&str], what: &str, max: &str) {
    let (mut run, mut peer) = Spawn::new(name).args(args).start();
    let status = peer.command("status");
    let (line, _, _) = failed_split(&mut run, &mut peer, "split");
    assert!(
        line.contains(&format!(
            "{what} or more, over the handover's limit of {max}"
        )) && line.contains("step=step 6 (state transfer)"),
        "the old process names the limit: {line:?}"
    );
    let init = run.stderr.expect("init error:");
    assert!(
        init.contains("the other process gave up in step 6 (state transfer)")
            && init.contains(&format!("over the handover's limit of {max}")),
        "the new process says why: {init:?}"
    );
    still_serving(&run, &mut peer, "after the refused state");
    assert_eq!(peer.command("status"), status, "the state came back whole");
}

#[test]
fn state_over_the_byte_limit_rolls_back() {
    over_a_limit_rolls_back(
        "limit-bytes",
        &["--blob-size", "200000", "--max-state-bytes", "100000"],
        "state bytes",
        "100000",
    );
}

#[test]
fn fds_over_the_limit_roll_back() {
    // 3 fds of its own (listener, peer, log) and 10 spare ones.
    over_a_limit_rolls_back(
        "limit-fds",
        &["--spare-fds", "10", "--max-fds", "12"],
        "13 fds",
        "12",
    );
}

#[test]
fn protocol_version_mismatch_parent_side() {
    let (mut run, mut peer) = Spawn::new("version-parent").start();
    let fake = run.install(FAKE_CHILD, "fake-child");
    let (line, _, _) = failed_split(
        &mut run,
        &mut peer,
        &format!("split binary={}", fake.display()),
    );
    assert!(
        line.contains("protocol version mismatch") && line.contains("4..=4"),
        "the old process reports the mismatch and the child's versions: {line:?}"
    );
    let welcome = run.stderr.expect("fake-child:");
    assert_eq!(
        welcome, "fake-child: welcome chosen=0 min=1 max=3 token=ok",
        "the old process proved the secret and said it speaks 1..=3 only"
    );
    still_serving(&run, &mut peer, "after the version mismatch");
}

#[test]
fn second_split_while_in_flight_is_refused() {
    let (mut run, mut peer) = Spawn::new("twice").args(&["--timeout-ms", "1000"]).start();
    let (line, _, _) = failed_split(&mut run, &mut peer, "split twice hang");
    let second = run.stdout.expect("second split ");
    assert!(
        second.starts_with("second split refused: a split is already in progress")
            && second.ends_with(" state=7"),
        "the second split is refused with its state: {second:?}"
    );
    assert!(line.contains("within the start timeout"), "{line:?}");
    still_serving(&run, &mut peer, "after both splits");
}

#[test]
fn fds_after_failure() {
    let (mut run, mut peer) = Spawn::new("fds-failure").start();
    let before = peer.command("fds");
    failed_split(&mut run, &mut peer, "split exit");
    let after = peer.command("fds");
    assert_eq!(after, before, "a failed split leaves exactly the same fds");
    assert_eq!(
        peer.command("env"),
        "env",
        "no MITOSIS_ variable in the old process"
    );
}

/// The new process dies while the state streams to it: the old process
/// gets everything back, blob and fds intact.
#[test]
fn child_killed_mid_transfer_rolls_back() {
    const BLOB: usize = 128 << 20;
    let (mut run, mut peer) = Spawn::new("child-killed")
        .args(&["--blob-size", &BLOB.to_string(), "--timeout-ms", "60000"])
        .start();
    let before = peer.command("status");
    let fds = peer.command("fds");
    peer.send("split\n");
    let splitting = run.stdout.expect("splitting child=");
    let child: u32 = field(&splitting, "child").parse().unwrap();

    // The new process's memory grows as the DATA frames arrive: kill it
    // once a quarter of the state is there.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the state never started to arrive"
        );
        let status = std::fs::read_to_string(format!("/proc/{child}/status"))
            .unwrap_or_else(|e| panic!("the new process {child} is gone before the kill: {e}"));
        if vm_rss_kib(&status) > (BLOB as u64 / 4) >> 10 {
            break;
        }
        std::thread::yield_now();
    }
    let pid = rustix::process::Pid::from_raw(child as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("SIGKILL the child");

    let line = peer.line();
    assert!(
        line.starts_with("split failed: ") && line.contains("SIGKILL"),
        "the old process reports the killed child: {line:?}"
    );
    assert!(
        line.contains("step=step 6 (state transfer)"),
        "killed during the transfer: {line:?}"
    );
    assert_eq!(field(&line, "children"), "none", "{line:?}");
    assert_eq!(peer.command("status"), before, "the state came back intact");
    assert_eq!(peer.command("fds"), fds, "with the same fds");
}

fn vm_rss_kib(status: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
