//! The echo server in a terminal session, where users start it: as the
//! session leader of a real pty (opened by the test itself, and under
//! `script`), as the process of a tmux pane (`tmux new-session -d`), and as
//! the foreground job of a shell in a tmux pane. Each time it is upgraded 5
//! times with one client connection kept open throughout; the old terminal
//! session ends (the session leader exits, the pty's master is closed, the
//! tmux session goes away or is killed), and the new process serves on, on
//! the same connection and on new ones. A later generation's log still
//! reaches the terminal the first one was started on.
//!
//! `script` comes with Debian's bsdutils; the tmux tests need Debian's tmux
//! (and bash, for the shell): without them those tests skip with a reason,
//! except under `CI=true`, where they fail.

mod env_support;

use std::fs::File;
use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};

use env_support::{
    Client, ECHO_SERVER, KillOnDrop, Need, Process, Reply, Survivors, can_run, children_of,
    clean_command, describe_session, echo_server_copy, fifo, install, install_broken_build,
    line_where, lines_of, listening_port, relay, scratch_dir, session_of,
};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::pty::OpenptFlags;

const UPGRADES: u64 = 5;

/// The echo server is the session leader of a pty the test holds the
/// master of, with the pty as its controlling terminal, stdin, stdout and
/// stderr. When the first generation exits after the first upgrade the
/// kernel hangs the session up; the later generations live on, and their
/// log still reaches the pty. Then the test closes the master, and the
/// server serves on and can still upgrade.
#[test]
fn session_leader_of_a_pty() {
    let dir = scratch_dir("pty");
    let binary = echo_server_copy(&dir);
    let mut pty = Pty::open();
    let mut command = clean_command(&binary);
    command.args(["--listen", "127.0.0.1:0"]);
    let mut first = pty.spawn_session_leader(command);
    let port = listening_port(&pty.lines);
    let leader = session_of(first.0.id()).expect("the first generation");
    assert_eq!(
        leader.session,
        first.0.id(),
        "the first generation leads its session"
    );
    assert_ne!(leader.tty, 0, "the pty is its controlling terminal");
    eprintln!("pty: {}", describe_session(first.0.id()));

    let mut survivors = Survivors::default();
    let mut kept = Client::connect(port, "kept");
    kept.echo();
    let mut serving = first.0.id();
    let mut pids = vec![serving];
    for upgrade in 1..=UPGRADES {
        let (old, new, generation) = kept.expect_upgrade();
        assert_eq!((old, generation), (serving, upgrade + 1));
        survivors.adopt(new);
        if upgrade == 1 {
            // The session leader exits, cleanly: the session ends.
            let status = first.expect_exit("the session leader after the upgrade");
            assert!(status.success(), "the session leader exited with {status}");
            eprintln!("pty: the session leader {old} exited with {status}");
        } else {
            survivors
                .get(old)
                .expect("the previous generation")
                .expect_exit("the previous generation");
        }
        kept.echo();
        eprintln!("pty: upgrade {upgrade}: {}", describe_session(new));
        serving = new;
        pids.push(new);
    }

    // A later generation's stderr is still the pty: a failed upgrade's
    // warning, logged by the serving process, arrives on the master.
    install_broken_build(&binary);
    let Reply::Failed(_) = kept.upgrade() else {
        panic!("an upgrade to /bin/false succeeded");
    };
    let prefix = format!("echo-server[{serving}] WARN:");
    let (warning, _) = line_where(&pty.lines, "the warning on the pty", |line| {
        line.starts_with(&prefix)
    });
    eprintln!(
        "pty: generation {} logged to the pty: {warning}",
        UPGRADES + 1
    );
    install(&binary, Path::new(ECHO_SERVER));

    // The terminal goes away altogether: the server does not notice.
    pty.close();
    eprintln!("pty: master closed; generations so far: pids {pids:?}");
    kept.echo();
    let mut fresh = Client::connect(port, "fresh");
    fresh.echo();
    let (old, new, generation) = kept.expect_upgrade();
    assert_eq!((old, generation), (serving, UPGRADES + 2));
    survivors.adopt(new);
    kept.echo();
    fresh.echo();
    eprintln!("pty: after the hangup, upgrade {old} -> {new} (generation {generation})");
}

