//! `BufWriter` and `BufReader` in a real handover, with `testdata-buffered`:
//! the bytes in their buffers cross exactly once, the new process touches
//! no handed-over fd before it has taken over, and a buffer that cannot be
//! handed over is refused by the old process, which keeps it.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};

use common::*;

/// Starts `testdata-buffered <case> --connect <port>` with `env`, and
/// returns the run, the test's end of the connection, and the old
/// process's description (without `before pid=<pid> `).
fn start(case: &str, env: &[(&str, &str)]) -> (Run, TcpStream, String) {
    let (mut run, conn) = connect(case, env);
    let before = before(&mut run);
    (run, conn, before)
}

/// Starts `testdata-buffered <case> --connect <port>` with `env`, and
/// returns the run and the test's end of the connection.
fn connect(case: &str, env: &[(&str, &str)]) -> (Run, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut spawn = Spawn::new(case)
        .binary(TESTDATA_BUFFERED)
        .without_log()
        .args(&[case, "--connect", &port]);
    for (key, value) in env {
        spawn = spawn.env(key, value);
    }
    let run = spawn.spawn();
    let conn = accept_timeout(&listener);
    (run, conn)
}

/// The old process's description, without `before pid=<pid> `.
fn before(run: &mut Run) -> String {
    let before = run.stdout.expect("before ");
    without_pid(&before, "before", run.first_pid)
}

/// Checks that the old process reported `rolled back` and exited 0, and
/// that no new process got to use the state.
fn rolled_back(run: &mut Run) {
    assert_eq!(run.stdout.expect("rolled back"), "rolled back");
    assert!(run.wait_first().success());
    let rest = run.stdout.wait_eof();
    assert!(
        !rest.iter().any(|line| line.starts_with("after ")),
        "no new process got to use the state: {rest:?}"
    );
}

/// `<word> pid=<pid> <description>` → the description, checking the pid.
fn without_pid(line: &str, word: &str, pid: u32) -> String {
    let (found, description) = pid_and_description(line, word);
    assert_eq!(found, pid, "{line:?}");
    description
}

fn pid_and_description(line: &str, word: &str) -> (u32, String) {
    let rest = line
        .strip_prefix(&format!("{word} pid="))
        .unwrap_or_else(|| panic!("not a `{word} pid=` line: {line:?}"));
    let (pid, description) = rest.split_once(' ').unwrap_or((rest, ""));
    (pid.parse().expect("a pid"), description.to_owned())
}

