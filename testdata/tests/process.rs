//! The process around a handover: fds it inherited without close-on-exec,
//! an ignored SIGCHLD, who can read the handover's secret, and what each
//! side says when time runs out. Real processes throughout.

mod common;

use std::collections::HashMap;
use std::fs;

use common::*;

/// The socket inodes in an `fds` answer that more than one fd refers to.
fn duplicated_sockets(fds: &str) -> Vec<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for (_, target) in parse_fds(fds.strip_prefix("fds ").unwrap_or(fds)) {
        if target.starts_with("socket:") {
            *count.entry(target).or_default() += 1;
        }
    }
    let mut twice: Vec<String> = count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(target, n)| format!("{target} x{n}"))
        .collect();
    twice.sort();
    twice
}

/// Splits and expects generation `generation` to answer `ready`.
fn split_to(peer: &mut Peer, generation: u32) {
    let ready = peer.command("split");
    assert!(ready.starts_with("ready "), "{ready:?}");
    assert_eq!(field(&ready, "generation"), generation.to_string());
}

/// A listener without close-on-exec in the state (systemd's `LISTEN_FDS`
/// sockets are such) must reach each generation once: through the fd
/// channel, not also by being inherited at spawn, where every later spawn
/// would copy it again and the port would outlive the state that holds it.
#[test]
fn an_inheritable_listener_crosses_three_generations_once() {
    let (_run, mut peer) = Spawn::new("inheritable")
        .args(&["--inheritable-listener"])
        .start();
    let first = peer.command("fds");
    assert_eq!(duplicated_sockets(&first), Vec::<String>::new(), "{first}");
    for generation in [2, 3] {
        split_to(&mut peer, generation);
        let fds = peer.command("fds");
        assert_eq!(
            duplicated_sockets(&fds),
            Vec::<String>::new(),
            "generation {generation} holds each socket of the state once: {fds}"
        );
    }
}

/// With SIGCHLD ignored, the kernel reaps a child as it exits, and its exit
/// status is lost; the failure must still blame the new process's exit, not
/// a connection that closed.
#[test]
fn an_ignored_sigchld_still_reports_the_new_process_exiting() {
    let (mut run, mut peer) = Spawn::new("sigchld-ignored")
        .args(&["--ignore-sigchld"])
        .start();
    let line = peer.command("split exit");
    assert!(line.starts_with("split failed: "), "{line:?}");
    assert!(
        line.contains("the new process exited"),
        "the failure blames the new process's exit: {line:?}"
    );
    assert!(line.contains("step=step "), "the step is named: {line:?}");
    let splitting = run.stdout.expect("splitting child=");
    let child: u32 = field(&splitting, "child").parse().unwrap();
    assert!(is_gone(child, run.first_pid), "{child} is gone: {line:?}");
    assert_eq!(peer.command("ping still"), "pong still");
}

/// What a process started by a split shows to anyone who may read
/// `/proc/<pid>/environ` (its own user, even under Yama's ptrace_scope,
/// which does not guard that file) must not let them take the state.
#[test]
fn the_secret_is_not_in_the_new_process_environment() {
    let (mut run, mut peer) = Spawn::new("secret-environ").start();
    let before = peer.command("status");
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let environ = fs::read(format!("/proc/{child}/environ")).expect("read the child's environ");
    let names: Vec<String> = environ
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, _) = entry.split_once('=')?;
            key.starts_with("MITOSIS_").then(|| key.to_owned())
        })
        .collect();
    assert_eq!(
        names,
        Vec::<String>::new(),
        "the new process's environment holds nothing of mitosis's: the flag carries the fd \
         channel's path"
    );
    let ready = release_and_expect_takeover(&fifo, &mut peer);
    assert_eq!(field(&ready, "pid"), child.to_string());
    let after = peer.command("status");
    assert_eq!(field(&after, "blob"), field(&before, "blob"));
}

/// A new process that calls `init` after starting threads (every
/// `#[tokio::main]`) cannot safely clean its environment, so mitosis puts
/// nothing there: the subprocesses it starts see no variable of mitosis's.
#[test]
fn a_subprocess_of_a_threaded_new_process_sees_nothing_of_mitosis() {
    for (name, args) in [
        ("env-threads", &["--thread-before-init"][..]),
        ("env-single", &[]),
    ] {
        let (_run, mut peer) = Spawn::new(name).args(args).start();
        split_to(&mut peer, 2);
        assert_eq!(peer.command("child-env"), "child-env", "{name}");
        split_to(&mut peer, 3);
        assert_eq!(peer.command("child-env"), "child-env", "{name}");
    }
}

/// Each generation keeps its previous build's executable open, and passes
/// it to no process but the next generation: a subprocess it starts
/// inherits nothing of it.
#[test]
fn the_previous_build_is_kept_and_not_passed_to_subprocesses() {
    let (_run, mut peer) = Spawn::new("previous-build-fd").start();
    let handles = |answer: &str| {
        answer
            .split(' ')
            .skip(1)
            .filter(|target| target.ends_with("/testdata"))
            .count()
    };
    assert_eq!(
        handles(&peer.command("fds")),
        0,
        "a fresh process keeps none"
    );
    for generation in 2..=3 {
        split_to(&mut peer, generation);
        let own = peer.command("fds");
        assert_eq!(handles(&own), 1, "generation {generation}: {own}");
        let child = peer.command("child-fds");
        assert!(child.starts_with("child-fds "), "{child}");
        assert_eq!(handles(&child), 0, "generation {generation}: {child}");
    }
}

/// An old process of protocol version 2 sends no LINEAGE: the new process
/// keeps no previous build (it closes the handle that came with KEY), and
/// takes over as before.
#[test]
fn from_a_version_2_old_process_there_is_no_previous_build() {
    let (_run, mut peer) = Spawn::new("previous-build-v2")
        .env("MITOSIS_MAX_VERSION", "old:2")
        .start();
    split_to(&mut peer, 2);
    let own = peer.command("fds");
    assert!(
        !own.split(' ').any(|target| target.ends_with("/testdata")),
        "{own}"
    );
    assert_eq!(peer.command("ping v2"), "pong v2");
}

/// When the old process stops answering, the new process's own error says
/// so: it gives up, and nobody killed it.
#[test]
fn the_new_process_timeout_says_what_happened_there() {
    let (mut run, mut peer) = Spawn::new("new-side-timeout")
        .args(&["--timeout-ms", "1000"])
        .env("MITOSIS_FAULT", "old:offer:stall=3000")
        .start();
    peer.send("split\n");
    let error = run.stderr.wait_for("the new process's init error", |line| {
        line.starts_with("init error: ")
    });
    assert!(
        error.contains("did not answer within the transfer timeout of 1s")
            && error.contains("step 4"),
        "{error:?}"
    );
    assert!(
        !error.contains("was killed"),
        "the new process gives up by itself; nobody killed it: {error:?}"
    );
    let line = peer.line();
    assert!(line.starts_with("split failed: "), "{line:?}");
    assert_eq!(peer.command("ping after"), "pong after");
}
