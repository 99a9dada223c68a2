//! A real systemd, booted as PID 1 of its own namespaces for one test, and
//! torn down when the test ends, whether it passed or panicked.
//!
//! The recipe, step by step:
//! - the test makes a fresh child cgroup of the cgroup2 hierarchy (at
//!   `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host);
//! - `script(1)` gives the namespace a pty and writes everything printed on
//!   it to `console.log`. It runs `launch.sh`, which moves itself into that
//!   cgroup and execs `unshare --pid --fork --mount --uts --ipc --cgroup
//!   --mount-proc --propagation private inner.sh`, so that the new cgroup
//!   namespace is rooted at the fresh cgroup;
//! - `inner.sh`, PID 1 of the new PID namespace, bind-mounts the test's
//!   `run/` directory over `/run` (so that its contents are reachable from
//!   the test), mounts cgroup2 on `/sys/fs/cgroup`, waits until the test has
//!   moved the host-side `unshare` out of the cgroup (systemd wants its root
//!   cgroup to itself), bind-mounts its pty over `/dev/console` (systemd logs
//!   to the console), and execs `/lib/systemd/systemd --system` with
//!   `container=…`, which keeps systemd off the host's clock, hostname and
//!   mounts, and with `SYSTEMD_UNIT_PATH` pointing at the test's `units/`;
//! - `units/` holds the test's units and stub targets (sysinit, basic,
//!   sockets, shutdown…), so that units with default dependencies start;
//! - commands run inside with `nsenter -t <pid> -m -p -u -i -C`;
//! - teardown: SIGKILL to the namespace's PID 1, through a pidfd taken at
//!   boot, so that it can never hit a reused pid. The kernel then kills
//!   every process of the PID namespace; the cgroups are removed after.
//!
//! There is no network namespace: a socket unit's `ListenStream=127.0.0.1:…`
//! is reachable from the test, and the services reach servers the test runs.
//!
//! Without root, systemd, util-linux or cgroup2, [`Systemd::available`]
//! prints why and returns `false`, so the test skips, except under `CI=true`,
//! where it panics.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

const SYSTEMD: &str = "/lib/systemd/systemd";

/// How long booting, or any one `systemctl`, may take. Generous: it only
/// matters when something is broken.
const BOOT_PATIENCE: Duration = Duration::from_secs(20);
const COMMAND_PATIENCE: Duration = Duration::from_secs(20);

/// The interval of the bounded polling loops (for files and cgroups to
/// appear, and for `systemctl show` to report a state).
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Stub targets named by the default dependencies of services and sockets
/// (`Requires=sysinit.target`, `After=basic.target`,
/// `Conflicts=shutdown.target`, `Before=sockets.target`), and by the units'
/// `[Install]` and `After=` lines.
const STUB_TARGETS: &[&str] = &[
    "default",
    "sysinit",
    "basic",
    "sockets",
    "timers",
    "paths",
    "slices",
    "shutdown",
    "multi-user",
    "network-online",
];

/// One booted systemd, and the host-side paths that reach into it.
pub struct Systemd {
    name: String,
    /// The test's directory: `units/`, `run/` (the namespace's `/run`),
    /// `console.log`.
    base: PathBuf,
    /// The cgroup2 directory that is the namespace's cgroup root.
    cgroup: PathBuf,
    /// systemd's pid as the host sees it.
    pid: u32,
    /// A pidfd of systemd, for the teardown's SIGKILL.
    pidfd: OwnedFd,
    /// `script(1)`, which ends when the namespace does.
    launcher: Child,
}

impl Systemd {
    /// Whether systemd can be booted in a namespace here. If not, it prints
    /// why and returns `false`, so that the test skips, or panics under
    /// `CI=true`.
    pub fn available() -> bool {
        let Err(reason) = prerequisites() else {
            return true;
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true, but systemd cannot be booted in a namespace: {reason}");
        }
        eprintln!("skipped: systemd cannot be booted in a namespace here: {reason}");
        false
    }

    /// Boots systemd with `units` (file name, contents) in its unit path.
    /// Call [`Systemd::available`] first.
    pub fn boot(name: &str, units: &[(&str, String)]) -> Systemd {
        let systemd = Systemd::boot_now(name, units);
        eprintln!(
            "[{name}] booted systemd 252 as PID 1 of a new namespace (host pid {}); \
             console log: {}",
            systemd.pid,
            systemd.console_log().display()
        );
        systemd
    }

