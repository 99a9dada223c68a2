//! The fault matrix: either side of a handover dies (SIGKILL) or stalls at
//! every point of PROTOCOL.md, through mitosis's `test-hooks` feature
//! (`MITOSIS_FAULT=<side>:<point>:<action>`), and each time exactly the
//! expected process ends up owning the connections and serving the peer.
//!
//! The state has a 200,000-byte blob (out of line) and 303 fds (two fd
//! batches), so that the faults can strike inside a frame and between fd
//! batches.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use common::*;

/// The start and transfer timeouts the old process gives the handover; the
/// new process obeys the transfer timeout too.
const TIMEOUT_MS: u64 = 1500;
/// A stall outlasts both processes' deadlines.
const STALL_MS: u64 = 2500;
const SPARE_FDS: usize = 300;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    /// The old process keeps everything and carries on.
    Old,
    /// The new process took over.
    New,
    /// The process that owned the connections was the one killed: they
    /// close, as in any crash, and nobody is left half-owning them.
    Nobody,
}

struct Case {
    /// `split`, or `prepare` (then the hand-over once ready).
    how: &'static str,
    side: &'static str,
    point: String,
    action: &'static str,
    owner: Owner,
    /// The earliest protocol step at which the fault can be noticed.
    first_step: u8,
}

impl Case {
    fn fault(&self) -> String {
        format!("{}:{}:{}:{}", self.how, self.side, self.point, self.action)
    }
}

/// Every point of PROTOCOL.md, with the step it is in.
fn points() -> Vec<(String, u8)> {
    let mut points = vec![
        ("spawned".to_owned(), 2),
        // The old process reads HELLO while accepting, in step 2.
        ("hello".to_owned(), 2),
        ("offer".to_owned(), 4),
        // The old process read READY; the new process sent it.
        ("ready".to_owned(), 5),
    ];
    // Before the first byte, inside the first frame header, inside the
    // first DATA frame, and inside the blob's BYTES frame.
    for offset in [0, 3, 20, 100_000] {
        points.push((format!("state@{offset}"), 6));
    }
    // Before the first fd batch, and between the two.
    for batch in [0, 1] {
        points.push((format!("fds@{batch}"), 7));
    }
    points.extend([
        ("commit".to_owned(), 8),
        ("ack".to_owned(), 9),
        ("taken".to_owned(), 9),
        ("done".to_owned(), 9),
    ]);
    points
}

