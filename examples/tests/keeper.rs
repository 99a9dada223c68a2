//! The keeper, outside any namespace (`MITOSIS_KEEPER=on`, as a runit or s6
//! service sets it): the pid the supervisor started lives through every
//! upgrade, reaps every generation it outlives, forwards the service's
//! signals to the one that serves, and exits with that one's status.

mod env_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use env_support::{children_of, status_field};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};

const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");

/// How long any one expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn fifty_upgrades_under_a_keeper_leave_one_child_and_no_zombie() {
    let mut kept = Kept::start(&[("MITOSIS_KEEPER", "on")]);
    let keeper = kept.keeper.id();
    let mut client = Client::connect(kept.port);
    let mut serving = kept.only_child();
    assert_ne!(serving, keeper, "the program runs as the keeper's child");
    client.echo("1 before");
    for generation in 2..=51 {
        let (old, new, reported) = client.upgrade();
        assert_eq!(
            (old, reported),
            (serving, generation),
            "upgrade to generation {generation}"
        );
        assert_ne!(new, old);
        wait_for_exit(old);
        serving = new;
        assert!(
            kept.keeper.try_wait().unwrap().is_none(),
            "the keeper lives on"
        );
    }
    // Every generation it outlived is reaped: it has one child, the one
    // that serves, and no zombie. Another process's reaping sends no event,
    // so this looks until the deadline.
    assert_eq!(
        kept.settled_children(),
        vec![serving],
        "the keeper's children after 50 upgrades"
    );
    client.echo("2 after fifty");

    // A signal to the keeper reaches the generation that serves: SIGUSR2
    // upgrades it.
    kill_process(pid(keeper), Signal::USR2).unwrap();
    wait_for_exit(serving);
    let (old, _, reported) = client.upgrade();
    assert_eq!(
        reported, 53,
        "SIGUSR2 to the keeper upgraded once, then UPGRADE once more"
    );
    assert_ne!(old, serving);

    // SIGTERM to the keeper stops the service; the status is the
    // program's own, 0.
    kill_process(pid(keeper), Signal::TERM).unwrap();
    let status = kept.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "the keeper's status after SIGTERM: {status}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", kept.port)).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn the_keeper_exits_with_the_status_of_the_generation_that_serves() {
    let mut kept = Kept::start(&[("MITOSIS_KEEPER", "on")]);
    let mut client = Client::connect(kept.port);
    let (_, serving, _) = client.upgrade();
    kill_process(pid(serving), Signal::KILL).unwrap();
    let status = kept.wait();
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "killed by SIGKILL, as a shell reports it"
    );
}

#[test]
fn a_keeper_switch_it_does_not_know_is_refused_with_the_values_it_takes() {
    let output = Command::new(ECHO_SERVER)
        .args(["--listen", "127.0.0.1:0"])
        .env("MITOSIS_KEEPER", "sometimes")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("MITOSIS_KEEPER=\"sometimes\"") && stderr.contains("auto, on or off"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "it never listened");
}

#[test]
fn without_the_switch_no_keeper_runs() {
    let mut kept = Kept::start(&[]);
    let mut client = Client::connect(kept.port);
    assert!(
        kept.children().is_empty(),
        "the program is the process started"
    );
    let (old, _, _) = client.upgrade();
    assert_eq!(old, kept.keeper.id());
    assert!(kept.wait().success());
}

/// The echo server, started as a supervisor would start it.
struct Kept {
    keeper: Child,
    port: u16,
}

impl Kept {
    fn start(env: &[(&str, &str)]) -> Kept {
        let mut keeper = Command::new(ECHO_SERVER)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("MITOSIS_KEEPER")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start echo-server");
        let mut first = String::new();
        BufReader::new(keeper.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("echo-server said {first:?}"));
        Kept { keeper, port }
    }

    /// The keeper's children.
    fn children(&self) -> Vec<u32> {
        self.children_and_zombies()
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The keeper's children, and whether each is a zombie, or was reaped
    /// between reading the list and its state (not settled yet either).
    fn children_and_zombies(&self) -> Vec<(u32, bool)> {
        children_of(self.keeper.id())
            .into_iter()
            .map(|child| {
                let state = status_field(child, "State");
                (child, state.is_none_or(|state| state.starts_with('Z')))
            })
            .collect()
    }

    /// The children once none is a zombie or just reaped (the keeper reaps
    /// each as it hears of its exit), or as they are at the deadline.
    fn settled_children(&self) -> Vec<u32> {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let children = self.children_and_zombies();
            if children.iter().all(|(_, zombie)| !zombie) || std::time::Instant::now() > deadline {
                return children.into_iter().map(|(pid, _)| pid).collect();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn only_child(&self) -> u32 {
        let children = self.children();
        assert_eq!(children.len(), 1, "the keeper's children: {children:?}");
        children[0]
    }

    fn wait(&mut self) -> ExitStatus {
        let pidfd = pidfd_open(pid(self.keeper.id()), PidfdFlags::empty()).unwrap();
        assert!(readable_within(&pidfd, PATIENCE), "the keeper still runs");
        self.keeper.wait().unwrap()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Ok(None) = self.keeper.try_wait() {
            let _ = kill_process(pid(self.keeper.id()), Signal::TERM);
            let _ = self.keeper.wait();
        }
    }
}

struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            stream: BufReader::new(stream),
        }
    }

