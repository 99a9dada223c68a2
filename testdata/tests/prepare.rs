//! The two-phase handover with real processes: the old process prepares
//! the upgrade and keeps serving while the new build starts (slowly, or
//! never), and a new build that receives the state but does not commit
//! leaves everything with the old process, byte for byte and inode for
//! inode.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Sends `status` over and over until the new process announces itself,
/// asserting that every answer until then came from the old process.
/// Returns how many it answered and the `ready` line.
fn serve_until_ready(run: &Run, peer: &mut Peer) -> (u32, String) {
    let old = run.first_pid.to_string();
    let mut answered = 0;
    loop {
        peer.send("status\n");
        let line = peer.line();
        if line.starts_with("ready ") {
            // The last `status` crossed with the state, unanswered, and
            // the new process answers it.
            let status = peer.line();
            assert_eq!(field(&status, "pid"), field(&line, "pid"), "{status}");
            return (answered, line);
        }
        assert_eq!(
            field(&line, "pid"),
            old,
            "answered by the old process: {line}"
        );
        assert_eq!(field(&line, "generation"), "1", "{line}");
        answered += 1;
    }
}

/// Sends `status` until the preparation fails; every answer until then
/// comes from the old process. Returns how many and the failure line.
fn serve_until_failed(run: &Run, peer: &mut Peer, prefix: &str) -> (u32, String) {
    let old = run.first_pid.to_string();
    let mut answered = 0;
    loop {
        peer.send("status\n");
        let line = peer.line();
        if line.starts_with(prefix) {
            // The `status` sent meanwhile is still answered.
            let status = peer.line();
            assert_eq!(field(&status, "pid"), old, "{status}");
            return (answered, line);
        }
        assert_eq!(
            field(&line, "pid"),
            old,
            "answered by the old process: {line}"
        );
        answered += 1;
    }
}

fn preparing(peer: &mut Peer, command: &str) -> u32 {
    let line = peer.command(command);
    assert!(line.starts_with("preparing child="), "{line:?}");
    field(&line, "child").parse().unwrap()
}

/// A new build that sleeps 2 s before it even reaches `init`: every request
/// in those 2 s is answered by the old process, and then the handover
/// completes with the state.
#[test]
fn a_hung_start_is_served_through_and_then_hands_over() {
    let (run, mut peer) = Spawn::new("prepare-slow").start();
    let before = peer.command("status");
    let started = Instant::now();
    let child = preparing(&mut peer, "prepare sleep=2000");
    let (answered, ready) = serve_until_ready(&run, &mut peer);
    let waited = started.elapsed();
    assert_eq!(field(&ready, "pid"), child.to_string(), "{ready}");
    assert_eq!(field(&ready, "generation"), "2", "{ready}");
    assert!(
        waited >= Duration::from_millis(2000),
        "the new build slept 2 s before init, yet it was ready after {waited:?}"
    );
    assert!(
        answered >= 20,
        "the old process answered only {answered} requests in {waited:?}"
    );
    let after = peer.command("status");
    assert_eq!(field(&after, "blob"), field(&before, "blob"));
    assert_eq!(peer.command("ping after"), "pong after");
}

/// A new build whose own set-up (after `arrive`, before it asks for the
/// state) takes 1.5 s: the old process serves throughout.
#[test]
fn a_slow_set_up_after_the_handshake_is_served_through() {
    let (mut run, mut peer) = Spawn::new("prepare-setup").start();
    let child = preparing(&mut peer, "prepare setup-sleep=1500");
    let (answered, ready) = serve_until_ready(&run, &mut peer);
    assert_eq!(field(&ready, "pid"), child.to_string(), "{ready}");
    assert!(answered >= 10, "only {answered} requests answered");
    // The new process had connected and agreed on the schema first.
    let setting_up = run.stdout.expect("setting up pid=");
    assert_eq!(field(&setting_up, "pid"), child.to_string());
}

