//! A state of tokio types under `#[tokio::main]`, in both runtime flavours
//! (`testdata-tokio-state`, multi-thread, and `-current`): a listener,
//! connections in `Framed`s with bytes read but not decoded, and a journal
//! in a `BufWriter` with bytes not written, upgraded three times and then
//! rolled back. Every byte arrives exactly once, in order; a connection
//! made during an upgrade is answered by the generation that ends up
//! owning the listener; and no new process, nor a subprocess it spawns,
//! sees a `MITOSIS_*` variable.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};

use common::*;

const MULTI_THREAD: &str = env!("CARGO_BIN_EXE_testdata-tokio-state");
const CURRENT_THREAD: &str = env!("CARGO_BIN_EXE_testdata-tokio-state-current");

#[test]
fn multi_thread_state_crosses_three_upgrades_and_a_rollback() {
    three_upgrades_and_a_rollback("tokio-state-multi", MULTI_THREAD);
}

#[test]
fn current_thread_state_crosses_three_upgrades_and_a_rollback() {
    three_upgrades_and_a_rollback("tokio-state-current", CURRENT_THREAD);
}

/// The program's journal connection, and the lines it must carry.
struct Journal {
    stream: TcpStream,
    expected: Vec<String>,
    /// How many of `expected` have arrived and been checked.
    arrived: usize,
}

impl Journal {
    fn push(&mut self, line: String) {
        self.expected.push(line);
    }

    /// The expected bytes not checked yet.
    fn due(&self) -> String {
        self.expected[self.arrived..]
            .iter()
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// Not one byte is readable: whatever the program journaled since its
    /// last flush is still in its `BufWriter`.
    fn assert_unwritten(&mut self, when: &str) {
        self.stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let read = self.stream.read(&mut byte);
        self.stream.set_nonblocking(false).unwrap();
        match read {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("the journal was written to {when}: {other:?}"),
        }
    }

    /// After a `flush`: exactly the lines journaled since the last one.
    fn assert_flushed(&mut self) {
        let due = self.due();
        let mut bytes = vec![0u8; due.len()];
        self.stream
            .read_exact(&mut bytes)
            .unwrap_or_else(|e| panic!("the journal's {due:?}: {e}"));
        assert_eq!(String::from_utf8_lossy(&bytes), due);
        self.arrived = self.expected.len();
        self.assert_unwritten("after the flush");
    }

    /// The last generation is gone: nothing more, then end of file.
    fn assert_ends(&mut self) {
        let due = self.due();
        let (rest, end) = read_to_end(&mut self.stream, "the journal");
        assert_eq!(String::from_utf8_lossy(&rest), due);
        assert_eq!(end, "eof");
    }
}

/// The names of the `MITOSIS_*` variables in the environment that `pid`
/// was started with (what mitosis put there for it to find, if anything).
fn mitosis_environ(pid: &str) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/environ: {e}"));
    assert!(!environ.is_empty(), "pid {pid} has an empty environment");
    environ
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (name, _) = entry.split_once('=')?;
            name.starts_with("MITOSIS_").then(|| name.to_string())
        })
        .collect()
}