    fn line(&mut self, request: &str) -> String {
        writeln!(self.stream.get_ref(), "{request}").unwrap();
        let mut reply = String::new();
        self.stream.read_line(&mut reply).unwrap();
        reply.trim_end().to_owned()
    }

    fn echo(&mut self, request: &str) {
        assert_eq!(self.line(request), request);
    }

    /// `(old pid, new pid, generation)`.
    fn upgrade(&mut self) -> (u32, u32, u64) {
        let reply = self.line("UPGRADE");
        let fields: Vec<&str> = reply.split(' ').collect();
        match fields[..] {
            ["UPGRADED", old, new, generation] => (
                old.parse().unwrap(),
                new.parse().unwrap(),
                generation.parse().unwrap(),
            ),
            _ => panic!("UPGRADE was answered {reply:?}"),
        }
    }
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(raw as i32).unwrap()
}

/// Waits for `pid` (not the test's child) to exit, through a pidfd.
fn wait_for_exit(raw: u32) {
    let Ok(pidfd) = pidfd_open(pid(raw), PidfdFlags::empty()) else {
        return; // gone and reaped already
    };
    assert!(readable_within(&pidfd, PATIENCE), "pid {raw} still runs");
}

fn readable_within(fd: &OwnedFd, wait: Duration) -> bool {
    let timeout = Timespec::try_from(wait).unwrap();
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&timeout)), Ok(1))
}

/// A temp-directory cleaner (systemd-tmpfiles ages `/tmp` out after ten
/// days) empties the temp dir while the service runs: the keeper keeps
/// hearing which generation serves, because its socket is no file.
#[test]
fn a_temp_dir_emptied_under_the_keeper_ends_nothing() {
    let temp = std::env::temp_dir().join(format!("mitosis-keeper-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&temp).unwrap();
    let temp_str = temp.to_str().unwrap();
    let mut kept = Kept::start(&[("MITOSIS_KEEPER", "on"), ("TMPDIR", temp_str)]);
    let mut client = Client::connect(kept.port);
    for generation in 2..=4 {
        for entry in std::fs::read_dir(&temp).unwrap() {
            let path = entry.unwrap().path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        let (old, new, reported) = client.upgrade();
        assert_eq!(reported, generation);
        wait_for_exit(old);
        assert!(
            kept.keeper.try_wait().unwrap().is_none(),
            "the keeper lives on"
        );
        assert_eq!(kept.settled_children(), vec![new]);
    }
    kill_process(pid(kept.keeper.id()), Signal::TERM).unwrap();
    assert_eq!(kept.wait().code(), Some(0));
    std::fs::remove_dir_all(&temp).ok();
}

/// `docker run --init` (tini as the container's PID 1, the program its
/// child): tini exits when its child does, so mitosis starts a keeper by
/// itself when its parent is tini. Here tini runs as a subreaper (`-s`)
/// outside a namespace; the container test runs it as PID 1.
#[test]
fn under_tini_a_keeper_starts_by_itself() {
    let Some(tini) = ["/usr/bin/tini", "/usr/local/bin/tini"]
        .into_iter()
        .find(|path| std::path::Path::new(path).is_file())
    else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but tini is not installed (apt-get install -y tini)"
        );
        eprintln!("skipped: tini is not installed (apt-get install -y tini)");
        return;
    };
    let mut tini = Command::new(tini)
        .args(["-s", "--", ECHO_SERVER, "--listen", "127.0.0.1:0"])
        .env_remove("MITOSIS_KEEPER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(tini.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port: u16 = first
        .trim()
        .strip_prefix("listening ")
        .unwrap()
        .parse()
        .unwrap();
    let tini_pid = tini.id();
    let keeper = children_of(tini_pid);
    assert_eq!(keeper.len(), 1, "tini's children: {keeper:?}");
    let mut client = Client::connect(port);
    for generation in 2..=4 {
        let (old, _, reported) = client.upgrade();
        assert_eq!(reported, generation);
        wait_for_exit(old);
        assert_eq!(
            children_of(tini_pid),
            keeper,
            "tini's child is the same keeper"
        );
    }
    client.echo("1 under tini");
    kill_process(pid(tini_pid), Signal::TERM).unwrap();
    let pidfd = pidfd_open(pid(tini_pid), PidfdFlags::empty()).unwrap();
    assert!(readable_within(&pidfd, PATIENCE), "tini still runs");
    let status = tini.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "tini's status after SIGTERM: {status}"
    );
}
