//! The control socket in one process: a real socket, real clients on
//! threads, and the program's side polled as a program would. An
//! integration test, so that no other test of the library prepares an
//! upgrade in this process meanwhile: one upgrade at a time is a
//! process-wide rule.

#![cfg(feature = "control")]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use rustix::event::{PollFd, PollFlags, poll};

use mitosis::control::{Answer, Command, Control, Request, Verdict, send};

/// Held by the tests that start upgrades: one runs at a time per process,
/// and a second request meanwhile is refused, as it should be.
static ONE_UPGRADE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_upgrade_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_UPGRADE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh directory with `mode`, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(mode: u32) -> Dir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mitosis-control-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        Dir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls the control socket as a program's loop would, until a request
/// comes or `done` says the client has its answer.
fn serve_until(control: &mut Control, mut done: impl FnMut() -> bool) -> Option<Request> {
    while !done() {
        let mut fds = [PollFd::new(control, PollFlags::IN)];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        poll(&mut fds, Some(&timeout)).unwrap();
        if let Some(request) = control.request() {
            return Some(request);
        }
    }
    None
}

/// Sends `line` raw and returns the whole answer, serving meanwhile.
/// The requests used here are answered without the program.
fn ask_raw(control: &mut Control, path: &Path, line: &[u8]) -> (String, Option<Request>) {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.write_all(line).unwrap();
    let client = thread::spawn(move || {
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    });
    let request = serve_until(control, || client.is_finished());
    (client.join().unwrap(), request)
}

#[test]
fn a_directory_others_can_write_is_refused() {
    let dir = Dir::new(0o1777);
    let error = Control::bind(dir.join("x.control"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("writable by others (mode 1777)"), "{error}");
    assert!(!dir.join("x.control").exists());
}

#[test]
fn the_socket_is_0600_and_a_live_one_is_not_taken_over() {
    let dir = Dir::new(0o700);
    let path = dir.join("x.control");
    let mut control = Control::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The second program asks the first which pid serves.
    let second = {
        let path = path.clone();
        thread::spawn(move || Control::bind(&path).unwrap_err().to_string())
    };
    assert!(serve_until(&mut control, || second.is_finished()).is_none());
    let error = second.join().unwrap();
    assert!(
        error.contains(&format!(
            "(pid {}) listens there already",
            std::process::id()
        )),
        "{error}"
    );
    drop(control);
    // Silent: it still refuses, without a pid.
    let silent = Control::bind(&path).unwrap();
    let error = Control::bind(&path).unwrap_err().to_string();
    assert!(error.contains("it does not say which pid"), "{error}");
    drop(silent);
    // Left behind by a program that is gone: replaced.
    let again = Control::bind(&path).unwrap();
    assert_eq!(again.path(), path);
    std::fs::write(dir.join("file"), b"data").unwrap();
    let error = Control::bind(dir.join("file")).unwrap_err().to_string();
    assert!(error.contains("not a socket"), "{error}");
}

#[test]
fn status_and_bad_requests_are_answered_without_the_program() {
    let _serial = one_upgrade_at_a_time();
    let dir = Dir::new(0o700);
    let path = dir.join("x.control");
    let mut control = Control::bind(&path).unwrap();

    let (answer, _) = ask_raw(&mut control, &path, b"status\n");
    let answer: Answer = answer.parse().unwrap();
    assert_eq!(answer.verdict(), Verdict::Status);
    assert_eq!(
        answer.field("pid"),
        Some(std::process::id().to_string().as_str())
    );
    assert_eq!(answer.field("generation"), Some("1"));
    assert_eq!(answer.field("previous-binary"), Some("none"));
    assert_eq!(answer.field("upgrading"), Some("no"));

    let (answer, _) = ask_raw(&mut control, &path, b"\x7fELF garbage\n");
    assert!(
        answer.starts_with("error\nerror: unknown request"),
        "{answer:?}"
    );

    let long = vec![b'a'; 10 << 20];
    let mut stream = UnixStream::connect(&path).unwrap();
    let writer = thread::spawn(move || {
        // The program stops reading at 4 KiB and closes.
        let _ = stream.write_all(&long);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    });
    assert!(serve_until(&mut control, || writer.is_finished()).is_none());
    let answer = writer.join().unwrap();
    assert!(answer.contains("longer than 4096 bytes"), "{answer:?}");
}

#[test]
fn one_upgrade_request_at_a_time_and_a_dropped_one_is_answered() {
    let _serial = one_upgrade_at_a_time();
    let dir = Dir::new(0o700);
    let path = dir.join("x.control");
    let mut control = Control::bind(&path).unwrap();
    let first = {
        let path = path.clone();
        thread::spawn(move || send(&path, &Command::Upgrade).unwrap())
    };
    let request = serve_until(&mut control, || first.is_finished()).expect("the upgrade request");
    assert_eq!(request.command(), &Command::Upgrade);

    let second = {
        let path = path.clone();
        thread::spawn(move || send(&path, &Command::UpgradeTo("/bin/true".into())).unwrap())
    };
    assert!(serve_until(&mut control, || second.is_finished()).is_none());
    let second = second.join().unwrap();
    assert_eq!(second.verdict(), Verdict::Error);
    assert!(
        second.field("error").unwrap().contains("already running"),
        "{second}"
    );

    drop(request);
    let first = first.join().unwrap();
    assert_eq!(first.verdict(), Verdict::Error);
    assert_eq!(
        first.field("error"),
        Some("the program did not act on the request")
    );

    // The next request gets through.
    let third = {
        let path = path.clone();
        thread::spawn(move || send(&path, &Command::Previous).unwrap())
    };
    let request = serve_until(&mut control, || third.is_finished()).expect("the next request");
    assert_eq!(request.command(), &Command::Previous);
    drop(request);
    assert!(!third.join().unwrap().succeeded());
}

#[test]
fn going_back_without_a_previous_build_fails_clearly() {
    let _serial = one_upgrade_at_a_time();
    let dir = Dir::new(0o700);
    let path = dir.join("x.control");
    let mut control = Control::bind(&path).unwrap();
    let client = {
        let path = path.clone();
        thread::spawn(move || send(&path, &Command::Previous).unwrap())
    };
    let request = serve_until(&mut control, || client.is_finished()).expect("the request");
    let mut upgrade = request
        .prepare(&mitosis::SplitOptions::new(), &0u64)
        .expect("the upgrade starts, and fails in step 1");
    let error = upgrade.is_ready().unwrap_err();
    assert!(matches!(error, mitosis::Error::NoPreviousBinary), "{error}");
    let answer = client.join().unwrap();
    assert_eq!(answer.verdict(), Verdict::Failed);
    assert_eq!(answer.field("step"), Some("step 1 (spawn)"));
    assert!(
        answer.field("error").unwrap().contains("no previous build"),
        "{answer}"
    );
}

#[test]
fn a_client_hears_clearly_that_nothing_listens() {
    let dir = Dir::new(0o700);
    let error = send(&dir.join("none.control"), &Command::Status)
        .unwrap_err()
        .to_string();
    assert!(error.contains("to report its status"), "{error}");
    assert!(error.contains("no such socket"), "{error}");
}