/// `script -qfec 'exec echo-server ...'`: the server is the session leader
/// of script's pty. script exits with it at the first upgrade, closing
/// the master, and the server serves on.
#[test]
fn session_leader_under_script() {
    let needs = [Need::Program {
        name: "script",
        package: "bsdutils",
    }];
    if !can_run("session_leader_under_script", &needs) {
        return;
    }
    let mut script = clean_command("script")
        .args([
            "-qfec",
            &format!("exec '{ECHO_SERVER}' --listen 127.0.0.1:0"),
        ])
        .arg("/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("start script");
    let output = lines_of(script.0.stdout.take().unwrap());
    relay(script.0.stderr.take().unwrap(), "  [script] ");
    let port = listening_port(&output);
    let children = children_of(script.0.id());
    let [leader] = children[..] else {
        panic!("script has children {children:?}, not one");
    };
    let mut survivors = Survivors::default();
    survivors.adopt(leader);
    let session = session_of(leader).expect("the session leader");
    assert_eq!(session.session, leader, "the server leads its session");
    eprintln!(
        "script: pid {}, its child {}",
        script.0.id(),
        describe_session(leader)
    );

    let mut kept = Client::connect(port, "kept");
    kept.echo();
    let mut serving = leader;
    let mut pids = vec![serving];
    for upgrade in 1..=UPGRADES {
        let (old, new, generation) = kept.expect_upgrade();
        assert_eq!((old, generation), (serving, upgrade + 1));
        survivors.adopt(new);
        if upgrade == 1 {
            let status = script.expect_exit("script, once its child has handed over");
            assert!(status.success(), "script exited with {status}");
            eprintln!("script: its child {old} handed over to {new}; script exited with {status}");
        }
        kept.echo();
        serving = new;
        pids.push(new);
    }
    let mut fresh = Client::connect(port, "fresh");
    fresh.echo();
    kept.echo();
    eprintln!(
        "script: {UPGRADES} upgrades, pids {pids:?}; serving: {}",
        describe_session(serving)
    );
}

/// `tmux new-session -d 'exec echo-server ...'`: the server is the pane's
/// process. At the first upgrade it exits, so the pane, the only session
/// and the tmux server close; the new generation serves on.
#[test]
fn pane_process_of_tmux() {
    let needs = [Need::Program {
        name: "tmux",
        package: "tmux",
    }];
    if !can_run("pane_process_of_tmux", &needs) {
        return;
    }
    let dir = scratch_dir("tmux-pane");
    let (_fifo, output) = fifo(&dir.join("stdout"));
    let tmux = Tmux::new(&dir);
    let session = format!("mitosis-pane-{}", std::process::id());
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        &format!(
            "exec '{ECHO_SERVER}' --listen 127.0.0.1:0 > '{}'",
            dir.join("stdout").display()
        ),
    ]);
    let tmux_server = tmux.server_process();
    let pane = tmux.pane_process(&session);
    let mut survivors = Survivors::default();
    survivors.adopt(pane.pid);
    let port = listening_port(&output);
    eprintln!(
        "tmux: server pid {}, session {session}, pane {}",
        tmux_server.pid,
        describe_session(pane.pid)
    );

    let mut kept = Client::connect(port, "kept");
    kept.echo();
    let mut serving = pane.pid;
    let mut pids = vec![serving];
    for upgrade in 1..=UPGRADES {
        let (old, new, generation) = kept.expect_upgrade();
        assert_eq!((old, generation), (serving, upgrade + 1));
        survivors.adopt(new);
        if upgrade == 1 {
            pane.expect_exit("the pane's process after the upgrade");
            // With its only pane gone, the session ends, and with its only
            // session, the tmux server.
            tmux_server.expect_exit("the tmux server after its last pane closed");
            assert!(!tmux.has_session(&session), "tmux still has the session");
            eprintln!(
                "tmux: upgrade 1: the pane's process {old} exited, `tmux has-session` fails, \
                 the tmux server exited; serving: {}",
                describe_session(new)
            );
        }
        kept.echo();
        serving = new;
        pids.push(new);
    }
    let mut fresh = Client::connect(port, "fresh");
    fresh.echo();
    kept.echo();
    eprintln!("tmux: {UPGRADES} upgrades, pids {pids:?}, still serving");
}

/// The server is the foreground job of an interactive bash in a tmux pane,
/// started with send-keys as a user types it. Once upgraded, bash is back
/// at its prompt; then `tmux kill-session` hangs the pane up (SIGHUP to
/// bash, which passes it to its jobs), and the server serves on.
#[test]
fn foreground_job_of_a_shell_in_tmux_then_kill_session() {
    let needs = [
        Need::Program {
            name: "tmux",
            package: "tmux",
        },
        Need::Program {
            name: "bash",
            package: "bash",
        },
    ];
    if !can_run(
        "foreground_job_of_a_shell_in_tmux_then_kill_session",
        &needs,
    ) {
        return;
    }
    let dir = scratch_dir("tmux-shell");
    let stdout = dir.join("stdout");
    let (_fifo, output) = fifo(&stdout);
    let tmux = Tmux::new(&dir);
    let session = format!("mitosis-shell-{}", std::process::id());
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        "exec bash --norc --noprofile -i",
    ]);
    let tmux_server = tmux.server_process();
    let shell = tmux.pane_process(&session);
    tmux.run(&[
        "send-keys",
        "-t",
        &session,
        &format!(
            "'{ECHO_SERVER}' --listen 127.0.0.1:0 > '{}'",
            stdout.display()
        ),
        "Enter",
    ]);
    let port = listening_port(&output);
    let children = children_of(shell.pid);
    let [job] = children[..] else {
        panic!("the shell has children {children:?}, not one");
    };
    let mut survivors = Survivors::default();
    let first = survivors.adopt(job).expect("the foreground job").pid;
    let job_session = session_of(first).expect("the foreground job");
    assert_eq!(
        job_session.foreground_group, job_session.process_group as i32,
        "the server is not the terminal's foreground job"
    );
    eprintln!(
        "tmux: shell {}; its job {}",
        describe_session(shell.pid),
        describe_session(first)
    );

    let mut kept = Client::connect(port, "kept");
    kept.echo();
    let mut serving = first;
    let mut pids = vec![serving];
    for upgrade in 1..=UPGRADES {
        let (old, new, generation) = kept.expect_upgrade();
        assert_eq!((old, generation), (serving, upgrade + 1));
        survivors.adopt(new);
        survivors
            .get(old)
            .expect("the previous generation")
            .expect_exit("the previous generation");
        kept.echo();
        serving = new;
        pids.push(new);
    }
    assert!(!shell.has_exited(), "the shell exited");
    assert!(tmux.has_session(&session), "the tmux session ended");
    eprintln!(
        "tmux: {UPGRADES} upgrades, pids {pids:?}; the shell is back at its prompt ({}), serving: {}",
        tmux.pane_command(&session),
        describe_session(serving)
    );

    tmux.run(&["kill-session", "-t", &session]);
    shell.expect_exit("the shell after kill-session");
    tmux_server.expect_exit("the tmux server after kill-session");
    assert!(!tmux.has_session(&session), "tmux still has the session");
    kept.echo();
    let mut fresh = Client::connect(port, "fresh");
    fresh.echo();
    let (old, new, generation) = kept.expect_upgrade();
    assert_eq!((old, generation), (serving, UPGRADES + 2));
    survivors.adopt(new);
    kept.echo();
    eprintln!(
        "tmux: kill-session: the shell {} and the tmux server {} exited; the server serves on \
         and upgrades {old} -> {new}",
        shell.pid, tmux_server.pid
    );
}