    fn boot_now(name: &str, units: &[(&str, String)]) -> Systemd {
        let unique = format!("mitosis-systemd-{name}-{}", std::process::id());
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&unique);
        fs::remove_dir_all(&base).ok();
        for dir in ["units", "run", "empty"] {
            fs::create_dir_all(base.join(dir)).unwrap();
        }
        for target in STUB_TARGETS {
            fs::write(
                base.join(format!("units/{target}.target")),
                format!("[Unit]\nDescription=stub {target}.target\n"),
            )
            .unwrap();
        }
        for (file, contents) in units {
            let path = base.join("units").join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }

        let hierarchy = cgroup2_root().expect("checked by prerequisites()");
        let cgroup = hierarchy.join(&unique);
        remove_cgroup(&cgroup);
        fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("could not create the cgroup {}: {e}", cgroup.display()));

        let quoted = |path: &Path| format!("'{}'", path.display());
        let inner = base.join("inner.sh");
        write_script(
            &inner,
            &format!(
                "#!/bin/sh\n\
                 set -eu\n\
                 mount --bind {run} /run\n\
                 mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
                 # The host-side unshare shows here as pid 0 until the test has\n\
                 # moved it out of this cgroup: systemd wants it to itself.\n\
                 i=0\n\
                 while grep -qx 0 /sys/fs/cgroup/cgroup.procs && [ $i -lt 2000 ]; do\n\
                 \x20 sleep 0.01; i=$((i + 1))\n\
                 done\n\
                 mount --bind \"$(tty)\" /dev/console\n\
                 exec env -i container=mitosis-test \\\n\
                 \x20 SYSTEMD_UNIT_PATH={units} \\\n\
                 \x20 SYSTEMD_GENERATOR_PATH={empty} \\\n\
                 \x20 SYSTEMD_ENVIRONMENT_GENERATOR_PATH={empty} \\\n\
                 \x20 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\\n\
                 \x20 {SYSTEMD} --system --log-target=console --log-level=debug \\\n\
                 \x20 --log-color=no --show-status=no\n",
                run = quoted(&base.join("run")),
                units = quoted(&base.join("units")),
                empty = quoted(&base.join("empty")),
            ),
        );
        let launch = base.join("launch.sh");
        write_script(
            &launch,
            &format!(
                "#!/bin/sh\n\
                 echo $$ > {procs}\n\
                 exec unshare --pid --fork --mount --uts --ipc --cgroup --mount-proc \\\n\
                 \x20 --propagation private {inner}\n",
                procs = quoted(&cgroup.join("cgroup.procs")),
                inner = quoted(&inner),
            ),
        );

        let console_log = base.join("console.log");
        // setsid: script(1) and the namespace get a session of their own,
        // away from whatever terminal runs the tests.
        let launcher = Command::new("setsid")
            .arg("script")
            .args(["--quiet", "--flush", "--return", "--command"])
            .arg(&launch)
            .arg(&console_log)
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start script(1)");
        let mut booting = Booting {
            launcher: Some(launcher),
            cgroup: cgroup.clone(),
        };

        // The namespace's PID 1 is the process of our cgroup whose pid in
        // its own namespace is 1.
        let deadline = Instant::now() + BOOT_PATIENCE;
        let pid = loop {
            if let Some(pid) = cgroup_pids(&cgroup)
                .into_iter()
                .find(|&pid| namespace_pid(pid) == Some(1))
            {
                break pid;
            }
            if let Ok(Some(status)) = booting.launcher.as_mut().unwrap().try_wait() {
                boot_failed(
                    &console_log,
                    &format!("the launcher exited early: {status}"),
                );
            }
            if Instant::now() > deadline {
                boot_failed(&console_log, "the namespace's PID 1 did not appear");
            }
            thread::sleep(POLL_INTERVAL);
        };
        let pidfd = pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty())
            .unwrap_or_else(|e| boot_failed(&console_log, &format!("pidfd_open({pid}): {e}")));

        // Moves the host-side unshare back into the test's own cgroup;
        // inner.sh waits for that before it execs systemd.
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .expect("a cgroup2 line in /proc/self/cgroup");
        let own_procs = hierarchy
            .join(own.trim_start_matches('/'))
            .join("cgroup.procs");
        for other in fs::read_to_string(cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter(|p| *p != pid.to_string())
        {
            // It may be gone already, which is fine.
            fs::write(&own_procs, other).ok();
        }

        let systemd = Systemd {
            name: name.to_owned(),
            base,
            cgroup,
            pid,
            pidfd,
            launcher: booting.launcher.take().unwrap(),
        };
        // Up once the manager answers and its first transaction is done.
        let private = systemd.base.join("run/systemd/private");
        let state = systemd.poll(BOOT_PATIENCE, "systemd to finish booting", || {
            if !private.exists() {
                return None;
            }
            let output = systemd.command(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        });
        assert_eq!(
            state,
            "running",
            "a unit failed at boot; {}",
            systemd.context()
        );
        systemd
    }

    /// The file that holds everything systemd logged, the reasons for each
    /// state change and notification included.
    pub fn console_log(&self) -> PathBuf {
        self.base.join("console.log")
    }

    /// The lines of systemd's log that contain `needle`.
    pub fn console_lines_with(&self, needle: &str) -> Vec<String> {
        fs::read_to_string(self.console_log())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            // The pty ends its lines with \r\n, and sometimes \r\r\n.
            .map(|line| line.trim_end().to_owned())
            .collect()
    }

    /// What a failure message says to look at.
    pub fn context(&self) -> String {
        format!("systemd's console log: {}", self.console_log().display())
    }

    /// The host path of a path under the namespace's `/run`.
    pub fn run_dir(&self) -> PathBuf {
        self.base.join("run")
    }

    /// Runs a command inside the namespace, and returns what it did.
    pub fn command(&self, args: &[&str]) -> Output {
        let seconds = COMMAND_PATIENCE.as_secs().to_string();
        let pid = self.pid.to_string();
        Command::new("timeout")
            .args(["--kill-after=2", &seconds])
            .args(["nsenter", "-t", &pid, "-m", "-p", "-u", "-i", "-C", "--"])
            .args(args)
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a command inside the namespace, printing it, its output and,
    /// if it failed, its exit status; returns what it did. For a command
    /// that is expected to fail.
    pub fn run_printed(&self, args: &[&str]) -> Output {
        let output = self.command(args);
        eprintln!("[{}] $ {}", self.name, args.join(" "));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stdout.lines().chain(stderr.lines()) {
            eprintln!("[{}]   {line}", self.name);
        }
        if !output.status.success() {
            eprintln!("[{}]   ({})", self.name, output.status);
        }
        output
    }

    /// Runs a command inside the namespace, printing it and its output, and
    /// panics if it fails. Returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.run_printed(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "`{}` failed with {}: {stderr}; {}",
            args.join(" "),
            output.status,
            self.context()
        );
        stdout
    }

    /// `systemctl show -p <properties> <unit>`, as a map.
    pub fn show(&self, unit: &str, properties: &[&str]) -> BTreeMap<String, String> {
        let output = self.command(&["systemctl", "show", "-p", &properties.join(","), "--", unit]);
        assert!(
            output.status.success(),
            "systemctl show {unit} failed: {}; {}",
            String::from_utf8_lossy(&output.stderr),
            self.context()
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    /// The unit's main pid, active state and sub-state.
    pub fn main_state(&self, unit: &str) -> MainState {
        let shown = self.show(unit, &["MainPID", "ActiveState", "SubState"]);
        MainState {
            main_pid: shown["MainPID"].parse().expect("MainPID is a number"),
            active: shown["ActiveState"].clone(),
            sub: shown["SubState"].clone(),
        }
    }

    /// Polls `unit`'s state until `done` accepts it, for at most `patience`.
    pub fn wait_for_state(
        &self,
        unit: &str,
        what: &str,
        patience: Duration,
        done: impl Fn(&MainState) -> bool,
    ) -> MainState {
        let mut last = None;
        let found = self.poll_quietly(patience, || {
            let state = self.main_state(unit);
            let accepted = done(&state);
            last = Some(state.clone());
            accepted.then_some(state)
        });
        found.unwrap_or_else(|| {
            panic!(
                "{unit}: waited {patience:?} for {what}; the last state was {last:?}; {}",
                self.context()
            )
        })
    }

    /// Calls `check` every few milliseconds until it returns something, and
    /// panics after `patience`.
    pub fn poll<T>(&self, patience: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
        self.poll_quietly(patience, check)
            .unwrap_or_else(|| panic!("waited {patience:?} for {what}; {}", self.context()))
    }

    fn poll_quietly<T>(
        &self,
        patience: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(found) = check() {
                return Some(found);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The host pid of the namespace's process `pid`, if it is alive.
    pub fn host_pid(&self, pid: u32) -> Option<u32> {
        cgroup_pids(&self.cgroup)
            .into_iter()
            .find(|&host| namespace_pid(host) == Some(pid))
    }

    /// The processes of `unit` (its cgroup), as pids of the namespace.
    pub fn unit_pids(&self, unit: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = cgroup_pids(&self.cgroup.join("system.slice").join(unit))
            .into_iter()
            .filter_map(namespace_pid)
            .collect();
        pids.sort();
        pids
    }
}

/// What `systemctl show -p MainPID,ActiveState,SubState` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MainState {
    pub main_pid: u32,
    pub active: String,
    pub sub: String,
}

impl MainState {
    pub fn is_running(&self) -> bool {
        self.active == "active" && self.sub == "running" && self.main_pid != 0
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        kill_and_wait(&self.pidfd);
        self.launcher.wait().ok();
        remove_cgroup(&self.cgroup);
        if thread::panicking() {
            eprintln!(
                "[{}] kept for the failure: {}",
                self.name,
                self.console_log().display()
            );
        } else {
            fs::remove_dir_all(&self.base).ok();
        }
    }
}

/// A boot under way. Dropped before it is done (a failure, or any panic),
/// it kills what it started and removes the cgroup.
struct Booting {
    launcher: Option<Child>,
    cgroup: PathBuf,
}

impl Drop for Booting {
    fn drop(&mut self) {
        let Some(mut launcher) = self.launcher.take() else {
            return; // Booted: the Systemd tears it down.
        };
        // Everything in the cgroup was started by this boot.
        for pid in cgroup_pids(&self.cgroup) {
            if let Ok(pidfd) = pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()) {
                kill_and_wait(&pidfd);
            }
        }
        launcher.kill().ok();
        launcher.wait().ok();
        remove_cgroup(&self.cgroup);
    }
}

/// Panics, which drops the `Booting`, with where to look.
fn boot_failed(console_log: &Path, why: &str) -> ! {
    panic!("{why}; see {}", console_log.display());
}

fn kill_and_wait(pidfd: &OwnedFd) {
    if pidfd_send_signal(pidfd, Signal::KILL).is_err() {
        return; // Gone already.
    }
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&timeout)).ok();
}

