//! The echo server as a container's entrypoint: PID 1 of a new PID
//! namespace (`unshare --pid --fork --mount-proc`, as Docker and Kubernetes
//! run it), and the same under Debian's `tini` as PID 1 (`docker run
//! --init`). Each upgrades the server 20 times under the load of 64
//! clients, rolls a broken build back, upgrades it by a signal sent to the
//! namespace's PID 1, and stops it with `kill -TERM` to PID 1 (`docker
//! stop`). The pid the container runtime watches never changes, and no
//! zombie is left in the namespace.
//!
//! Needs root, `unshare` (util-linux) and `tini`: without them these tests
//! skip with a reason, except under `CI=true`, where they fail.

mod env_support;

use std::process::Stdio;

use env_support::{
    Client, KillOnDrop, Need, Process, Reply, can_run, chain_of, children_of, clean_command,
    eventually, install, install_broken_build, lines_of, listening_port, refuses_connections,
    relay, run_loadgen, scratch_dir, status_field,
};
use rustix::process::Signal;

const UPGRADES: u64 = 20;

#[test]
fn echo_server_as_pid_1_of_a_pid_namespace() {
    let test = "echo_server_as_pid_1_of_a_pid_namespace";
    if can_run(test, &[Need::Root, Need::PidNamespaces]) {
        upgrade_roll_back_signal_and_stop(Init::EchoServer);
    }
}

/// The tokio echo server as PID 1: mitosis's `init` runs inside
/// `#[tokio::main]`, so the keeper starts in a process whose runtime
/// threads do not block the signals it forwards; a `kill` to PID 1 must
/// still reach the serving generation.
#[test]
fn tokio_echo_server_as_pid_1_of_a_pid_namespace() {
    let test = "tokio_echo_server_as_pid_1_of_a_pid_namespace";
    if can_run(test, &[Need::Root, Need::PidNamespaces]) {
        upgrade_roll_back_signal_and_stop(Init::TokioEchoServer);
    }
}

#[test]
fn echo_server_under_tini_as_pid_1() {
    let test = "echo_server_under_tini_as_pid_1";
    let tini = Need::Program {
        name: "tini",
        package: "tini",
    };
    if can_run(test, &[Need::Root, Need::PidNamespaces, tini]) {
        upgrade_roll_back_signal_and_stop(Init::Tini);
    }
}

/// What runs as the namespace's PID 1.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// The echo server itself: mitosis sees it is PID 1 and stays as the
    /// keeper that holds that pid (`MITOSIS_KEEPER=auto`, the default).
    EchoServer,
    /// `tokio-echo-server`, as [`Init::EchoServer`]: its threads start
    /// before mitosis's `init`.
    TokioEchoServer,
    /// `tini -- echo-server`, as `docker run --init` runs it: tini is PID 1
    /// and exits when its child does. The echo server is not PID 1, but
    /// mitosis sees that its parent is tini (`MITOSIS_KEEPER=auto`, the
    /// default), so the child tini watches is the keeper, which stays.
    Tini,
}

