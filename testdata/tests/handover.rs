//! Successful handovers: the conversation, the listener, a rebuilt binary,
//! the log file and the fds all survive generations.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::net::TcpStream;

use common::*;

#[test]
fn conversation_survives_ten_generations() {
    const BLOB: usize = 100_003;
    let (mut run, mut peer) = Spawn::new("ten-generations")
        .args(&["--blob-size", &BLOB.to_string(), "--label", "ten"])
        .start();
    let blob = testdata::blob_summary(&testdata::blob(BLOB));

    let first = status(&mut peer);
    assert_eq!(field(&first, "generation"), "1", "{first:?}");
    assert_eq!(field(&first, "pid"), run.first_pid.to_string(), "{first:?}");
    assert_eq!(
        field(&first, "blob"),
        blob,
        "the blob's length and checksum: {first:?}"
    );

    let mut pids = vec![run.first_pid];
    let mut n = 0;
    for generation in 2..=11 {
        for _ in 0..3 {
            n += 1;
            assert_eq!(peer.command(&format!("ping {n}")), format!("pong {n}"));
        }
        let ready = match generation {
            // A command cut in two around the split: the old generation
            // reads `ping 4` and hands it over in its peer buffer, the new
            // one completes it with `2\n`.
            6 => {
                let ready = split_to_ready(&mut run, &mut peer, "split", "ping 4", generation);
                peer.send("2\n");
                assert_eq!(peer.line(), "pong 42", "the half line survived the split");
                ready
            }
            // Whole commands pipelined right behind the split, in the same
            // write: answered by the new generation, in order, once each.
            8 => {
                let ready = split_to_ready(
                    &mut run,
                    &mut peer,
                    "split",
                    "ping 100\nping 101\n",
                    generation,
                );
                assert_eq!(peer.line(), "pong 100");
                assert_eq!(peer.line(), "pong 101");
                ready
            }
            _ => split_to_ready(&mut run, &mut peer, "split", "", generation),
        };
        let pid: u32 = field(&ready, "pid").parse().unwrap();
        assert!(
            !pids.contains(&pid),
            "generation {generation} reuses pid {pid}: {pids:?}"
        );
        pids.push(pid);
    }

    // A burst of pings in one write: every answer exactly once, in order,
    // and nothing after them but the status answer.
    let burst: String = (1..=20).map(|i| format!("ping burst-{i}\n")).collect();
    peer.send(&burst);
    for i in 1..=20 {
        assert_eq!(peer.line(), format!("pong burst-{i}"));
    }
    let last = status(&mut peer);
    assert_eq!(field(&last, "generation"), "11", "{last:?}");
    assert_eq!(field(&last, "pid"), pids[10].to_string(), "{last:?}");
    assert_eq!(field(&last, "label"), "ten", "{last:?}");
    assert_eq!(field(&last, "version"), "v1", "{last:?}");
    assert_eq!(
        field(&last, "blob"),
        blob,
        "the blob is unchanged after ten handovers"
    );
    let distinct: HashSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 11, "eleven distinct pids: {pids:?}");
}

#[test]
fn listener_keeps_accepting_across_generations() {
    let (mut run, mut peer) = Spawn::new("listener").start();
    let mut pid = run.first_pid.to_string();
    for generation in 1..=4 {
        let mut visitor = TcpStream::connect(("127.0.0.1", run.port))
            .unwrap_or_else(|e| panic!("connect to the listener in generation {generation}: {e}"));
        visitor.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut answer = String::new();
        visitor
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("read the greeting in generation {generation}: {e}"));
        assert_eq!(
            answer,
            format!("hello generation={generation} pid={pid}\n"),
            "the listener is served by generation {generation}"
        );
        if generation < 4 {
            let ready = split_to_ready(&mut run, &mut peer, "split", "", generation + 1);
            pid = field(&ready, "pid").to_owned();
        }
    }
}

