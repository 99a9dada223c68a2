//! What the host process's signals, limits and environment can do to a
//! handover: SIGPIPE at its default action, an open-file limit that is
//! nearly used up (or, in the new process, too low for the state's fds), timeouts of `Duration::MAX`, and a runtime directory
//! that cannot hold the fd channel. Whatever the host is like, a failed
//! split gives the state back, leaves no fd channel directory behind, and
//! the old process keeps serving.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const HALF_CLOSE_CHILD: &str = env!("CARGO_BIN_EXE_half-close-child");

/// The `mitosis-<pid>-*` entries in `dir`: the fd channel directories the
/// process `pid` made there.
fn channel_dirs_in(dir: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("mitosis-{pid}-");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

/// The answer to a command that the old process must survive: if the peer
/// connection closes instead, the test fails with how the process ended.
fn answer_or_death(run: &mut Run, peer: &mut Peer, command: &str) -> String {
    eprintln!("[peer] > {command}");
    peer.send(&format!("{command}\n"));
    match peer.try_line() {
        Ok(Some(line)) => line,
        Ok(None) => {
            let status = run.wait_first();
            panic!("the old process died instead of answering {command:?}: {status}");
        }
        Err(e) => panic!("no answer to {command:?} within {TIMEOUT:?}: {e}"),
    }
}

/// Checks that the first generation still serves, unchanged.
fn still_serving(run: &Run, peer: &mut Peer, blob: &str) {
    let status = status(peer);
    assert_eq!(field(&status, "pid"), run.first_pid.to_string(), "{status}");
    assert_eq!(field(&status, "generation"), "1", "{status}");
    assert_eq!(
        field(&status, "blob"),
        blob,
        "the state came back whole: {status}"
    );
    assert_eq!(peer.command("ping still here"), "pong still here");
}

/// With SIGPIPE at its default action, the new process hangs up in the
/// middle of step 6 while the old one is still writing the state, after
/// shutting down its sending half: the old process's write fails with
/// EPIPE, and it must get that as an error, not as the signal, and roll
/// back.
#[test]
fn sigpipe_at_default_does_not_kill_the_old_process() {
    let runtime = TempDir::new("sigpipe-runtime");
    let (mut run, mut peer) = Spawn::new("sigpipe")
        // 32 MiB: far more than the loopback socket buffers hold, so the
        // old process is still writing when the new one hangs up.
        .args(&["--sigpipe-default", "--blob-size", "33554432"])
        .env("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap())
        .start();
    let blob = field(&status(&mut peer), "blob").to_owned();
    let child = run.install(HALF_CLOSE_CHILD, "half-close-child");

    let line = answer_or_death(
        &mut run,
        &mut peer,
        &format!("split binary={}", child.display()),
    );
    assert!(
        line.starts_with("split failed: "),
        "expected a failed split: {line:?}"
    );
    assert!(
        line.contains("the new process exited (exit status: 0)")
            && line.contains("step=step 6 (state transfer)"),
        "the error names the new process's exit in step 6: {line:?}"
    );
    assert_eq!(field(&line, "children"), "none", "{line:?}");
    run.stderr
        .expect("half-close-child: hung up after 100000 bytes of step 6");
    assert_eq!(
        channel_dirs_in(runtime.path(), run.first_pid),
        Vec::<PathBuf>::new(),
        "the fd channel's directory is removed"
    );
    still_serving(&run, &mut peer, &blob);
}

/// The same with the real new process, killed by a test fault once
/// 100,000 bytes of step 6 have arrived. Whether its death reaches the old
/// process as a reset (ECONNRESET, no signal) or as a hang-up and then a
/// reset (EPIPE, the signal) depends on whether it had read everything
/// that had arrived; either way the old process rolls back.
#[test]
fn sigpipe_at_default_and_the_new_process_killed_in_step_5() {
    let runtime = TempDir::new("sigpipe-runtime");
    let (mut run, mut peer) = Spawn::new("sigpipe")
        // 32 MiB: far more than the loopback socket buffers hold, so the
        // old process is still writing when the new one dies.
        .args(&["--sigpipe-default", "--blob-size", "33554432"])
        // The old process ignores a fault for the new side; the new one
        // kills itself once 100,000 bytes of the state have arrived.
        .env("MITOSIS_FAULT", "new:state@100000:kill")
        .env("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap())
        .start();
    let blob = field(&status(&mut peer), "blob").to_owned();

    let line = answer_or_death(&mut run, &mut peer, "split");
    assert!(
        line.starts_with("split failed: "),
        "expected a failed split: {line:?}"
    );
    assert!(
        line.contains("step=step 6 (state transfer)"),
        "the failure is in step 6: {line:?}"
    );
    assert!(
        line.contains("signal: 9 (SIGKILL)"),
        "the error names how the new process died: {line:?}"
    );
    assert_eq!(field(&line, "children"), "none", "{line:?}");
    let splitting = run.stdout.expect("splitting child=");
    let child: u32 = field(&splitting, "child").parse().unwrap();
    assert!(
        is_gone(child, run.first_pid),
        "the new process {child} is gone"
    );
    assert_eq!(
        channel_dirs_in(runtime.path(), run.first_pid),
        Vec::<PathBuf>::new(),
        "the fd channel's directory is removed"
    );
    still_serving(&run, &mut peer, &blob);
}

/// A split refused because the open-file limit runs out right after the fd
/// channel's directory was made: the directory is removed, the answer says
/// what ran out, and the old process keeps serving.
#[test]
fn running_out_of_fds_in_step_1_leaves_no_directory() {
    const LIMIT: u32 = 64;
    let runtime = TempDir::new("nofile-runtime");
    // 0, 1, 2, the listener, the peer and the log are fds 0 to 5; the
    // spare fds take 6 to LIMIT - 2, so one fd is left: the split's TCP
    // listener takes it, and the fd channel's socket finds none.
    let spare = (LIMIT - 7).to_string();
    let (mut run, mut peer) = Spawn::new("nofile")
        .args(&["--nofile-limit", &LIMIT.to_string(), "--spare-fds", &spare])
        .env("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap())
        .start();
    let status = status(&mut peer);
    let blob = field(&status, "blob").to_owned();
    assert_eq!(field(&status, "spare"), spare, "{status}");
    let open: Vec<u32> = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap())
        .into_iter()
        .map(|(fd, _)| fd)
        .collect();
    assert_eq!(
        open,
        (0..LIMIT - 1).collect::<Vec<u32>>(),
        "exactly one fd is left under the limit of {LIMIT}"
    );

    let line = answer_or_death(&mut run, &mut peer, "split");
    assert!(
        line.starts_with("split refused: "),
        "expected a refused split: {line:?}"
    );
    assert!(
        line.contains("step 1 (spawn)") && line.contains("Too many open files"),
        "the error names the step and what ran out: {line:?}"
    );
    assert_eq!(
        channel_dirs_in(runtime.path(), run.first_pid),
        Vec::<PathBuf>::new(),
        "the fd channel's directory is removed after the refusal"
    );
    assert!(
        line.contains("RLIMIT_NOFILE"),
        "the error names the limit to raise: {line:?}"
    );
    still_serving(&run, &mut peer, &blob);
    // The split closed what it opened: the same fds are open as before.
    let after: Vec<u32> = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap())
        .into_iter()
        .map(|(fd, _)| fd)
        .collect();
    assert_eq!(after, open, "the refused split closed every fd it opened");
}

/// A new process whose open-file limit is too low for the state's fds
/// says so before it receives any of them, naming the limit and the
/// numbers the fds would need; the old process gets the state back, with
/// the same fds open, and keeps serving. `fault` is the old process's
/// `MITOSIS_FAULT`.
fn open_file_limit_too_low_in_the_new_process(name: &str, fault: Option<&str>) {
    const SPARE: u32 = 300;
    const LIMIT: u32 = 64;
    let spawn = Spawn::new(name).args(&["--spare-fds", &SPARE.to_string()]);
    let (mut run, mut peer) = match fault {
        Some(fault) => spawn.env("MITOSIS_FAULT", fault),
        None => spawn,
    }
    .start();
    let blob = field(&status(&mut peer), "blob").to_owned();
    let before = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap());

    let line = answer_or_death(&mut run, &mut peer, &format!("split nofile={LIMIT}"));
    assert!(
        line.starts_with("split failed: "),
        "expected a failed split: {line:?}"
    );
    // The state's fds: the spare ones, the listener, the peer and the log.
    let count = SPARE + 3;
    assert!(
        line.contains(&format!(
            "this process may open {LIMIT} files (RLIMIT_NOFILE), too few for the state's \
             {count} fds"
        )) && line.contains("raise RLIMIT_NOFILE"),
        "the error names the limit and what it is too low for: {line:?}"
    );
    assert!(
        line.contains("step 7 (fd transfer)"),
        "the new process gave up in step 7: {line:?}"
    );
    assert_eq!(field(&line, "children"), "none", "{line:?}");
    still_serving(&run, &mut peer, &blob);
    let after = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap());
    assert_eq!(after, before, "the old process holds the same fds again");
}