fn upgrade_roll_back_signal_and_stop(init: Init) {
    let dir = scratch_dir(&format!("container-{init:?}"));
    let build = match init {
        Init::TokioEchoServer => env!("CARGO_BIN_EXE_tokio-echo-server"),
        Init::EchoServer | Init::Tini => env_support::ECHO_SERVER,
    };
    let binary = dir.join("echo-server");
    install(&binary, std::path::Path::new(build));
    let mut command = clean_command("unshare");
    // --kill-child: if the test dies, so does the namespace.
    command.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
    if let Init::Tini = init {
        command.args(["tini", "--"]);
    }
    command
        .arg(&binary)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut unshare = KillOnDrop(command.spawn().expect("start unshare"));
    let stdout = lines_of(unshare.0.stdout.take().unwrap());
    relay(unshare.0.stderr.take().unwrap(), "  [container] ");
    let port = listening_port(&stdout);

    // The namespace's PID 1 is unshare's only child.
    let children = children_of(unshare.0.id());
    let [pid1] = children[..] else {
        panic!("unshare has children {children:?}, not one");
    };
    let pid1 = Namespace::enter(pid1);
    assert_eq!(
        pid1.ns_pid_of(pid1.process.pid),
        Some(1),
        "unshare's child is not PID 1 of its namespace"
    );
    // The process the runtime (or tini) watches, which must outlive every
    // upgrade: PID 1 itself, or tini's only child.
    let watched = match init {
        Init::EchoServer | Init::TokioEchoServer => Process::expect(pid1.process.pid, "PID 1"),
        Init::Tini => {
            let children = children_of(pid1.process.pid);
            let [child] = children[..] else {
                panic!("tini has children {children:?}, not one");
            };
            Process::expect(child, "tini's child")
        }
    };
    let watched_ns_pid = pid1.ns_pid_of(watched.pid).expect("the watched process");
    eprintln!(
        "{init:?}: unshare pid {}, namespace PID 1 = host pid {} ({}), the pid watched: \
         host {} = namespace {} ({})",
        unshare.0.id(),
        pid1.process.pid,
        env_support::command_name(pid1.process.pid),
        watched.pid,
        watched_ns_pid,
        env_support::command_name(watched.pid),
    );
    eprintln!("{init:?}: processes at start: {}", pid1.describe());

    // A connection of the test's own, kept open through everything.
    let mut kept = Client::connect(port, "kept");
    kept.echo();

    // 20 upgrades under load. The pids the server reports are the
    // namespace's.
    let run = run_loadgen(port, UPGRADES);
    assert_eq!(run.upgrades.len() as u64, UPGRADES, "{}", run.summary);
    let generations = chain_of(run.upgrades[0].old_pid, 1, &run.upgrades);
    eprintln!(
        "{init:?}: {UPGRADES} upgrades under load, generations' namespace pids {generations:?}"
    );
    eprintln!("{init:?}: {}", run.summary.replace('\n', "\n  "));
    kept.echo();
    assert!(
        !pid1.process.has_exited(),
        "PID 1 exited during the upgrades"
    );
    assert!(
        !watched.has_exited(),
        "the watched pid exited during the upgrades"
    );
    let mut serving = *generations.last().unwrap();
    // No zombies: every old generation has been reaped, and only the
    // serving one is left beside PID 1 (and tini's child). Reaping by
    // another process announces itself to nobody outside, hence the
    // polling.
    let expected_pids = |serving: u32| {
        let mut pids = vec![1, watched_ns_pid, serving];
        pids.dedup();
        pids
    };
    pid1.expect_exactly(&expected_pids(serving), "after the upgrades");
    eprintln!("{init:?}: after {UPGRADES} upgrades: {}", pid1.describe());

    // A rollback: the build on disk fails at start; the upgrade is
    // refused, the same generation serves on, PID 1 is the same.
    install_broken_build(&binary);
    let Reply::Failed(reason) = kept.upgrade() else {
        panic!("an upgrade to /bin/false succeeded");
    };
    kept.echo();
    pid1.expect_exactly(&expected_pids(serving), "after the rollback");
    eprintln!(
        "{init:?}: broken build refused ({reason}); still serving: {}",
        pid1.describe()
    );
    install(&binary, std::path::Path::new(build));
    let (old, new, generation) = kept.expect_upgrade();
    assert_eq!(
        (old, generation),
        (serving, UPGRADES + 2),
        "the upgrade after the rollback"
    );
    serving = new;
    kept.echo();

    // SIGUSR2 to PID 1 is forwarded to the serving generation, which
    // upgrades: it exits once the next one has taken over.
    let serving_process = Process::expect(
        pid1.host_pid_of(serving).expect("the serving generation"),
        "the serving generation",
    );
    pid1.process.signal(Signal::USR2);
    serving_process.expect_exit("the generation that served when PID 1 got SIGUSR2");
    kept.echo();
    let (old, new, generation) = kept.expect_upgrade();
    assert_ne!(old, serving, "SIGUSR2 to PID 1 started no upgrade");
    assert_eq!(
        generation,
        UPGRADES + 4,
        "the signal's upgrade and this one"
    );
    eprintln!(
        "{init:?}: SIGUSR2 to PID 1: namespace pid {serving} -> {old}; an UPGRADE then -> {new}, \
         generation {generation}"
    );
    serving = new;
    pid1.expect_exactly(&expected_pids(serving), "after the signal's upgrade");
    assert!(!watched.has_exited(), "the watched pid exited");

    // `docker stop`: SIGTERM to PID 1 stops the service cleanly.
    pid1.process.signal(Signal::TERM);
    kept.expect_closed();
    let status = unshare.expect_exit("unshare after SIGTERM to PID 1");
    assert_eq!(status.code(), Some(0), "unshare (PID 1's status): {status}");
    assert!(
        refuses_connections(port),
        "port {port} still accepts after the stop"
    );
    eprintln!(
        "{init:?}: SIGTERM to PID 1 (host pid {}): unshare exited with {status}, port {port} \
         refuses connections",
        pid1.process.pid
    );
}