/// Who must own the connections after the fault, by PROTOCOL.md's
/// ownership rule: the old process until it reads TAKEN, the new one from
/// the moment it has ACK (or, having committed, sees the old one die).
fn expected_owner(side: &str, point: &str, action: &str) -> Owner {
    let after_commit_read = matches!(point, "commit" | "ack" | "taken" | "done");
    match (side, action) {
        // Killed before the new process has everything: the old one owned
        // the connections and died with them.
        ("old", "kill") if !after_commit_read => Owner::Nobody,
        // Killed once the new process has committed: it takes over.
        ("old", "kill") => Owner::New,
        // Stalled past the deadline before ACK: the new process gives up,
        // or is killed for want of an ACK, and the old one carries on.
        ("old", _) if matches!(point, "ack" | "taken" | "done") => Owner::New,
        // Stalled between READY and the hand-over, as a program may be
        // between two passes of its loop: the new process waits for as long
        // as the old one lives, and the transfer timeout starts with the
        // hand-over.
        ("old", _) if point == "ready" => Owner::New,
        ("old", _) => Owner::Old,
        // The new process owns the connections once it has sent TAKEN.
        ("new", "kill") if point == "done" => Owner::Nobody,
        ("new", "kill") => Owner::Old,
        // Stalled after COMMIT: the old process waits for it, for as long
        // as it lives.
        ("new", _) if matches!(point, "ack" | "taken" | "done") => Owner::New,
        ("new", _) => Owner::Old,
        _ => unreachable!("side {side}"),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for side in ["old", "new"] {
        for (point, step) in points() {
            // The new process sends OFFER right behind HELLO, before WELCOME
            // comes back: a fault after it may strike while the old process
            // is still accepting, in step 2, as one after HELLO may.
            let first_step = if side == "new" && point == "offer" {
                2
            } else {
                step
            };
            for (action, how) in ["kill", "stall"]
                .into_iter()
                .flat_map(|action| [(action, "split"), (action, "prepare")])
            {
                cases.push(Case {
                    how,
                    side,
                    owner: expected_owner(side, &point, action),
                    point: point.clone(),
                    action,
                    first_step,
                });
            }
        }
    }
    cases
}

#[test]
fn fault_matrix() {
    let cases = cases();
    let queue = Arc::new(Mutex::new(cases.into_iter().collect::<Vec<_>>()));
    let results = Arc::new(Mutex::new(Vec::new()));
    // Most cases spend their time waiting for a deadline, so more run at
    // once than there are cores.
    let workers: Vec<_> = (0..12)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let results = Arc::clone(&results);
            thread::spawn(move || {
                loop {
                    let Some(case) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let fault = case.fault();
                    let started = Instant::now();
                    let outcome = thread::scope(|scope| {
                        scope
                            .spawn(|| run_case(&case))
                            .join()
                            .map_err(|panic| panic_message(&panic))
                    });
                    let millis = started.elapsed().as_millis();
                    results
                        .lock()
                        .unwrap()
                        .push((fault, case.owner, outcome, millis));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }

    let mut results = Arc::try_unwrap(results).unwrap().into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut matrix = String::from(
        "\n| fault | owner after | error names | ms | result |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut failures = Vec::new();
    for (fault, owner, outcome, millis) in &results {
        let (step, result) = match outcome {
            Ok(step) => (step.clone(), "ok".to_owned()),
            Err(message) => {
                failures.push(format!("{fault}: {message}"));
                ("?".to_owned(), "FAILED".to_owned())
            }
        };
        writeln!(
            matrix,
            "| `{fault}` | {owner:?} | {step} | {millis} | {result} |"
        )
        .unwrap();
    }
    eprintln!("{matrix}");
    println!("{matrix}");
    assert!(
        failures.is_empty(),
        "{} of {} fault cases failed:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n\n")
    );
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// Runs one case and returns the step the survivor's error names.
fn run_case(case: &Case) -> String {
    let fault = case.fault();
    let action = if case.action == "stall" {
        format!("stall={STALL_MS}")
    } else {
        "kill".to_owned()
    };
    let mitosis_fault = format!("{}:{}:{action}", case.side, case.point);
    let name = format!("fault-{}", fault.replace([':', '@'], "-"));
    let spare = SPARE_FDS.to_string();
    let timeout = TIMEOUT_MS.to_string();
    let (mut run, mut peer) = Spawn::new(&name)
        .args(&["--timeout-ms", &timeout, "--spare-fds", &spare])
        .args(&["--blob-size", "200000"])
        .env("MITOSIS_FAULT", &mitosis_fault)
        .start();
    let old = run.first_pid;

    assert_eq!(peer.command("ping 1"), "pong 1");
    let status = peer.command("status");
    let blob = field(&status, "blob").to_owned();
    assert_eq!(field(&status, "spare"), spare, "{status}");
    let before = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap());

    peer.send(&format!("{}\n", case.how));
    let old_killed = case.side == "old" && case.action == "kill";
    if case.how == "prepare" {
        // An old process killed by its own handover thread may die before
        // it answers.
        match peer.try_line().expect("EOF, not a timeout") {
            Some(preparing) => assert!(preparing.starts_with("preparing child="), "{preparing:?}"),
            None => assert!(old_killed, "the old process closed the connection"),
        }
        // Serving while the new process starts, whenever the fault stops
        // it from becoming ready; otherwise the hand-over may come first.
        if case.action == "stall" && case.first_step <= 4 {
            assert_eq!(peer.command("ping 1.5"), "pong 1.5");
        }
    }
    let step = match case.owner {
        Owner::Old => {
            let failed = peer.line();
            // Prepared, a failure before READY arrives through the
            // readiness check, one after it from the hand-over.
            let expected: &[&str] = match (case.how, case.first_step) {
                ("split", _) => &["split failed: "],
                (_, ..=4) => &["prepare failed: "],
                (_, 5) => &["prepare failed: ", "split failed: "],
                _ => &["split failed: "],
            };
            assert!(
                expected.iter().any(|prefix| failed.starts_with(prefix)),
                "expected {expected:?}: {failed:?}"
            );
            let step = named_step(&failed, case);
            assert_eq!(
                field(&failed, "children"),
                "none",
                "the new process is reaped before the state comes back: {failed:?}"
            );
            // Still serving, with the same state and exactly the same fds.
            assert_eq!(peer.command("ping 2"), "pong 2");
            let status = peer.command("status");
            assert_eq!(field(&status, "pid"), old.to_string(), "{status}");
            assert_eq!(field(&status, "generation"), "1", "{status}");
            assert_eq!(field(&status, "blob"), blob, "{status}");
            let after = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap());
            assert_eq!(after, before, "the old process's fds, before and after");
            assert_eq!(generations_running(&run), vec![old]);
            step
        }
        Owner::New => {
            let ready = peer.line();
            assert!(ready.starts_with("ready pid="), "{ready:?}");
            let new: u32 = field(&ready, "pid").parse().unwrap();
            assert_ne!(new, old);
            assert_eq!(peer.command("ping 2"), "pong 2");
            let status = peer.command("status");
            assert_eq!(field(&status, "generation"), "2", "{status}");
            assert_eq!(field(&status, "blob"), blob, "{status}");
            assert_eq!(field(&status, "spare"), spare, "{status}");
            let after = parse_fds(peer.command("fds").strip_prefix("fds ").unwrap());
            assert_eq!(
                non_stdio_but_previous_build(&after),
                non_stdio(&before),
                "the new process holds exactly the handed-over fds (same inodes) and the \
                 previous build's executable"
            );
            let exit = run.wait_first();
            if case.side == "old" && case.action == "kill" {
                assert_eq!(
                    std::os::unix::process::ExitStatusExt::signal(&exit),
                    Some(9),
                    "{exit}"
                );
            } else {
                assert!(exit.success(), "the old process exits cleanly: {exit}");
            }
            assert_eq!(generations_running(&run), vec![new]);
            "none (handed over)".to_owned()
        }
        Owner::Nobody => {
            assert_eq!(
                peer.try_line().expect("EOF, not a timeout"),
                None,
                "the peer's connection closes with its owner"
            );
            run.wait_first();
            let step = if case.side == "old" {
                // The new process gave up, saying why.
                let error = run.stderr.wait_for("the new process's init error", |line| {
                    line.starts_with("init error: ")
                });
                named_step(&error, case)
            } else {
                "none (the new process owned them)".to_owned()
            };
            wait_until_no_generation_runs(&run);
            step
        }
    };
    // Nothing left behind: no fd channel directory, and no zombie of the
    // survivor's.
    for pid in run.pids.all() {
        assert_eq!(fd_channel_dirs(pid), Vec::<std::path::PathBuf>::new());
    }
    step
}

/// The step an error line names (`step N (title)`), checked to be no
/// earlier than the fault could be noticed.
fn named_step(line: &str, case: &Case) -> String {
    let at = line
        .find("step ")
        .unwrap_or_else(|| panic!("no step named in {line:?}"));
    let rest = &line[at..];
    let number: u8 = rest["step ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step number in {line:?}"));
    assert!(
        (case.first_step..=9).contains(&number),
        "the error names step {number}, before the fault's step {}: {line:?}",
        case.first_step
    );
    rest[..rest.find(')').map_or(rest.len(), |end| end + 1)].to_owned()
}

/// The processes still running this run's binary (zombies excluded: they
/// have no command line).
fn generations_running(run: &Run) -> Vec<u32> {
    let binary = run.binary.as_os_str().as_encoded_bytes().to_vec();
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with(&binary))
        })
        .collect();
    pids.sort();
    pids
}

/// Waits for the last generation to exit: the peer saw its connection
/// close, but the process may still be on its way out.
fn wait_until_no_generation_runs(run: &Run) {
    for pid in generations_running(run) {
        wait_pid_exit(pid, TIMEOUT)
            .unwrap_or_else(|| panic!("pid {pid} still runs after the peer's connection closed"));
    }
}
