//! `loadgen` against `tokio-echo-server`, unchanged from the runs against
//! `echo-server`: 64 clients while the server upgrades itself 20 times,
//! then builds that fail after the tasks have handed their connections
//! back, so that every connection goes back to a new task. Not one
//! connection, request or reply may be lost.

mod env_support;

use std::path::Path;
use std::process::{Command, Stdio};

use env_support::{
    Client, KillOnDrop, LOADGEN, Process, Survivors, chain_of, clean_command, install,
    install_script, lines_of, listening_port, relay, run_loadgen, scratch_dir,
};
use rustix::process::Signal;

const TOKIO_ECHO_SERVER: &str = env!("CARGO_BIN_EXE_tokio-echo-server");

const UPGRADES: u64 = 20;

/// The first generation, started by the test, and its port.
fn start(binary: &Path, args: &[&str]) -> (KillOnDrop, u16) {
    let mut child = clean_command(binary)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("start tokio-echo-server");
    let stdout = lines_of(child.0.stdout.take().unwrap());
    // Every generation inherits the pipe: the log of all of them, shown if
    // the test fails.
    relay(child.0.stderr.take().unwrap(), "");
    let port = listening_port(&stdout);
    (child, port)
}

#[test]
fn twenty_upgrades_under_64_clients_lose_nothing() {
    let (mut first, port) = start(Path::new(TOKIO_ECHO_SERVER), &[]);
    let first_pid = first.0.id();
    let mut survivors = Survivors::default();
    let run = run_loadgen(port, UPGRADES);
    let context = format!("loadgen's output:\n{}", run.summary);
    let pids = chain_of(first_pid, 1, &run.upgrades);
    assert_eq!(pids.len() as u64, UPGRADES + 1, "{context}");
    // Every handover carried a request whose end came after it, and
    // replies the server could not write before it; and the load went over
    // fresh connections too.
    assert_eq!(run.result["held_partial"], UPGRADES, "{context}");
    assert!(run.result["held_backlog"] > 0, "{context}");
    assert!(run.result["fresh_connections"] > 0, "{context}");

    let status = first.expect_exit("the first generation");
    assert!(status.success(), "the first generation: {status}");
    let (&last, old) = pids.split_last().unwrap();
    for &pid in &old[1..] {
        // Gone already and reaped, or about to be.
        if let Some(process) = Process::open(pid) {
            process.expect_exit("a replaced generation");
        }
    }
    // The last generation still serves on the same port, and stops on
    // SIGTERM.
    let last = survivors
        .adopt(last)
        .expect("the last generation is running");
    let mut client = Client::connect(port, "last");
    client.echo();
    last.signal(Signal::TERM);
    last.expect_exit("the last generation, after SIGTERM");
    client.expect_closed();
    eprintln!("{}", run.summary);
}

/// A new build that receives the state and then hangs: each upgrade fails
/// only after every task has handed its connection back and the state has
/// gone, so the old process gets it all back and starts a task for each
/// connection again. The 64 clients notice nothing, and the one that asked
/// is told why.
#[test]
fn a_failed_handover_gives_every_connection_back_to_a_new_task() {
    const ATTEMPTS: u64 = 3;
    let dir = scratch_dir("tokio-rollback");
    let binary = dir.join("tokio-echo-server");
    install(&binary, Path::new(TOKIO_ECHO_SERVER));
    let (mut first, port) = start(&binary, &["--transfer-timeout-ms", "1000"]);
    let mut kept = Client::connect(port, "kept");
    kept.echo();
    let real = dir.join("tokio-echo-server-real");
    install(&real, Path::new(TOKIO_ECHO_SERVER));
    install_script(
        &binary,
        &format!(
            "#!/bin/sh\nexec '{}' \"$@\" --hang-after-receive\n",
            real.display()
        ),
    );
    let output = Command::new(LOADGEN)
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--clients", "64", "--reconnect-every", "10"])
        .args(["--upgrades", &ATTEMPTS.to_string()])
        .args(["--timeout", "20s", "--bad-build"])
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!(
        "loadgen's output:\n{stdout}\nits stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{}; {context}", output.status);
    let refusals: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("upgrade-refused "))
        .collect();
    assert!(
        refusals.len() as u64 == ATTEMPTS
            && refusals
                .iter()
                .all(|line| line.contains("transfer timeout")),
        "{context}"
    );
    assert!(stdout.contains(" failures=0 "), "{context}");
    // The connection opened before any of it crossed the failed handovers
    // and is served by a task of the same process.
    kept.echo();
    assert!(
        Process::open(first.0.id()).is_some_and(|process| !process.has_exited()),
        "the first generation is gone; {context}"
    );
    first.0.kill().ok();
    first.expect_exit("the first generation, killed");
}