fn three_upgrades_and_a_rollback(name: &str, binary: &str) {
    let journal_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let journal_port = journal_listener.local_addr().unwrap().port().to_string();
    let (mut run, mut a) = Spawn::new(name)
        .binary(binary)
        .without_log()
        .args(&["--journal", &journal_port])
        .start();
    // The program connected before it said `listening`.
    let mut journal = Journal {
        stream: accept_timeout(&journal_listener),
        expected: Vec::new(),
        arrived: 0,
    };
    let mut owner = run.first_pid.to_string();
    let mut generation = 1;
    let hello = |generation: u32, pid: &str| format!("hello gen={generation} pid={pid}");
    assert_eq!(a.line(), hello(1, &owner));
    let mut b = Peer::connect(run.port, run.pids.clone());
    assert_eq!(b.line(), hello(1, &owner));
    assert_eq!(mitosis_environ(&owner), Vec::<String>::new());
    // One connection made during each upgrade; each stays open after.
    let mut during: Vec<Peer> = Vec::new();

    for k in 1..=4 {
        let broken = k == 4;
        // B: a whole line, and the start of the next in the same write, so
        // that its Framed holds bytes it has not decoded.
        b.send(&format!("ping b{k}\nping b{k}-"));
        assert_eq!(b.line(), format!("pong b{k} gen={generation} pid={owner}"));
        journal.push(format!("gen={generation} ping b{k}"));
        // A: the upgrade, and the start of the next line.
        let upgrade = if broken { "upgrade broken" } else { "upgrade" };
        let unread = format!("ping a{k}-");
        a.send(&format!("{upgrade}\n{unread}"));
        journal.push(format!("gen={generation} upgrade"));
        let preparing = a.line();
        assert!(preparing.starts_with("preparing child="), "{preparing}");
        let child = field(&preparing, "child").to_string();
        assert_eq!(field(&preparing, "unread"), unread.len().to_string());
        journal.assert_unwritten("while preparing");
        // A connection made while the new process starts: the old one no
        // longer accepts, and it waits in the listener's backlog.
        let mut c = Peer::connect(run.port, run.pids.clone());
        c.send(&format!("ping c{k}\n"));
        assert_eq!(a.line(), format!("ready child={child}"));
        if broken {
            // The new process died after decoding: the old one has it all.
            let failed = a.line();
            assert!(failed.starts_with("failed: "), "{failed}");
            journal.push(format!("gen={generation} rolled back"));
            assert!(
                !std::path::Path::new(&format!("/proc/{child}")).exists(),
                "the broken new process {child} is still there"
            );
        } else {
            generation += 1;
            owner = child;
            journal.push(format!("gen={generation} arrived pid={owner}"));
            // Every connection it took over is greeted by the new process.
            assert_eq!(a.line(), hello(generation, &owner));
            assert_eq!(b.line(), hello(generation, &owner));
            for earlier in &mut during {
                assert_eq!(earlier.line(), hello(generation, &owner));
            }
            assert_eq!(mitosis_environ(&owner), Vec::<String>::new());
        }
        assert_eq!(c.line(), hello(generation, &owner));
        assert_eq!(c.line(), format!("pong c{k} gen={generation} pid={owner}"));
        journal.push(format!("gen={generation} ping c{k}"));
        // The rest of the lines whose start the Framed held.
        a.send(&format!("{k}\n"));
        assert_eq!(
            a.line(),
            format!("pong a{k}-{k} gen={generation} pid={owner}")
        );
        journal.push(format!("gen={generation} ping a{k}-{k}"));
        b.send(&format!("{k}\n"));
        assert_eq!(
            b.line(),
            format!("pong b{k}-{k} gen={generation} pid={owner}")
        );
        journal.push(format!("gen={generation} ping b{k}-{k}"));
        // A subprocess of this generation's.
        assert_eq!(a.command("child-env"), "child-env probe=yes mitosis=none");
        // The second generation leaves its journal lines to the third.
        if k == 2 {
            journal.assert_unwritten("without a flush");
        } else {
            assert_eq!(a.command("flush"), format!("flushed gen={generation}"));
            journal.assert_flushed();
        }
        during.push(c);
    }

    // Still the fourth generation, with everything.
    assert_eq!(generation, 4);
    for (k, c) in during.iter_mut().enumerate() {
        let pong = c.command(&format!("ping again-{k}"));
        assert_eq!(pong, format!("pong again-{k} gen=4 pid={owner}"));
        journal.push(format!("gen=4 ping again-{k}"));
    }
    let mut late = Peer::connect(run.port, run.pids.clone());
    assert_eq!(late.line(), hello(4, &owner));
    assert_eq!(a.command("flush"), "flushed gen=4");
    a.send("quit\n");
    journal.assert_ends();
    assert_eq!(run.child.wait().unwrap().code(), Some(0));
}