/// A PID namespace, seen from the host through its PID 1.
struct Namespace {
    process: Process,
    /// `/proc/<pid>/ns/pid`'s link, which names the namespace.
    id: std::path::PathBuf,
}

/// One process of the namespace.
struct Member {
    host_pid: u32,
    ns_pid: u32,
    state: String,
    name: String,
}

impl Namespace {
    fn enter(pid1: u32) -> Namespace {
        Namespace {
            process: Process::expect(pid1, "the namespace's PID 1"),
            id: std::fs::read_link(format!("/proc/{pid1}/ns/pid")).expect("PID 1's namespace"),
        }
    }

    /// Every process in the namespace, by host pid.
    fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = std::fs::read_dir("/proc")
            .expect("list /proc")
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|id| id == self.id)
            })
            .filter_map(|host_pid| {
                let ns_pid = status_field(host_pid, "NSpid")?
                    .split_whitespace()
                    .last()?
                    .parse()
                    .ok()?;
                Some(Member {
                    host_pid,
                    ns_pid,
                    state: status_field(host_pid, "State")?,
                    name: status_field(host_pid, "Name")?,
                })
            })
            .collect();
        members.sort_by_key(|member| member.ns_pid);
        members
    }

    fn describe(&self) -> String {
        self.members()
            .iter()
            .map(|m| {
                format!(
                    "[ns {} = host {} {} {}]",
                    m.ns_pid, m.host_pid, m.name, m.state
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn ns_pid_of(&self, host_pid: u32) -> Option<u32> {
        let members = self.members();
        let member = members.iter().find(|m| m.host_pid == host_pid)?;
        Some(member.ns_pid)
    }

    fn host_pid_of(&self, ns_pid: u32) -> Option<u32> {
        let members = self.members();
        let member = members.iter().find(|m| m.ns_pid == ns_pid)?;
        Some(member.host_pid)
    }

    /// Waits until the namespace holds exactly these processes (by
    /// namespace pid), none of them a zombie.
    fn expect_exactly(&self, ns_pids: &[u32], when: &str) {
        eventually(
            &format!("{when}: the namespace holds {ns_pids:?}, no zombie"),
            || {
                let members = self.members();
                let pids: Vec<u32> = members.iter().map(|m| m.ns_pid).collect();
                let zombies = members.iter().filter(|m| m.state.starts_with('Z')).count();
                if pids == ns_pids && zombies == 0 {
                    Ok(())
                } else {
                    Err(format!("{zombies} zombies; {}", self.describe()))
                }
            },
        );
    }
}

impl Drop for Namespace {
    /// SIGKILL to PID 1 ends every process in the namespace.
    fn drop(&mut self) {
        self.process.kill();
    }
}
