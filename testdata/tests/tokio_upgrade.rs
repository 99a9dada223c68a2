//! The awaited upgrade with real processes, in both runtime flavours: a
//! tokio program serves while it awaits `ready()` in `select!`, hands over
//! with `hand_over(state).await`, upgrades on a real `SIGUSR2` through an
//! awaited trigger, rolls back, and, when it calls an upgrade off at each
//! await before the hand-over, serves on with its state.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_testdata-tokio");
const TIMEOUT: Duration = Duration::from_secs(20);

/// A `testdata-tokio` process and its generations, over the control
/// connection they inherit one from another.
struct Program {
    first: Child,
    conn: BufReader<TcpStream>,
    gate: PathBuf,
}

impl Program {
    fn start(name: &str, current_thread: bool, fault: Option<&str>) -> Program {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let gate =
            std::env::temp_dir().join(format!("mitosis-tokio-gate-{name}-{}", std::process::id()));
        std::fs::write(&gate, "0").unwrap();
        let mut command = Command::new(BINARY);
        command.args(["--connect", &port, "--gate", gate.to_str().unwrap()]);
        if current_thread {
            command.arg("--current-thread");
        }
        if let Some(fault) = fault {
            command.env("MITOSIS_FAULT", fault);
        }
        let first = command.spawn().unwrap();
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        Program {
            first,
            conn: BufReader::new(conn),
            gate,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.conn.read_line(&mut line).expect("a line in time");
        assert!(line.ends_with('\n'), "the program hung up after {line:?}");
        line.trim_end().to_string()
    }

    fn send(&mut self, line: &str) {
        writeln!(self.conn.get_mut(), "{line}").unwrap();
    }

    fn command(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// How long the next new process waits before it calls `init`.
    fn gate(&self, ms: u64) {
        std::fs::write(&self.gate, ms.to_string()).unwrap();
    }

    /// `ping`s until the new process is ready, checking that the old one
    /// answers meanwhile; returns how many it answered.
    fn serve_until_ready(&mut self, old: &str, child: &str) -> u32 {
        let mut answered = 0;
        loop {
            self.send(&format!("ping {answered}"));
            let line = self.line();
            if line.starts_with("ready ") {
                assert_eq!(field(&line, "child"), child, "{line}");
                // The ping crossed the readiness, and is answered next.
                let pong = self.line();
                assert!(pong.starts_with(&format!("pong {answered} ")), "{pong}");
                assert_eq!(field(&pong, "pid"), old, "{pong}");
                return answered + 1;
            }
            assert!(line.starts_with(&format!("pong {answered} ")), "{line}");
            assert_eq!(field(&line, "pid"), old, "{line}");
            answered += 1;
        }
    }

    /// `upgrade`, served through until ready; returns the child's pid.
    fn prepare(&mut self, old: &str) -> String {
        let line = self.command("upgrade");
        assert!(line.starts_with("preparing child="), "{line}");
        let child = field(&line, "child");
        self.serve_until_ready(old, &child);
        child
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // Later generations exit when the test hangs up.
        let _ = self.first.kill();
        let _ = self.first.wait();
        let _ = std::fs::remove_file(&self.gate);
    }
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_string()
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn flavours(test: impl Fn(&str, bool)) {
    test("multi", false);
    test("current", true);
}

/// Served through a slow start, then handed over; twice, so that the
/// second generation awaits its own upgrade too.
#[test]
fn awaits_readiness_while_serving_and_hands_over() {
    flavours(|flavour, current| {
        let mut program = Program::start(&format!("over-{flavour}"), current, None);
        let hello = program.line();
        assert_eq!(field(&hello, "generation"), "1", "{hello}");
        let mut pid = field(&hello, "pid");
        let mut served = 0;
        for generation in 2..=3 {
            program.gate(500);
            let line = program.command("upgrade");
            let child = field(&line, "child");
            let answered = program.serve_until_ready(&pid, &child);
            assert!(answered >= 5, "only {answered} answered in 500 ms");
            served += answered;
            program.send("go");
            let hello = program.line();
            assert_eq!(field(&hello, "pid"), child, "{hello}");
            assert_eq!(field(&hello, "generation"), generation.to_string());
            assert_eq!(field(&hello, "served"), served.to_string(), "{hello}");
            pid = child;
        }
        assert_eq!(program.first.wait().unwrap().code(), Some(0));
        program.send("quit");
    });
}

/// The upgrade called off at each await before the hand-over: while the
/// new process starts (after many dropped `ready()` futures), and once it
/// is ready. Each time the new process is stopped, and the program serves
/// on with its state, and can still upgrade.
#[test]
fn an_upgrade_called_off_at_each_await_leaves_the_state_with_the_program() {
    flavours(|flavour, current| {
        let mut program = Program::start(&format!("cancel-{flavour}"), current, None);
        let pid = field(&program.line(), "pid");
        // While starting.
        program.gate(10_000);
        let line = program.command("upgrade");
        let child = field(&line, "child");
        for n in 0..5 {
            let pong = program.command(&format!("ping {n}"));
            assert_eq!(field(&pong, "pid"), pid, "{pong}");
        }
        assert_eq!(program.command("cancel"), "cancelled");
        assert!(!alive(&child), "pid {child} still runs");
        let pong = program.command("ping kept");
        assert_eq!(
            (field(&pong, "pid"), field(&pong, "served")),
            (pid.clone(), "6".into())
        );
        // Once ready.
        program.gate(0);
        let child = program.prepare(&pid);
        assert_eq!(program.command("cancel"), "cancelled");
        assert!(!alive(&child), "pid {child} still runs");
        let pong = program.command("ping kept");
        assert_eq!(field(&pong, "pid"), pid, "{pong}");
        let served: u32 = field(&pong, "served").parse().unwrap();
        // And it still upgrades, with all of it.
        let child = program.prepare(&pid);
        program.send("go");
        let hello = program.line();
        assert_eq!(field(&hello, "pid"), child, "{hello}");
        let after: u32 = field(&hello, "served").parse().unwrap();
        assert!(after > served, "{hello}, {served} served before");
        program.send("quit");
    });
}

/// A real SIGUSR2 reaches the awaited trigger in `select!`.
#[test]
fn a_signal_starts_an_awaited_upgrade() {
    flavours(|flavour, current| {
        let mut program = Program::start(&format!("signal-{flavour}"), current, None);
        let pid = field(&program.line(), "pid");
        assert_eq!(field(&program.command("ping 1"), "pid"), pid);
        let status = Command::new("kill").args(["-USR2", &pid]).status().unwrap();
        assert!(status.success());
        let line = program.line();
        assert!(line.starts_with("preparing child="), "{line}");
        let child = field(&line, "child");
        program.serve_until_ready(&pid, &child);
        program.send("go");
        let hello = program.line();
        assert_eq!(field(&hello, "pid"), child, "{hello}");
        program.send("quit");
    });
}

/// A new build that dies after it decoded the state: the awaited
/// hand-over gives the state back, and the program serves on.
#[test]
fn an_awaited_hand_over_that_fails_gives_the_state_back() {
    flavours(|flavour, current| {
        let mut program = Program::start(
            &format!("rollback-{flavour}"),
            current,
            Some("new:commit:kill"),
        );
        let pid = field(&program.line(), "pid");
        program.prepare(&pid);
        let served: u32 = field(&program.command("ping before"), "served")
            .parse()
            .unwrap();
        program.send("go");
        let failed = program.line();
        assert!(failed.starts_with("failed: "), "{failed}");
        let pong = program.command("ping after");
        assert_eq!(field(&pong, "pid"), pid, "{pong}");
        assert_eq!(field(&pong, "served"), (served + 1).to_string(), "{pong}");
        program.send("quit");
        assert_eq!(program.first.wait().unwrap().code(), Some(0));
    });
}
