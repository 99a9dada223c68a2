//! `BufWriter` and `BufReader` in a real handover, with `testdata-buffered`:
//! the bytes in their buffers cross exactly once, the new process touches
//! no handed-over fd before it has taken over, and a buffer that cannot be
//! handed over is refused by the old process, which keeps it.

mod common;

use std::net::{TcpListener, TcpStream};

use common::*;

/// Starts `testdata-buffered <case> --connect <port>` with `env`, and
/// returns the run, the test's end of the connection, and the old
/// process's description (without `before pid=<pid> `).
fn start(case: &str, env: &[(&str, &str)]) -> (Run, TcpStream, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut spawn = Spawn::new(case)
        .binary(TESTDATA_BUFFERED)
        .without_log()
        .args(&[case, "--connect", &port]);
    for (key, value) in env {
        spawn = spawn.env(key, value);
    }
    let mut run = spawn.spawn();
    let conn = accept_timeout(&listener);
    let before = run.stdout.expect("before ");
    let before = without_pid(&before, "before", run.first_pid);
    (run, conn, before)
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
        failed.ends_with("| step=step 7 (commit)"),
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