#[test]
fn binary_replaced_on_disk_by_rename() {
    let (mut run, mut peer) = Spawn::new("rename")
        .args(&["--label", "keep-me", "--blob-size", "5000"])
        .start();
    let before = status(&mut peer);
    assert_eq!(field(&before, "version"), "v1", "{before:?}");

    // A rebuild: the new binary is written next to the old one and renamed
    // over it.
    let fresh = run.install(TESTDATA_V2, "testdata.new");
    fs::rename(&fresh, &run.binary).expect("rename the new binary over the old one");
    let exe = fs::read_link(format!("/proc/{}/exe", run.first_pid)).expect("read /proc/<pid>/exe");
    assert!(
        exe.to_string_lossy().ends_with(" (deleted)"),
        "the running binary was replaced, so its exe link is marked deleted: {exe:?}"
    );

    let ready = split_to_ready(&mut run, &mut peer, "split", "", 2);
    assert_eq!(
        field(&ready, "version"),
        "v2",
        "the new binary runs: {ready:?}"
    );
    let after = status(&mut peer);
    assert_eq!(field(&after, "version"), "v2", "{after:?}");
    assert_eq!(field(&after, "generation"), "2", "{after:?}");
    assert_eq!(
        field(&after, "label"),
        "keep-me",
        "the --label flag survived: {after:?}"
    );
    assert_eq!(
        field(&after, "blob"),
        field(&before, "blob"),
        "the blob survived"
    );
    assert_eq!(peer.command("ping v2"), "pong v2");
}

#[test]
fn log_file_is_handed_over() {
    let (mut run, mut peer) = Spawn::new("log").start();
    let first = status(&mut peer);
    assert_eq!(field(&first, "generation"), "1");

    // Only the first generation opens the log by its path. Move it away: the
    // later generations can only write to it through the handed-over fd.
    let moved = run.dir.join("moved.log");
    fs::rename(&run.log, &moved).expect("move the log file");

    let mut pids = vec![run.first_pid.to_string()];
    for generation in 2..=4 {
        let ready = split_to_ready(&mut run, &mut peer, "split", "", generation);
        pids.push(field(&ready, "pid").to_owned());
    }
    let expected: Vec<String> = pids
        .iter()
        .enumerate()
        .map(|(i, pid)| format!("generation {} pid {pid} version v1", i + 1))
        .collect();
    let log = fs::read_to_string(&moved).expect("read the moved log");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        expected,
        "one line per generation, all in the handed-over file"
    );
    assert!(
        !run.log.exists(),
        "no generation reopened the log by its path {}",
        run.log.display()
    );
}

#[test]
fn fds_after_success() {
    let (mut run, mut peer) = Spawn::new("fds-success").start();
    let answer = peer.command("fds");
    let before = parse_fds(answer.strip_prefix("fds ").expect("a fds answer"));
    // Only now is the peer connection surely accepted (an unaccepted
    // connection has inode 0 in /proc/net/tcp).
    let listener = tcp_inode("0A", run.port, None).expect("the listener in /proc/net/tcp");
    let peer_port = peer.stream.local_addr().unwrap().port();
    let served = tcp_inode("01", run.port, Some(peer_port))
        .expect("the server side of the peer connection in /proc/net/tcp");
    let log = fs::canonicalize(&run.log).expect("canonicalize the log path");
    let mut state_targets = vec![
        format!("socket:[{listener}]"),
        format!("socket:[{served}]"),
        log.display().to_string(),
    ];
    state_targets.sort();

    assert_eq!(
        non_stdio(&before),
        state_targets,
        "the first generation holds its state's fds and nothing else: {answer:?}"
    );

    let ready = split_to_ready(&mut run, &mut peer, "split", "", 2);
    let pid = field(&ready, "pid");
    let done = run
        .stdout
        .seen()
        .iter()
        .find(|line| line.starts_with(&format!("done pid={pid} ")));
    let done = done.expect("the done line was read").clone();
    let old = parse_fds(done.split_once(" fds=").expect("fds= in the done line").1);
    for target in &state_targets {
        assert!(
            !old.iter().any(|(_, t)| t == target),
            "the old process still holds {target} after Done: {done:?}"
        );
    }
    // At Done the old copies point at /dev/null; the handover thread closes
    // them right after, so there are between none and all of them.
    let placeholders = non_stdio(&old);
    assert!(
        placeholders.len() <= state_targets.len() && placeholders.iter().all(|t| t == "/dev/null"),
        "after Done the old process holds only stdio and /dev/null placeholders: {done:?}"
    );

    let answer = peer.command("fds");
    let after = parse_fds(answer.strip_prefix("fds ").expect("a fds answer"));
    assert_eq!(stdio(&after), stdio(&before), "the same stdio: {answer:?}");
    assert_eq!(
        non_stdio_but_previous_build(&after),
        state_targets,
        "the new generation holds exactly the handed-over fds (same inodes) and the previous \
         build's executable, nothing else: {answer:?}"
    );
    assert_eq!(
        peer.command("env"),
        "env",
        "no MITOSIS_ variable is left in the new generation's environment"
    );
}