#[test]
fn a_new_process_with_too_low_an_open_file_limit_refuses_the_fds() {
    open_file_limit_too_low_in_the_new_process("nofile-new", None);
}

/// The same, when the new process has given up and exited before the old
/// one sends its second fd batch: the old process finds the fd channel
/// closed, and still reports the new process's reason.
#[test]
fn a_new_process_that_refuses_the_fds_and_exits_mid_transfer() {
    open_file_limit_too_low_in_the_new_process("nofile-new-gone", Some("old:fds@1:stall=500"));
}

/// With a timeout of `Duration::MAX` (no limit), a split whose new binary
/// fails gives the state back, and a split to a good binary succeeds: the
/// old process computes no deadline that overflows, and the new process
/// reads the timeout it is given.
fn timeout_of_duration_max(name: &str, flag: &str) {
    let (mut run, mut peer) = Spawn::new(name).args(&[flag]).start();
    let blob = field(&status(&mut peer), "blob").to_owned();

    let line = answer_or_death(&mut run, &mut peer, "split exit");
    assert!(
        line.starts_with("split failed: ") && line.contains("exit status: 3"),
        "a failing binary fails the split, and the error says how: {line:?}"
    );
    assert_eq!(field(&line, "children"), "none", "{line:?}");
    run.stdout.expect("splitting child=");
    still_serving(&run, &mut peer, &blob);

    eprintln!("[peer] > split");
    peer.send("split\n");
    let ready = match peer.try_line() {
        Ok(Some(line)) => line,
        Ok(None) => {
            let status = run.wait_first();
            panic!("the old process died instead of splitting: {status}");
        }
        Err(e) => panic!("no answer to split within {TIMEOUT:?}: {e}"),
    };
    assert!(
        ready.starts_with("ready pid=") && field(&ready, "generation") == "2",
        "the split succeeds: {ready:?}"
    );
    let status = status(&mut peer);
    assert_eq!(field(&status, "generation"), "2", "{status}");
    assert_eq!(field(&status, "blob"), blob, "{status}");
    run.stdout.expect("done pid=");
}