/// Removes a cgroup and its children, once the processes killed in them
/// have exited.
fn remove_cgroup(cgroup: &Path) {
    if !cgroup.exists() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut dirs = Vec::new();
        collect_dirs(cgroup, &mut dirs);
        // Deepest first.
        dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        let left = dirs
            .iter()
            .filter(|dir| fs::remove_dir(dir).is_err())
            .count();
        if left == 0 || Instant::now() > deadline {
            if left > 0 {
                eprintln!("could not remove the cgroup {}", cgroup.display());
            }
            return;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn collect_dirs(dir: &Path, into: &mut Vec<PathBuf>) {
    into.push(dir.to_owned());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            collect_dirs(&entry.path(), into);
        }
    }
}

/// The host pids in a cgroup and all its children.
fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    let mut dirs = Vec::new();
    collect_dirs(cgroup, &mut dirs);
    dirs.iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The pid that host process `pid` has in its innermost PID namespace.
fn namespace_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

fn write_script(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The cgroup2 hierarchy: all of `/sys/fs/cgroup`, or the unified part of
/// a hybrid one.
fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("cgroup.procs").exists() && dir.join("cgroup.max.depth").exists())
}

/// Why systemd cannot be booted here, if it cannot.
fn prerequisites() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("these tests need root (CAP_SYS_ADMIN, for namespaces and mounts)".into());
    }
    if !Path::new(SYSTEMD).is_file() {
        return Err(format!("{SYSTEMD} is missing (apt-get install systemd)"));
    }
    for tool in [
        "unshare",
        "nsenter",
        "script",
        "setsid",
        "timeout",
        "systemctl",
        "mount",
    ] {
        if find_in_path(tool).is_none() {
            return Err(format!(
                "`{tool}` is not installed (util-linux, coreutils, systemd)"
            ));
        }
    }
    if cgroup2_root().is_none() {
        return Err("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified".into());
    }
    Ok(())
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/sbin".into(),
            "/bin".into(),
        ])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}