/// A pty the test holds the master of. A thread reads the master and
/// splits what it reads into lines, until the test closes it.
struct Pty {
    slave: PathBuf,
    lines: Receiver<String>,
    /// Closing this tells the reading thread to stop, which closes the
    /// master.
    stop: Option<UnixStream>,
    reader: Option<JoinHandle<()>>,
}

impl Pty {
    fn open() -> Pty {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .expect("open a pty master");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let slave = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let slave = PathBuf::from(slave.into_string().expect("a UTF-8 pty name"));
        let (stop, stopped) = UnixStream::pair().expect("a socket pair");
        let (sender, lines) = mpsc::channel();
        let reader = thread::spawn(move || read_lines(master, stopped, sender));
        Pty {
            slave,
            lines,
            stop: Some(stop),
            reader: Some(reader),
        }
    }

    /// Starts `command` as the leader of a new session, with the pty as its
    /// controlling terminal, stdin, stdout and stderr, as a terminal
    /// emulator, tmux or sshd does.
    fn spawn_session_leader(&self, mut command: Command) -> KillOnDrop {
        let slave = File::options()
            .read(true)
            .write(true)
            .open(&self.slave)
            .expect("open the pty's slave");
        command
            .stdin(slave.try_clone().expect("dup the slave"))
            .stdout(slave.try_clone().expect("dup the slave"))
            .stderr(slave);
        // SAFETY: between fork and exec only async-signal-safe system calls.
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
                Ok(())
            });
        }
        command.spawn().map(KillOnDrop).expect("start on the pty")
    }

    /// Closes the master: the terminal is gone.
    fn close(&mut self) {
        drop(self.stop.take());
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the pty's reader");
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// The pty reader's loop: lines from `master` to `sender`, until `stopped`
/// is closed or nothing holds the slave any more (EIO).
fn read_lines(master: OwnedFd, stopped: UnixStream, sender: mpsc::Sender<String>) {
    let mut master = File::from(master);
    let mut pending = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let mut fds = [
            PollFd::new(&master, PollFlags::IN),
            PollFd::new(&stopped, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(error) => panic!("poll the pty: {error}"),
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        let read = match master.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        pending.extend_from_slice(&buffer[..read]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            eprintln!("  [pty] {line}");
            if sender.send(line).is_err() {
                return;
            }
        }
    }
}

/// A tmux server of the test's own, on a private socket, without the
/// user's configuration; killed at the end.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        Tmux {
            socket: dir.join("tmux.sock"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = clean_command("tmux");
        command
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            // Panes run their command with `$SHELL -c`.
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::null());
        command
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run tmux")
    }

    /// Runs a tmux command that must succeed; returns its stdout.
    fn run(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "tmux {args:?}: {}; {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn has_session(&self, session: &str) -> bool {
        self.output(&["has-session", "-t", session])
            .status
            .success()
    }

    fn server_process(&self) -> Process {
        let pid = self.run(&["display-message", "-p", "#{pid}"]);
        Process::expect(pid.parse().expect("the tmux server's pid"), "tmux server")
    }

    fn pane_process(&self, session: &str) -> Process {
        let pid = self.run(&["list-panes", "-t", session, "-F", "#{pane_pid}"]);
        Process::expect(pid.parse().expect("the pane's pid"), "the pane's process")
    }

    fn pane_command(&self, session: &str) -> String {
        self.run(&["list-panes", "-t", session, "-F", "#{pane_current_command}"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.output(&["kill-server"]);
    }
}