/// A new build that never reaches `init`: the old process keeps serving,
/// gets a start-timeout error that names the option, and the child is
/// killed and reaped.
#[test]
fn a_start_that_never_finishes_times_out_and_the_child_is_reaped() {
    let (run, mut peer) = Spawn::new("prepare-never")
        .args(&["--start-timeout-ms", "1500"])
        .start();
    let before = peer.command("status");
    let started = Instant::now();
    let child = preparing(&mut peer, "prepare hang");
    let (answered, line) = serve_until_failed(&run, &mut peer, "prepare failed: ");
    let waited = started.elapsed();
    assert!(
        line.contains("not ready within the start timeout of 1.5s")
            && line.contains("SplitOptions::start_timeout")
            && line.contains("step=step 2 (connect)"),
        "{line}"
    );
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(answered >= 10, "only {answered} requests answered");
    assert_eq!(field(&line, "children"), "none", "{line}");
    assert!(is_gone(child, run.first_pid), "{child} was reaped");
    assert_eq!(
        fd_channel_dirs(run.first_pid),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(peer.command("status"), before);
}

/// A new build that connects but whose set-up never finishes: the same,
/// in step 5.
#[test]
fn a_set_up_that_never_finishes_times_out_in_step_5() {
    let (run, mut peer) = Spawn::new("prepare-setup-never")
        .args(&["--start-timeout-ms", "1500"])
        .start();
    let child = preparing(&mut peer, "prepare setup-sleep=600000");
    let (_, line) = serve_until_failed(&run, &mut peer, "prepare failed: ");
    assert!(
        line.contains("not ready within the start timeout of 1.5s")
            && line.contains("step=step 5 (set-up)"),
        "{line}"
    );
    assert!(is_gone(child, run.first_pid), "{child} was reaped");
}

/// A preparation that fails at once (a missing binary) arrives through the
/// same readiness check, and the program carries on.
#[test]
fn a_missing_binary_is_reported_through_the_readiness_check() {
    let (_run, mut peer) = Spawn::new("prepare-missing").start();
    let line = peer.command("prepare binary=/nonexistent/mitosis-new-build");
    assert_eq!(line, "preparing child=none");
    let failed = peer.line();
    assert!(
        failed.starts_with("prepare failed: could not start the new binary /nonexistent/")
            && failed.contains("step=step 1 (spawn)"),
        "{failed}"
    );
    assert_eq!(peer.command("ping after"), "pong after");
}

/// The new process receives the state and then exits, hangs, or refuses
/// it, without committing: the old process gets everything back, with a
/// half-received request byte-exact in its buffer and the same fds, and
/// serves on.
fn no_commit(name: &str, fault: &str, expected: &[&str]) {
    let (mut run, mut peer) = Spawn::new(name)
        .args(&["--spare-fds", "40", "--transfer-timeout-ms", "1500"])
        .start();
    let before = peer.command("status");
    let fds_before = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap());
    // Half a request rides along in the state's buffer.
    peer.send(&format!("prepare {fault}\nping hal"));
    let line = peer.line();
    assert!(line.starts_with("preparing child="), "{line:?}");
    let child: u32 = field(&line, "child").parse().unwrap();
    let failed = peer.line();
    assert!(
        failed.starts_with("split failed: ") && expected.iter().all(|e| failed.contains(e)),
        "expected {expected:?}: {failed}"
    );
    // The new process did have the state.
    let received = run.stdout.expect("received pid=");
    assert_eq!(field(&received, "pid"), child.to_string());
    assert_eq!(field(&received, "generation"), "1");
    assert_eq!(field(&failed, "children"), "none", "{failed}");
    assert!(is_gone(child, run.first_pid), "{child} was reaped");
    // The rest of the request completes the half kept in the state.
    peer.send("f\n");
    assert_eq!(peer.line(), "pong half");
    assert_eq!(peer.command("status"), before);
    let fds_after = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap());
    assert_eq!(fds_after, fds_before, "the same fds, the same inodes");
}

#[test]
fn no_commit_because_the_new_process_exits() {
    no_commit(
        "nocommit-exit",
        "no-commit-exit",
        &[
            "the new process exited (exit status: 3)",
            "step=step 8 (commit)",
        ],
    );
}