/// The description with the socket's inode left out: `tcp#_`.
fn without_inode(description: &str) -> String {
    description
        .split(' ')
        .map(|word| match word.split_once("tcp#") {
            Some((key, _)) => format!("{key}tcp#_"),
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// BufWriter

/// A `BufWriter` whose 16 unwritten bytes fill its capacity of 16 crosses
/// with them still unwritten, and the peer gets them once, from the new
/// process.
#[test]
fn a_full_bufwriter_crosses_with_its_bytes_unwritten() {
    let (mut run, mut conn, before) = start("full-writer", &[]);
    assert_eq!(
        without_inode(&before),
        r#"writer=tcp#_ unwritten="0123456789abcdef""#
    );
    let (new_pid, after) = pid_and_description(&run.stdout.expect("after "), "after");
    assert_eq!(
        after, before,
        "the new process has the same socket and the same unwritten bytes"
    );
    assert_eq!(
        run.stdout.expect("done pid="),
        format!("done pid={new_pid}")
    );
    let (bytes, end) = read_to_end(&mut conn, "the full-writer peer");
    assert_eq!(
        (String::from_utf8_lossy(&bytes).as_ref(), end),
        ("0123456789abcdefafter\n", "eof"),
        "the unwritten bytes arrive once, before what the new process writes"
    );
    assert!(run.wait_first().success());
}

/// The same `BufWriter`, and the new process dies after decoding the state,
/// before COMMIT: the handover rolls back, the old process flushes the
/// bytes it kept, and the peer gets them once. The new process must not
/// have written them while decoding (PROTOCOL.md: it touches no handed-over
/// fd before TAKEN).
#[test]
fn a_full_bufwriter_is_written_once_after_a_rollback() {
    let (mut run, mut conn, before) = start("full-writer", &[("MITOSIS_FAULT", "new:commit:kill")]);
    assert_eq!(
        without_inode(&before),
        r#"writer=tcp#_ unwritten="0123456789abcdef""#
    );
    let failed = run.stdout.expect("failed: ");
    assert!(
        failed.contains("the new process exited (signal: 9 (SIGKILL))"),
        "the injected fault killed the new process: {failed:?}"
    );
    assert!(
        failed.ends_with("| step=step 8 (commit)"),
        "it died in step 7, after decoding: {failed:?}"
    );
    assert_eq!(run.stdout.expect("rolled back"), "rolled back");
    let (bytes, end) = read_to_end(&mut conn, "the full-writer peer");
    assert_eq!(
        (String::from_utf8_lossy(&bytes).as_ref(), end),
        ("0123456789abcdef", "eof"),
        "the unwritten bytes arrive exactly once, from the old process"
    );
    assert!(run.wait_first().success());
    let rest = run.stdout.wait_eof();
    assert!(
        !rest.iter().any(|line| line.starts_with("after ")),
        "the new process never got to use the state: {rest:?}"
    );
}

// ---------------------------------------------------------------------------
// Failures the old process finds while encoding

/// A state whose `Serialize` fails (a path that is not UTF-8): the old
/// process reports an encoding failure in step 5, blaming the state's
/// encoding, not a disagreement between the binaries; and it keeps its
/// state, connection and all.
#[test]
fn an_encoder_failure_is_reported_as_encoding_by_the_old_process() {
    let (mut run, mut conn, before) = start("bad-path", &[]);
    assert_eq!(
        without_inode(&before),
        r#"conn=tcp#_ label="kept" path="log-\xFF.txt""#
    );
    let failed = run.stdout.expect("failed: ");
    assert!(
        failed.starts_with(
            "failed: could not encode the state in the old process: the Serialize impl of \
             std::path::PathBuf returned an error; "
        ),
        "the failure names the encoding and the type whose impl failed: {failed:?}"
    );
    assert!(
        failed.contains("the old process keeps its state"),
        "{failed:?}"
    );
    assert!(
        !failed.contains("bump its schema version"),
        "no advice meant for a decoding failure: {failed:?}"
    );
    assert!(
        failed.ends_with("| step=step 6 (state transfer)"),
        "{failed:?}"
    );
    assert_eq!(
        run.stdout.expect("kept "),
        format!("kept {before}"),
        "the old process has its state back, the same socket and values"
    );
    rolled_back(&mut run);
    let (bytes, end) = read_to_end(&mut conn, "the bad-path peer");
    assert_eq!(
        (String::from_utf8_lossy(&bytes).as_ref(), end),
        ("kept\n", "eof"),
        "only the old process wrote to the connection"
    );
}

/// A `BufReader` holding more than 64 KiB of unread bytes cannot be put
/// back by the new process. The old process finds that while encoding, in
/// step 5, and refuses with REJECT instead of sending the state: both sides
/// name the limit and what to do, and the old process keeps the bytes and
/// can still read them through the same `BufReader`.
#[test]
fn a_bufreader_over_the_limit_is_refused_by_the_old_process_which_keeps_it() {
    let (mut run, mut conn) = connect("overfull-reader", &[]);
    let payload = testdata::blob(70_000);
    conn.write_all(b"first\n").unwrap();
    conn.write_all(&payload).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let summary = testdata::blob_summary(&payload);
    assert_eq!(
        without_inode(&before(&mut run)),
        format!("reader=tcp#_ unread={summary}"),
        "the old process read the first line and holds the payload unread"
    );

    let advice = "a BufReader in the state holds 70000 bytes it has read but not yet returned, \
                  more than the 65536 a handover can put back, in step 1 (spawn); the old \
                  process keeps its state. Consume those bytes before splitting, or give the \
                  BufReader a capacity of at most 65536 bytes";
    let failed = run.stdout.expect("failed: ");
    assert_eq!(
        failed,
        format!("failed: {advice} | step=step 1 (spawn)"),
        "the old process found it before starting a new process, while it looked for the \
         state's fds"
    );
    assert_eq!(
        run.stdout.expect("kept "),
        format!("kept unread={summary}"),
        "the old process reads the buffered bytes after the rollback"
    );
    rolled_back(&mut run);
    assert!(
        !run.stdout
            .seen()
            .iter()
            .any(|line| line.starts_with("init failed")),
        "no new process was started: {:?}",
        run.stdout.seen()
    );
    let (echoed, end) = read_to_end(&mut conn, "the overfull-reader peer");
    assert_eq!(end, "eof");
    assert!(
        echoed == payload,
        "the payload comes back intact: {} bytes, {}",
        echoed.len(),
        testdata::blob_summary(&echoed)
    );
}