#[test]
fn spare_fds_cross_in_several_batches() {
    // More fds than two batches of the fd channel (at most 253 each) hold.
    const SPARE: usize = 600;
    let (mut run, mut peer) = Spawn::new("spare-fds")
        .args(&["--spare-fds", &SPARE.to_string()])
        .start();
    let nulls = |fds: &[(u32, String)]| fds.iter().filter(|(_, t)| t == "/dev/null").count();

    let first = status(&mut peer);
    assert_eq!(field(&first, "spare"), SPARE.to_string(), "{first:?}");
    let answer = peer.command("fds");
    let before = parse_fds(answer.strip_prefix("fds ").expect("a fds answer"));
    // The tests start testdata with stdin from /dev/null.
    let stdio_nulls = stdio(&before).iter().filter(|t| *t == "/dev/null").count();
    assert_eq!(
        nulls(&before),
        SPARE + stdio_nulls,
        "the first generation opened {SPARE} spare fds: {answer:?}"
    );

    let ready = split_to_ready(&mut run, &mut peer, "split", "", 2);
    let pid = field(&ready, "pid");
    let after = status(&mut peer);
    assert_eq!(field(&after, "pid"), pid, "{after:?}");
    assert_eq!(field(&after, "generation"), "2", "{after:?}");
    assert_eq!(
        field(&after, "spare"),
        SPARE.to_string(),
        "every spare fd crossed: {after:?}"
    );

    let answer = peer.command("fds");
    let fds = parse_fds(answer.strip_prefix("fds ").expect("a fds answer"));
    assert_eq!(stdio(&fds), stdio(&before), "the same stdio: {answer:?}");
    assert_eq!(
        nulls(&fds),
        SPARE + stdio_nulls,
        "the new generation holds the {SPARE} spare fds: {answer:?}"
    );
    assert_eq!(
        non_stdio_but_previous_build(&fds).len(),
        non_stdio(&before).len(),
        "and every other fd of the state and the previous build's executable, nothing more: \
         {answer:?}"
    );

    let done = run
        .stdout
        .seen()
        .iter()
        .find(|line| line.starts_with(&format!("done pid={pid} ")))
        .expect("the done line was read")
        .clone();
    let old = parse_fds(done.split_once(" fds=").expect("fds= in the done line").1);
    // At Done the old copies point at /dev/null; the handover thread closes
    // them right after, so there are between none and all of them.
    let placeholders = non_stdio(&old);
    assert!(
        placeholders.len() <= non_stdio(&before).len()
            && placeholders.iter().all(|t| t == "/dev/null"),
        "after Done the old process holds only stdio and /dev/null placeholders: {done:?}"
    );
    assert_eq!(peer.command("ping spare"), "pong spare");
}
