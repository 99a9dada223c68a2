//! Byte buffers of 1 MiB and more cross through a pipe in protocol version 2
//! (PROTOCOL.md, step 6), with real processes: byte-exact, with or without
//! transparent huge pages, and without a second copy in either process. A
//! new process that dies or stalls in the middle of one leaves the old
//! process serving its state, SIGPIPE at its default action or not; an old
//! process that dies in the middle of one fails the new one's init at
//! once. A peer of protocol version 1, either side, gets them over TCP.
//!
//! Every test runs testdata with `--mitosis-log`, whose stderr says which
//! way the bytes crossed.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// Starts testdata holding a `size`-byte blob, with mitosis's log on
/// stderr, and returns the blob's `status` summary, checked.
fn start(name: &str, size: usize, args: &[&str], env: &[(&str, &str)]) -> (Run, Peer, String) {
    let size_arg = size.to_string();
    let mut spawn = Spawn::new(name)
        .args(&["--mitosis-log", "--blob-size", &size_arg])
        .args(args);
    for (key, value) in env {
        spawn = spawn.env(key, value);
    }
    let (run, mut peer) = spawn.start();
    let blob = field(&status(&mut peer), "blob").to_owned();
    assert_eq!(
        blob,
        testdata::blob_summary(&testdata::blob(size)),
        "the fresh state's blob"
    );
    (run, peer, blob)
}

/// The `mitosis-log` line of `pid` that contains `text`.
fn log_line(run: &mut Run, pid: &str, text: &str) -> String {
    let prefix = format!("mitosis-log pid={pid} ");
    run.stderr.wait_for(&format!("{prefix}... {text}"), |line| {
        line.starts_with(&prefix) && line.contains(text)
    })
}

/// `memory` of the process behind `peer`: peak resident memory and huge
/// pages, in KiB.
fn memory(peer: &mut Peer) -> (u64, u64) {
    let memory = peer.command("memory");
    let kib = |key| {
        field(&memory, key)
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("no {key} in {memory:?}"))
    };
    (kib("hwm"), kib("huge"))
}

/// Hands a `size`-byte blob over and checks that it came through the pipe,
/// byte-exact, and, from 64 MiB on, that neither process ever held more
/// than the state and a tenth of it (a smaller tenth would not cover the
/// program itself, a few MiB); returns the new process's huge pages (KiB).
fn hand_over_through_the_pipe(name: &str, size: usize, args: &[&str]) -> u64 {
    let (mut run, mut peer, blob) = start(name, size, args, &[]);
    let (old_peak, _) = memory(&mut peer);
    let ready = split_to_ready(&mut run, &mut peer, "split", "", 2);
    let new = field(&ready, "pid").to_owned();
    let old = run.first_pid.to_string();

    log_line(
        &mut run,
        &old,
        &format!("step 6: {size} of the out-of-line bytes went through the pipe"),
    );
    log_line(
        &mut run,
        &new,
        &format!("out of line ({size} through the pipe)"),
    );
    let after = status(&mut peer);
    assert_eq!(field(&after, "pid"), new, "{after}");
    assert_eq!(field(&after, "blob"), blob, "byte-exact: {after}");

    // The blob is nearly all of the state: each process's peak stays within
    // a tenth of it.
    let (new_peak, huge) = memory(&mut peer);
    let most = (size + size / 10) as u64 / 1024;
    assert!(
        size < 64 * MIB || (old_peak <= most && new_peak <= most),
        "peak resident memory: old {old_peak} KiB, new {new_peak} KiB, for a state of {} KiB",
        size / 1024
    );
    huge
}

#[test]
fn an_8_mib_blob_crosses_the_pipe_byte_exact() {
    hand_over_through_the_pipe("pipe-8", 8 * MIB, &[]);
}

#[test]
fn a_64_mib_blob_crosses_the_pipe_byte_exact_without_a_second_copy() {
    hand_over_through_the_pipe("pipe-64", 64 * MIB, &[]);
}

/// With transparent huge pages off in both processes (as on a kernel
/// without them), the blob crosses the same way, in small pages.
#[test]
fn without_huge_pages_a_64_mib_blob_crosses_all_the_same() {
    let huge = hand_over_through_the_pipe("pipe-no-thp", 64 * MIB, &["--no-thp"]);
    assert_eq!(huge, 0, "no huge pages in the new process");
}