#[test]
fn no_commit_because_the_new_process_hangs() {
    no_commit(
        "nocommit-hang",
        "no-commit-hang",
        &[
            "within the transfer timeout of 1.5s",
            "SplitOptions::transfer_timeout",
            "step=step 8 (commit)",
        ],
    );
}

#[test]
fn no_commit_because_the_new_process_refuses_the_state() {
    no_commit(
        "nocommit-refuse",
        "refuse",
        &[
            "testdata was told to refuse the state",
            "step=step 8 (commit)",
        ],
    );
}

/// Dropping the `Upgrade` before handing over stops and reaps the new
/// process before it returns, whether that process is still starting or
/// already waiting for the state, and the program serves on with its state
/// and may prepare again at once.
#[test]
fn a_dropped_upgrade_stops_the_new_process() {
    for fault in ["hang", "setup-sleep=600000"] {
        let (run, mut peer) = Spawn::new("prepare-drop").start();
        let before = peer.command("status");
        let child = preparing(&mut peer, &format!("prepare {fault}"));
        assert_eq!(peer.command("cancel"), "cancelled");
        assert!(
            wait_pid_exit(child, Duration::from_secs(10)).is_some(),
            "{fault}: the new process {child} outlived its Upgrade"
        );
        assert!(is_gone(child, run.first_pid), "{fault}: {child} was reaped");
        assert_eq!(peer.command("status"), before);
        // Dropping returned after the reaping: the next upgrade may start.
        let again = preparing(&mut peer, "prepare hang");
        assert_ne!(again, child);
        assert_eq!(peer.command("cancel"), "cancelled");
    }
    // And one that was ready, waiting for the state.
    let (mut run, mut peer) = Spawn::new("prepare-drop-ready").start();
    let child = preparing(&mut peer, "prepare hold");
    run.stdout.expect("held ready");
    assert_eq!(peer.command("cancel"), "cancelled");
    assert!(
        wait_pid_exit(child, Duration::from_secs(10)).is_some(),
        "the ready new process {child} outlived its Upgrade"
    );
    assert_eq!(peer.command("ping after"), "pong after");
}

/// The scheduling policy of each thread of `pid`, from field 41 of
/// `/proc/<pid>/task/<tid>/stat` (0 normal, 5 idle).
fn policies(pid: u32) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the tasks") {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        // Field 3 is the first after the command; the policy is field 41.
        policies.push(after_comm.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    policies
}

/// The new build starts at idle CPU priority, so that its start takes only
/// the CPU time the service leaves over (for a quarter of a second at
/// most), and every one of its threads runs at the old process's own
/// policy once it is ready.
#[test]
fn the_new_build_starts_at_idle_priority_and_serves_at_normal() {
    const SCHED_IDLE: u32 = 5;
    let (_run, mut peer) = Spawn::new("prepare-priority")
        .args(&["--thread-before-init"])
        .start();
    let asked = Instant::now();
    let child = preparing(&mut peer, "prepare hang");
    let first = policies(child);
    if asked.elapsed() < Duration::from_millis(200) {
        assert_eq!(first, [SCHED_IDLE], "while it starts");
    } else {
        eprintln!(
            "too slow to see the idle start ({:?}); its end still counts",
            asked.elapsed()
        );
    }
    // A head start for the service, not a sentence: a build that is not
    // ready after a quarter of a second goes on at normal priority. No
    // event says so; look until it happens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while policies(child) != [0] {
        assert!(Instant::now() < deadline, "still {:?}", policies(child));
        std::thread::yield_now();
    }
    assert_eq!(peer.command("cancel"), "cancelled");

    preparing(&mut peer, "prepare");
    let ready = peer.line();
    let new: u32 = field(&ready, "pid").parse().unwrap();
    let after = policies(new);
    assert!(
        after.len() >= 2 && after.iter().all(|&policy| policy == 0),
        "every thread of the new process, once it took over: {after:?}"
    );
}