#[test]
fn start_and_transfer_timeouts_of_duration_max() {
    timeout_of_duration_max("timeouts-max", "--timeouts-max");
}

#[test]
fn hello_timeout_of_duration_max() {
    timeout_of_duration_max("hello-max", "--hello-timeout-max");
}

/// A directory that exists but in which this process cannot make one, as
/// an `$XDG_RUNTIME_DIR` kept across `su` is for the new user: a 0555
/// directory, or, for root, whom mode bits do not stop, a procfs one.
fn unwritable_dir(keep: &TempDir) -> PathBuf {
    let dir = if rustix::process::geteuid().is_root() {
        PathBuf::from("/proc/self")
    } else {
        let dir = keep.join("read-only");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        dir
    };
    assert!(dir.is_dir(), "{} is a directory", dir.display());
    let probe = dir.join("mitosis-probe");
    let made = fs::create_dir(&probe);
    assert!(
        made.is_err(),
        "a directory could be made in {}, which the test needs unwritable",
        dir.display()
    );
    dir
}

/// `$XDG_RUNTIME_DIR` names a directory the process cannot write to: the
/// fd channel goes to the temp dir instead, and the split succeeds.
#[test]
fn an_unwritable_runtime_dir_falls_back_to_the_temp_dir() {
    let keep = TempDir::new("unwritable-runtime");
    let runtime = unwritable_dir(&keep);
    let tmp = TempDir::new("fallback-tmp");
    let (mut run, mut peer) = Spawn::new("unwritable")
        .env("XDG_RUNTIME_DIR", runtime.to_str().unwrap())
        .env("TMPDIR", tmp.path().to_str().unwrap())
        .start();
    let blob = field(&status(&mut peer), "blob").to_owned();

    let ready = answer_or_death(&mut run, &mut peer, "split");
    assert!(
        ready.starts_with("ready pid=") && field(&ready, "generation") == "2",
        "the split succeeds through the temp dir: {ready:?}"
    );
    let new: u32 = field(&ready, "pid").parse().unwrap();
    // The new process was started with the fd channel's path at the end
    // of its flag, `--mitosis=PORT:SIGNALS:PATH`.
    let cmdline = fs::read(format!("/proc/{new}/cmdline")).unwrap();
    let fd_socket = cmdline
        .split(|&b| b == 0)
        .find_map(|arg| arg.strip_prefix(b"--mitosis="))
        .and_then(|value| value.splitn(3, |&b| b == b':').nth(2))
        .map(|path| PathBuf::from(String::from_utf8_lossy(path).into_owned()))
        .expect("the fd channel's path in the new process's --mitosis flag");
    assert!(
        fd_socket.starts_with(tmp.path()),
        "the fd channel was in TMPDIR {}: {}",
        tmp.path().display(),
        fd_socket.display()
    );
    let status = status(&mut peer);
    assert_eq!(field(&status, "blob"), blob, "{status}");
    run.stdout.expect(&format!("done pid={new} "));
    assert_eq!(
        channel_dirs_in(tmp.path(), run.first_pid),
        Vec::<PathBuf>::new(),
        "the fd channel's directory is removed after the handover"
    );
}