/// The new process kills itself half-way through the blob, with SIGPIPE
/// at its default action in the old process: the pipe's write can raise no
/// signal there (the old process holds a read end of its own), the old
/// process sees the death, rolls back with its state whole, and serves on.
#[test]
fn a_new_process_killed_inside_a_piped_blob_leaves_the_old_one_serving() {
    let fault = format!("new:state@{}:kill", 32 * MIB);
    let (mut run, mut peer, blob) = start(
        "pipe-new-killed",
        64 * MIB,
        &["--sigpipe-default"],
        &[("MITOSIS_FAULT", &fault)],
    );
    peer.send("split\n");
    let line = peer.line();
    failed_and_reaped(&mut run, &line);
    assert!(
        line.contains("the new process exited (signal: 9 (SIGKILL))")
            && line.contains("step=step 6 (state transfer)"),
        "the new process died in step 6: {line:?}"
    );
    let status = status(&mut peer);
    assert_eq!(field(&status, "pid"), run.first_pid.to_string(), "{status}");
    assert_eq!(field(&status, "generation"), "1", "{status}");
    assert_eq!(field(&status, "blob"), blob, "the state came back whole");
    assert_eq!(peer.command("ping alive"), "pong alive");
}

/// The new process stalls half-way through the blob: the old process's
/// wait for room in the pipe ends at its transfer timeout, it kills the new
/// process, and serves on with its state.
#[test]
fn a_new_process_stalled_inside_a_piped_blob_meets_the_timeout() {
    let fault = format!("new:state@{}:stall=20000", 32 * MIB);
    let (mut run, mut peer, blob) = start(
        "pipe-new-stalled",
        64 * MIB,
        &["--transfer-timeout-ms", "1500"],
        &[("MITOSIS_FAULT", &fault)],
    );
    let started = Instant::now();
    peer.send("split\n");
    let line = peer.line();
    failed_and_reaped(&mut run, &line);
    assert!(
        line.contains("did not complete within the transfer timeout of 1.5s")
            && line.contains("step=step 6 (state transfer)"),
        "the transfer timeout ends the wait: {line:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "no hang");
    assert_eq!(field(&status(&mut peer), "blob"), blob);
}

/// The old process dies half-way through the blob: the new process finds
/// the pipe closed and fails its init at once, long before its timeout.
#[test]
fn an_old_process_killed_inside_a_piped_blob_fails_the_new_ones_init() {
    let fault = format!("old:state@{}:kill", 32 * MIB);
    let (mut run, mut peer, _) = start(
        "pipe-old-killed",
        64 * MIB,
        &["--timeout-ms", "60000"],
        &[("MITOSIS_FAULT", &fault)],
    );
    let started = Instant::now();
    peer.send("split\n");
    let splitting = run.stdout.expect("splitting child=");
    let child: u32 = field(&splitting, "child").parse().unwrap();
    let init = run
        .stderr
        .wait_for("init error", |line| line.starts_with("init error:"));
    assert!(
        init.contains("step 6 (state transfer)"),
        "the new process names step 6: {init:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it noticed at once, not at its 60 s timeout"
    );
    assert!(
        wait_pid_exit(child, TIMEOUT).is_some(),
        "the new process exits"
    );
}

/// `MITOSIS_MAX_VERSION=<side>:1` makes that side speak protocol version 1
/// only, as a build of an earlier mitosis does: the blob crosses over TCP,
/// byte-exact, and no pipe is made.
fn over_tcp_with_a_version_1(side: &str) {
    const SIZE: usize = 8 * MIB;
    let cap = format!("{side}:1");
    let (mut run, mut peer, blob) = start(
        &format!("pipe-v1-{side}"),
        SIZE,
        &[],
        &[("MITOSIS_MAX_VERSION", &cap)],
    );
    let ready = split_to_ready(&mut run, &mut peer, "split", "", 2);
    let new = field(&ready, "pid").to_owned();
    log_line(&mut run, &new, "protocol version 1");
    log_line(
        &mut run,
        &new,
        &format!("{SIZE} out of line (0 through the pipe)"),
    );
    assert_eq!(field(&status(&mut peer), "blob"), blob, "byte-exact");
    let piped = run
        .stderr
        .seen()
        .iter()
        .filter(|line| line.contains("went through the pipe"))
        .count();
    assert_eq!(piped, 0, "the old process made no pipe");
}

#[test]
fn a_new_process_of_protocol_version_1_gets_the_blob_over_tcp() {
    over_tcp_with_a_version_1("new");
}

#[test]
fn an_old_process_of_protocol_version_1_sends_the_blob_over_tcp() {
    over_tcp_with_a_version_1("old");
}
