//! The echo server and the IRC bot under a real systemd 252, with the unit
//! files of `examples/systemd/` as shipped (only the binaries' paths, the
//! port and the bot's options are the test's own). Each test boots its own
//! systemd as PID 1 of a new namespace (see `systemd/namespace.rs`) and
//! checks what `systemctl show` reports across upgrades: the unit stays
//! `active`/`running`, and its main pid is the process that serves.
//!
//! They need root, systemd, util-linux and cgroup2 (and ngircd for the bot,
//! and mitosisctl, which `cargo test --workspace` builds, for `ExecReload=`);
//! without them they skip with a printed reason, except under `CI=true`,
//! where they fail. `cargo test --test systemd -- --nocapture` shows every
//! command they run inside the namespace and what it reported.

mod env_support;
mod irc_support;
#[path = "systemd/namespace.rs"]
mod namespace;

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mitosis::control::Answer;
use namespace::{MainState, Systemd};

const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
const IRCBOT: &str = env!("CARGO_BIN_EXE_ircbot");

/// How long any one expected event may take before the test fails. Generous:
/// it only matters when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

const ECHO_UNIT: &str = "echo-server.service";
const ECHO_SOCKET: &str = "echo-server.socket";
const BOT_UNIT: &str = "ircbot.service";
/// The echo server upgraded by `ExecReload=mitosisctl`, and its control
/// socket, in the unit's RuntimeDirectory=.
const CONTROL_UNIT: &str = "echo-server-control.service";
const CONTROL_SOCKET: &str = "/run/echo-server/control";

/// Socket activation: a connection made while only the socket unit runs
/// starts the server, which answers it; then 5 upgrades under load, by
/// `systemctl reload`, by `kill -USR2 <MainPID>` and by a client's
/// `UPGRADE`. After each one the unit is active/running and its main pid is
/// a new live process that holds the listener, the old one is gone, and
/// every connection, the first one included, is still served.
#[test]
fn socket_activated_echo_server_upgrades_five_times_under_load() {
    if !Systemd::available() {
        return;
    }
    let binary = Installed::new("activated", ECHO_SERVER, "echo-server");
    let port = free_port();
    let systemd = Systemd::boot("activated", &echo_units(&binary, Some(port), None));
    // The shipped unit as systemd reads it: Type=notify with the default
    // NotifyAccess=main, and the socket passed under the name `echo`.
    let unit = systemd.show(ECHO_UNIT, &["Type", "NotifyAccess", "ExecReload"]);
    assert_eq!(
        (unit["Type"].as_str(), unit["NotifyAccess"].as_str()),
        ("notify", "main")
    );
    assert!(
        unit["ExecReload"].contains("argv[]=/bin/kill -USR2 $MAINPID"),
        "{unit:?}"
    );
    let socket = systemd.show(ECHO_SOCKET, &["FileDescriptorName", "Listen"]);
    assert_eq!(socket["FileDescriptorName"], "echo", "{socket:?}");
    assert_eq!(
        socket["Listen"],
        format!("127.0.0.1:{port} (Stream)"),
        "{socket:?}"
    );
    systemd.run(&["systemctl", "start", ECHO_SOCKET]);
    let before = systemd.main_state(ECHO_UNIT);
    assert_eq!(
        (before.active.as_str(), before.main_pid),
        ("inactive", 0),
        "the service ran before any connection: {before:?}; {}",
        systemd.context()
    );

    // This request is sent while no server process exists: the connection
    // waits in the socket unit's backlog, and starts the service.
    let mut first = EchoClient::connect(port, "first");
    first.echo();
    let mut state = systemd.wait_for_state(ECHO_UNIT, "READY=1", PATIENCE, MainState::is_running);
    eprintln!(
        "[activated] a connection to the socket unit started {ECHO_UNIT}: {state:?}, \
         and its request was answered"
    );
    check_serves(&systemd, ECHO_UNIT, &state, port);

    let load = Load::start(port, 4);
    load.wait_until_all_served(&systemd);
    let mut pids = vec![state.main_pid];
    for upgrade in 1..=5u64 {
        let how = match upgrade {
            1 | 2 => Trigger::Reload,
            3 | 4 => Trigger::Signal,
            _ => Trigger::Client,
        };
        let reply = how.fire(&systemd, ECHO_UNIT, &state, &mut first);
        let after = wait_for_new_main_pid(&systemd, ECHO_UNIT, &state);
        if let Some(reply) = reply {
            assert_eq!(
                (reply.old_pid, reply.new_pid, reply.generation),
                (state.main_pid, after.main_pid, upgrade + 1),
                "the UPGRADED reply does not match systemd's MainPID; {}",
                systemd.context()
            );
        }
        assert!(
            !pids.contains(&after.main_pid),
            "{after:?} reuses a pid of {pids:?}"
        );
        check_serves(&systemd, ECHO_UNIT, &after, port);
        check_no_stale_activation(&systemd, &after);
        check_gone(&systemd, state.main_pid);
        // Every connection, made before this upgrade, is served after it.
        load.wait_until_all_served(&systemd);
        first.echo();
        eprintln!(
            "[activated] upgrade {upgrade} by {}: MainPID {} -> {}, {}/{}, the old pid gone, \
             {} requests echoed so far",
            how.describe(),
            state.main_pid,
            after.main_pid,
            after.active,
            after.sub,
            load.total()
        );
        pids.push(after.main_pid);
        state = after;
    }
    let served = load.finish();
    first.echo();
    eprintln!(
        "[activated] MainPID across the 5 upgrades: {pids:?}; requests per client: {served:?}"
    );
    assert_eq!(systemd.unit_pids(ECHO_UNIT), vec![state.main_pid]);
    // What systemd made of mitosis's notifications, from its own log.
    eprintln!("[activated] systemd's log of the unit's notifications and main pids:");
    for line in systemd.console_lines_with("echo-server.service: ") {
        let relevant = [
            "notification message",
            "main PID",
            "not our child",
            "Changed ",
        ];
        if relevant.iter().any(|word| line.contains(word)) {
            eprintln!("[activated]   {line}");
        }
    }
}

/// A build that exits at once: the upgrade fails, by signal and by a
/// client's `UPGRADE`, and the unit stays active/running with the old main
/// pid, which serves on. With the good build back, the next upgrade
/// succeeds.
#[test]
fn a_failed_upgrade_keeps_the_unit_active_with_the_old_main_pid() {
    if !Systemd::available() {
        return;
    }
    let binary = Installed::new("failed", ECHO_SERVER, "echo-server");
    let port = free_port();
    let systemd = Systemd::boot("failed", &echo_units(&binary, Some(port), None));
    systemd.run(&["systemctl", "start", ECHO_SOCKET]);
    let mut first = EchoClient::connect(port, "first");
    first.echo();
    let state = systemd.wait_for_state(ECHO_UNIT, "READY=1", PATIENCE, MainState::is_running);
    check_serves(&systemd, ECHO_UNIT, &state, port);

    binary.replace_with_broken();
    let log = systemd.run_dir().join("echo-server.err");
    let failures_before = count_lines_with(&log, "upgrade failed");
    systemd.run(&["systemctl", "reload", ECHO_UNIT]);
    // No one is answered after a signal: the server's log says it failed.
    systemd.poll(PATIENCE, "the server to log `upgrade failed`", || {
        (count_lines_with(&log, "upgrade failed") > failures_before).then_some(())
    });
    let kept = systemd.wait_for_state(
        ECHO_UNIT,
        "READY=1 from the old process",
        PATIENCE,
        MainState::is_running,
    );
    assert_eq!(
        kept,
        state,
        "a failed upgrade by reload changed the unit; {}",
        systemd.context()
    );
    check_serves(&systemd, ECHO_UNIT, &kept, port);
    first.echo();
    EchoClient::connect(port, "second").echo();
    eprintln!(
        "[failed] `systemctl reload` with a broken build: the server logged the failure, \
         the unit stays {kept:?}, and it serves old and new connections"
    );

    let refusal = first.upgrade_failed();
    let kept = systemd.wait_for_state(ECHO_UNIT, "active/running", PATIENCE, MainState::is_running);
    assert_eq!(kept, state, "after {refusal:?}; {}", systemd.context());
    check_serves(&systemd, ECHO_UNIT, &kept, port);
    first.echo();
    eprintln!("[failed] `UPGRADE` with a broken build: {refusal:?}; the unit stays {kept:?}");
    let restarts = systemd.show(ECHO_UNIT, &["NRestarts"]);
    assert_eq!(restarts["NRestarts"], "0", "{}", systemd.context());

    binary.restore();
    Trigger::Reload.fire(&systemd, ECHO_UNIT, &state, &mut first);
    let after = wait_for_new_main_pid(&systemd, ECHO_UNIT, &state);
    check_serves(&systemd, ECHO_UNIT, &after, port);
    check_gone(&systemd, state.main_pid);
    first.echo();
    let reply = first.upgrade();
    let last = wait_for_new_main_pid(&systemd, ECHO_UNIT, &after);
    assert_eq!(
        (reply.old_pid, reply.new_pid, reply.generation),
        (after.main_pid, last.main_pid, 3),
        "{}",
        systemd.context()
    );
    check_serves(&systemd, ECHO_UNIT, &last, port);
    first.echo();
    eprintln!(
        "[failed] with the good build back: `systemctl reload` made MainPID {} -> {}, and \
         `UPGRADE` answered {reply:?}; the unit is {last:?}",
        state.main_pid, after.main_pid
    );
}

/// `systemctl stop` after an upgrade: SIGTERM reaches the generation that
/// serves, which closes its connections and exits 0; the unit is inactive,
/// not failed, and no process is left.
#[test]
fn systemctl_stop_stops_an_upgraded_server_cleanly() {
    if !Systemd::available() {
        return;
    }
    let binary = Installed::new("stop", ECHO_SERVER, "echo-server");
    let port = free_port();
    let systemd = Systemd::boot("stop", &echo_units(&binary, Some(port), None));
    systemd.run(&["systemctl", "start", ECHO_SOCKET]);
    let mut client = EchoClient::connect(port, "client");
    client.echo();
    let first = systemd.wait_for_state(ECHO_UNIT, "READY=1", PATIENCE, MainState::is_running);
    Trigger::Signal.fire(&systemd, ECHO_UNIT, &first, &mut client);
    let upgraded = wait_for_new_main_pid(&systemd, ECHO_UNIT, &first);
    check_serves(&systemd, ECHO_UNIT, &upgraded, port);
    client.echo();

    systemd.run(&["systemctl", "stop", ECHO_SOCKET, ECHO_UNIT]);
    check_stopped_cleanly(&systemd, ECHO_UNIT, "echo-server", upgraded.main_pid);
    assert_eq!(systemd.unit_pids(ECHO_UNIT), Vec::<u32>::new());
    check_gone(&systemd, first.main_pid);
    check_gone(&systemd, upgraded.main_pid);
    client.expect_closed();
    let refused = TcpStream::connect(("127.0.0.1", port));
    assert!(
        refused.is_err(),
        "the socket still accepts after stop; {}",
        systemd.context()
    );
    eprintln!(
        "[stop] MainPID {} -> {} by `kill -USR2`, then `systemctl stop`: the client read EOF, \
         the port refuses connections, no process is left",
        first.main_pid, upgraded.main_pid
    );
}

/// Without socket activation (`--listen`), Type=notify still reaches
/// active/running: the server says READY=1 itself. It upgrades on reload.
#[test]
fn echo_server_with_listen_is_ready_under_type_notify() {
    if !Systemd::available() {
        return;
    }
    let binary = Installed::new("listen", ECHO_SERVER, "echo-server");
    let exec_start = format!("{} --listen 127.0.0.1:0", binary.path.display());
    let systemd = Systemd::boot("listen", &echo_units(&binary, None, Some(&exec_start)));
    // --no-block: a server that never says READY=1 fails here, after
    // PATIENCE, rather than at systemd's start timeout.
    systemd.run(&["systemctl", "start", "--no-block", ECHO_UNIT]);
    let state = systemd.wait_for_state(
        ECHO_UNIT,
        "READY=1 (active/running)",
        PATIENCE,
        MainState::is_running,
    );
    let stdout = systemd.run_dir().join("echo-server.out");
    let port: u16 = systemd.poll(PATIENCE, "`listening <port>` on stdout", || {
        let text = fs::read_to_string(&stdout).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("listening "))?
            .parse()
            .ok()
    });
    let mut client = EchoClient::connect(port, "client");
    client.echo();
    check_serves(&systemd, ECHO_UNIT, &state, port);
    eprintln!("[listen] `systemctl start {ECHO_UNIT}` with --listen: {state:?}, port {port}");

    Trigger::Reload.fire(&systemd, ECHO_UNIT, &state, &mut client);
    let after = wait_for_new_main_pid(&systemd, ECHO_UNIT, &state);
    check_serves(&systemd, ECHO_UNIT, &after, port);
    check_gone(&systemd, state.main_pid);
    client.echo();
    let reply = client.upgrade();
    assert_eq!(
        (reply.old_pid, reply.generation),
        (after.main_pid, 3),
        "{}",
        systemd.context()
    );
    let last = wait_for_new_main_pid(&systemd, ECHO_UNIT, &after);
    assert_eq!(reply.new_pid, last.main_pid, "{}", systemd.context());
    client.echo();
    eprintln!(
        "[listen] MainPID {} -> {} (systemctl reload) -> {} (UPGRADE), {}/{}",
        state.main_pid, after.main_pid, last.main_pid, last.active, last.sub
    );
}

/// The shipped `echo-server-control.service`: `--control` in its
/// RuntimeDirectory=, and `ExecReload=mitosisctl --socket … upgrade`. On
/// systemd 252, without Type=notify-reload, `systemctl reload` then waits
/// for the upgrade's outcome: it exits 0 only once the new process has taken
/// over (MainPID is the new pid the moment it returns, the unit is
/// active/running, and mitosisctl's `done` answer is logged), and exits
/// non-zero for a broken build, whose failure mitosisctl logs, while the old
/// process stays the main pid and serves on. A held connection is served
/// throughout; with the good build back, the next reload succeeds.
#[test]
fn reload_through_mitosisctl_waits_for_the_upgrade_and_fails_for_a_broken_build() {
    if !Systemd::available()
        || !env_support::can_run(
            "reload_through_mitosisctl_waits_for_the_upgrade_and_fails_for_a_broken_build",
            &[env_support::Need::Mitosisctl],
        )
    {
        return;
    }
    let binary = Installed::new("mitosisctl", ECHO_SERVER, "echo-server");
    let mitosisctl = binary.beside(&env_support::mitosisctl(), "mitosisctl");
    let port = free_port();
    let systemd = Systemd::boot("mitosisctl", &control_units(&binary, &mitosisctl, port));
    let unit = systemd.show(
        CONTROL_UNIT,
        &[
            "Type",
            "ExecReload",
            "RuntimeDirectory",
            "RuntimeDirectoryMode",
        ],
    );
    assert_eq!(unit["Type"], "notify", "{unit:?}");
    assert!(
        unit["ExecReload"].contains(&format!(
            "argv[]={} --socket {CONTROL_SOCKET} upgrade ;",
            mitosisctl.display()
        )),
        "{unit:?}"
    );
    assert_eq!(
        (
            unit["RuntimeDirectory"].as_str(),
            unit["RuntimeDirectoryMode"].as_str()
        ),
        ("echo-server", "0700"),
        "{unit:?}"
    );

    // Returns once the server has said READY=1.
    systemd.run(&["systemctl", "start", CONTROL_UNIT]);
    let first = systemd.main_state(CONTROL_UNIT);
    assert!(first.is_running(), "{first:?}; {}", systemd.context());
    check_serves(&systemd, CONTROL_UNIT, &first, port);
    // The socket, as the test sees the namespace's /run: 0600 in a 0700
    // directory of root's, which systemd made.
    let socket_dir = systemd.run_dir().join("echo-server");
    let dir = fs::metadata(&socket_dir).unwrap();
    let socket = fs::symlink_metadata(socket_dir.join("control")).unwrap();
    assert_eq!(
        (
            dir.permissions().mode() & 0o7777,
            dir.uid(),
            socket.file_type().is_socket(),
            socket.permissions().mode() & 0o7777
        ),
        (0o700, 0, true, 0o600)
    );
    let mut client = EchoClient::connect(port, "client");
    client.echo();
    let status = mitosisctl_status(&systemd, &mitosisctl);
    assert_eq!(
        (
            status.field("pid"),
            status.field("generation"),
            status.field("last-upgrade")
        ),
        (
            Some(first.main_pid.to_string().as_str()),
            Some("1"),
            Some("none")
        ),
        "{}",
        systemd.context()
    );
    eprintln!("[mitosisctl] started: {first:?}; `mitosisctl status` agrees");

    // (a) The good build: reload returns once the upgrade is done.
    let stdout = systemd.run_dir().join("echo-server.out");
    let printed_before = fs::read_to_string(&stdout).unwrap_or_default().len();
    let logged_before = unit_log(&systemd).len();
    let started = Instant::now();
    let reload = systemd.run_printed(&["systemctl", "reload", CONTROL_UNIT]);
    let took = started.elapsed();
    assert!(
        reload.status.success(),
        "`systemctl reload` failed with {}; {}",
        reload.status,
        systemd.context()
    );
    // Read at once, without waiting: all of this was so when reload exited.
    let upgraded = systemd.main_state(CONTROL_UNIT);
    let answer = answer_logged(&stdout, printed_before, "done")
        .unwrap_or_else(|| panic!("no `done` in {}; {}", stdout.display(), systemd.context()));
    let shown = systemd.show(CONTROL_UNIT, &["ReloadResult", "ExecReload"]);
    assert!(
        upgraded.is_running() && upgraded.main_pid != first.main_pid,
        "right after `systemctl reload`: {upgraded:?} (before: {first:?}); {}",
        systemd.context()
    );
    assert_eq!(
        (
            answer.field("old-pid"),
            answer.field("new-pid"),
            answer.field("generation")
        ),
        (
            Some(first.main_pid.to_string().as_str()),
            Some(upgraded.main_pid.to_string().as_str()),
            Some("2")
        ),
        "ExecReload's answer: {answer:?}; {}",
        systemd.context()
    );
    assert_eq!(shown["ReloadResult"], "success", "{shown:?}");
    assert!(
        shown["ExecReload"].contains("code=exited ; status=0 }"),
        "{shown:?}"
    );
    check_serves(&systemd, CONTROL_UNIT, &upgraded, port);
    client.echo();
    let status = mitosisctl_status(&systemd, &mitosisctl);
    assert_eq!(
        (
            status.field("pid"),
            status.field("generation"),
            status.field("last-upgrade"),
        ),
        (
            Some(upgraded.main_pid.to_string().as_str()),
            Some("2"),
            Some("done"),
        ),
        "{}",
        systemd.context()
    );
    // systemd's side: it took the new main pid from the old process before
    // ExecReload='s mitosisctl exited, which ended the reload.
    let logged = reload_log(&systemd, logged_before);
    let main_pid = format!(
        "Got notification message from PID {} (MAINPID={})",
        first.main_pid, upgraded.main_pid
    );
    let exited = "Control process exited, code=exited, status=0/SUCCESS";
    assert!(
        position(&logged, &main_pid) < position(&logged, exited),
        "{logged:#?}"
    );
    check_gone(&systemd, first.main_pid);
    eprintln!(
        "[mitosisctl] `systemctl reload` took {took:?} and returned with MainPID {} -> {} \
         already, {}/{}; ExecReload's mitosisctl logged {answer:?}",
        first.main_pid, upgraded.main_pid, upgraded.active, upgraded.sub
    );

    // (b) A broken build: reload fails, and nothing else changes.
    binary.replace_with_broken();
    let stderr = systemd.run_dir().join("echo-server.err");
    let printed_before = fs::read_to_string(&stderr).unwrap_or_default().len();
    let logged_before = unit_log(&systemd).len();
    let reload = systemd.run_printed(&["systemctl", "reload", CONTROL_UNIT]);
    let kept = systemd.main_state(CONTROL_UNIT);
    let shown = systemd.show(CONTROL_UNIT, &["ReloadResult", "ExecReload", "NRestarts"]);
    assert_eq!(
        reload.status.code(),
        Some(1),
        "`systemctl reload` with a broken build; {}",
        systemd.context()
    );
    let said = String::from_utf8_lossy(&reload.stderr);
    assert!(
        said.starts_with(&format!("Job for {CONTROL_UNIT} failed.")),
        "{said}"
    );
    assert_eq!(
        kept,
        upgraded,
        "a failed reload changed the unit; {}",
        systemd.context()
    );
    assert_eq!(
        (shown["ReloadResult"].as_str(), shown["NRestarts"].as_str()),
        ("exit-code", "0"),
        "{shown:?}"
    );
    assert!(
        shown["ExecReload"].contains("code=exited ; status=1 }"),
        "{shown:?}"
    );
    // What an operator reads: systemctl status names the failed ExecReload=,
    // and mitosisctl's answer, with the reason, is in the service's log.
    let summary = systemd.run(&[
        "systemctl",
        "status",
        "--no-pager",
        "--lines=0",
        CONTROL_UNIT,
    ]);
    assert!(
        summary.contains("Active: active (running)")
            && summary.lines().any(|line| line.contains("ExecReload=")
                && line.contains("(code=exited, status=1/FAILURE)")),
        "{summary}"
    );
    // The old process said READY=1 again before mitosisctl heard `failed`.
    let logged = reload_log(&systemd, logged_before);
    let ready = format!(
        "Got notification message from PID {} (READY=1)",
        upgraded.main_pid
    );
    let exited = "Control process exited, code=exited, status=1/FAILURE";
    assert!(
        position(&logged, &ready) < position(&logged, exited),
        "{logged:#?}"
    );
    let failure = answer_logged(&stderr, printed_before, "failed")
        .unwrap_or_else(|| panic!("no `failed` in {}; {}", stderr.display(), systemd.context()));
    assert_eq!(
        failure.field("old-pid"),
        Some(upgraded.main_pid.to_string().as_str()),
        "{failure:?}"
    );
    let reason = failure.field("error").unwrap_or_default();
    assert!(reason.contains("exit"), "{failure:?}");
    check_serves(&systemd, CONTROL_UNIT, &kept, port);
    client.echo();
    EchoClient::connect(port, "after the failure").echo();
    let status = mitosisctl_status(&systemd, &mitosisctl);
    assert_eq!(
        (
            status.field("pid"),
            status.field("generation"),
            status.field("last-upgrade"),
            status.field("last-error"),
            status.field("upgrading"),
        ),
        (
            Some(kept.main_pid.to_string().as_str()),
            Some("2"),
            Some("failed"),
            Some(reason),
            Some("no"),
        ),
        "{}",
        systemd.context()
    );
    eprintln!(
        "[mitosisctl] with a broken build `systemctl reload` exited 1, the unit stays {kept:?}, \
         and ExecReload's mitosisctl logged: {failure:?}"
    );

    // The good build back: the next reload succeeds.
    binary.restore();
    systemd.run(&["systemctl", "reload", CONTROL_UNIT]);
    let last = systemd.main_state(CONTROL_UNIT);
    assert!(
        last.is_running() && last.main_pid != kept.main_pid,
        "{last:?}; {}",
        systemd.context()
    );
    let status = mitosisctl_status(&systemd, &mitosisctl);
    assert_eq!(
        (status.field("pid"), status.field("generation")),
        (Some(last.main_pid.to_string().as_str()), Some("3")),
        "{}",
        systemd.context()
    );
    check_serves(&systemd, CONTROL_UNIT, &last, port);
    client.echo();
    eprintln!(
        "[mitosisctl] with the good build back: MainPID {} -> {}",
        kept.main_pid, last.main_pid
    );

    // Stopped, the server exits 0. (systemd would remove the socket's
    // directory too, but refuses to on a disk file system: the test's /run
    // is not a tmpfs.)
    systemd.run(&["systemctl", "stop", CONTROL_UNIT]);
    check_stopped_cleanly(&systemd, CONTROL_UNIT, "echo-server", last.main_pid);
    client.expect_closed();
}

/// The IRC bot under systemd against a real ngircd, upgraded 3 times: by an
/// admin's `!upgrade`, by `systemctl reload`, and by `!upgrade` again. After
/// each, its main pid is the new process, the unit is active/running, and
/// the channel saw no QUIT, PART or JOIN.
#[test]
fn ircbot_upgrades_three_times_under_systemd() {
    if !Systemd::available() {
        return;
    }
    let Some(server) = irc_support::Ngircd::start() else {
        return;
    };
    let binary = Installed::new("ircbot", IRCBOT, "ircbot");
    let exec_start = format!(
        "{} --server 127.0.0.1:{} --nick {} --channel {} --admin {}",
        binary.path.display(),
        server.port,
        irc_support::BOT,
        irc_support::CHANNEL,
        irc_support::ADMIN
    );
    let units = [
        (BOT_UNIT, shipped_unit(BOT_UNIT, &binary)),
        (
            "ircbot.service.d/test.conf",
            test_drop_in("ircbot", Some(&exec_start)),
        ),
    ];
    let systemd = Systemd::boot("ircbot", &units);
    let mut observer = irc_support::Client::join(&server, irc_support::ADMIN);
    systemd.run(&["systemctl", "start", "--no-block", BOT_UNIT]);
    observer.expect_bot_join();
    let mut state = systemd.wait_for_state(
        BOT_UNIT,
        "READY=1 (active/running)",
        PATIENCE,
        MainState::is_running,
    );
    let status = observer.status();
    assert_eq!(
        (status.pid, status.generation),
        (state.main_pid, 1),
        "{}",
        systemd.context()
    );
    eprintln!(
        "[ircbot] started and joined {}: {state:?}",
        irc_support::CHANNEL
    );

    let mut pids = vec![state.main_pid];
    for upgrade in 1..=3u64 {
        let how = if upgrade == 2 {
            "systemctl reload"
        } else {
            "!upgrade"
        };
        let report = if upgrade == 2 {
            systemd.run(&["systemctl", "reload", BOT_UNIT]);
            None
        } else {
            Some(observer.upgrade().0)
        };
        let after = wait_for_new_main_pid(&systemd, BOT_UNIT, &state);
        if let Some(report) = report {
            assert_eq!(
                (report.old_pid, report.new_pid, report.generation),
                (state.main_pid, after.main_pid, upgrade + 1),
                "{report:?}; {}",
                systemd.context()
            );
        }
        check_gone(&systemd, state.main_pid);
        assert_eq!(systemd.unit_pids(BOT_UNIT), vec![after.main_pid]);
        // The process systemd calls the main one is the one in the channel.
        let status = observer.status();
        assert_eq!(
            (status.pid, status.generation),
            (after.main_pid, upgrade + 1),
            "{}",
            systemd.context()
        );
        assert!(
            !pids.contains(&after.main_pid),
            "{after:?} reuses one of {pids:?}"
        );
        eprintln!(
            "[ircbot] upgrade {upgrade} by {how}: MainPID {} -> {}, {}/{}, !status says pid={} \
             generation={}",
            state.main_pid, after.main_pid, after.active, after.sub, status.pid, status.generation
        );
        pids.push(after.main_pid);
        state = after;
    }
    observer.assert_bot_never_left_or_rejoined();
    eprintln!("[ircbot] MainPID across the 3 upgrades: {pids:?}; no QUIT, PART or JOIN seen");

    // Stopped, the bot that serves says goodbye and exits 0.
    systemd.run(&["systemctl", "stop", BOT_UNIT]);
    let quit = observer.wait_for("the bot's QUIT", |line| {
        line.source == irc_support::BOT && line.command == "QUIT"
    });
    eprintln!("[ircbot] the observer saw: {}", quit.raw);
    check_stopped_cleanly(&systemd, BOT_UNIT, "ircbot", state.main_pid);
}

// ---------------------------------------------------------------------------
// Units and binaries

/// The echo server's units: the shipped service, and the shipped socket on
/// `port` when socket-activated; `exec_start` replaces the service's command.
fn echo_units(
    binary: &Installed,
    port: Option<u16>,
    exec_start: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut units = vec![
        (ECHO_UNIT, shipped_unit(ECHO_UNIT, binary)),
        (
            "echo-server.service.d/test.conf",
            test_drop_in("echo-server", exec_start),
        ),
    ];
    if let Some(port) = port {
        let socket = shipped_unit(ECHO_SOCKET, binary);
        let shipped = "ListenStream=127.0.0.1:7700\n";
        assert!(socket.contains(shipped), "{ECHO_SOCKET} lost {shipped:?}");
        units.push((
            ECHO_SOCKET,
            socket.replace(shipped, &format!("ListenStream=127.0.0.1:{port}\n")),
        ));
    }
    units
}

/// The shipped echo-server-control.service, listening on `port`, with the
/// test's copies of the server and of mitosisctl.
fn control_units(binary: &Installed, mitosisctl: &Path, port: u16) -> Vec<(&'static str, String)> {
    let unit = shipped_unit(CONTROL_UNIT, binary);
    let listen = "--listen 127.0.0.1:7701 ";
    let reload = "\nExecReload=/usr/local/bin/mitosisctl ";
    assert!(
        unit.contains(listen) && unit.contains(reload),
        "{CONTROL_UNIT} lost {listen:?} or {reload:?}"
    );
    let unit = unit
        .replace(listen, &format!("--listen 127.0.0.1:{port} "))
        .replace(reload, &format!("\nExecReload={} ", mitosisctl.display()));
    vec![
        (CONTROL_UNIT, unit),
        (
            "echo-server-control.service.d/test.conf",
            test_drop_in("echo-server", None),
        ),
    ]
}

/// A unit of `examples/systemd/`, running the test's copy of the binary.
fn shipped_unit(file: &str, binary: &Installed) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shipped = format!("ExecStart=/usr/local/bin/{} ", binary.name);
    let shipped_alone = format!("ExecStart=/usr/local/bin/{}\n", binary.name);
    if !file.ends_with(".service") {
        return text;
    }
    assert!(
        text.contains(&shipped) || text.contains(&shipped_alone),
        "{file} has no `ExecStart=/usr/local/bin/{}`",
        binary.name
    );
    text.replace(
        &format!("ExecStart=/usr/local/bin/{}", binary.name),
        &format!("ExecStart={}", binary.path.display()),
    )
}

/// What the tests add to a service: its stdout and stderr in files under
/// `/run` (no journald runs in the namespace), and their own command line.
fn test_drop_in(program: &str, exec_start: Option<&str>) -> String {
    let mut text = format!(
        "[Service]\n\
         StandardOutput=append:/run/{program}.out\n\
         StandardError=append:/run/{program}.err\n"
    );
    if let Some(exec_start) = exec_start {
        // An empty ExecStart= first: a drop-in's ExecStart= otherwise adds
        // a command rather than replacing it.
        text.push_str(&format!("ExecStart=\nExecStart={exec_start}\n"));
    }
    text
}

/// The test's copy of a binary, at the path its unit runs, so that the test
/// can put a broken build there.
struct Installed {
    dir: PathBuf,
    path: PathBuf,
    name: &'static str,
    built: &'static str,
}

impl Installed {
    fn new(test: &str, built: &'static str, name: &'static str) -> Installed {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("mitosis-systemd-bin-{test}-{}", std::process::id()));
        fs::remove_dir_all(&dir).ok();
        fs::create_dir_all(&dir).unwrap();
        let installed = Installed {
            path: dir.join(name),
            dir,
            name,
            built,
        };
        installed.restore();
        installed
    }

    /// Puts the good build back, by rename, as a deployment would. A hard
    /// link, not a copy: a file open for writing while another test thread
    /// forks could make executing it fail with ETXTBSY.
    fn restore(&self) {
        let staged = self.dir.join("staged");
        fs::remove_file(&staged).ok();
        fs::hard_link(self.built, &staged).unwrap();
        fs::rename(&staged, &self.path).unwrap();
    }

    /// Another built program beside this one, as both would be in
    /// /usr/local/bin: a hard link, which a rebuild does not change.
    fn beside(&self, built: &Path, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::hard_link(built, &path)
            .unwrap_or_else(|e| panic!("link {} at {}: {e}", built.display(), path.display()));
        path
    }

    /// Renames a build that exits 1 at start over the installed one.
    fn replace_with_broken(&self) {
        let staged = self.dir.join("staged");
        fs::remove_file(&staged).ok();
        fs::write(
            &staged,
            "#!/bin/sh\necho 'this build is broken' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&staged, &self.path).unwrap();
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        fs::remove_dir_all(&self.dir).ok();
    }
}

/// A loopback port that was free a moment ago, for a socket unit to bind.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn count_lines_with(path: &Path, needle: &str) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.to_lowercase().contains(needle))
        .count()
}

// ---------------------------------------------------------------------------
// Upgrades, and what systemd says about them

#[derive(Clone, Copy)]
enum Trigger {
    /// `systemctl reload`: the unit's ExecReload= sends SIGUSR2.
    Reload,
    /// `kill -USR2 <MainPID>`, inside the namespace.
    Signal,
    /// A client's `UPGRADE` line, which the new generation answers.
    Client,
}

impl Trigger {
    /// Starts an upgrade; a client's gets its reply.
    fn fire(
        self,
        systemd: &Systemd,
        unit: &str,
        state: &MainState,
        client: &mut EchoClient,
    ) -> Option<Upgraded> {
        match self {
            Trigger::Reload => {
                systemd.run(&["systemctl", "reload", unit]);
                None
            }
            Trigger::Signal => {
                systemd.run(&["kill", "-USR2", &state.main_pid.to_string()]);
                None
            }
            Trigger::Client => Some(client.upgrade()),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Trigger::Reload => "`systemctl reload`",
            Trigger::Signal => "`kill -USR2 <MainPID>`",
            Trigger::Client => "a client's `UPGRADE`",
        }
    }
}

/// Waits until systemd reports a main pid other than `before`'s, with the
/// unit active/running again (READY=1 from the new process).
fn wait_for_new_main_pid(systemd: &Systemd, unit: &str, before: &MainState) -> MainState {
    systemd.wait_for_state(
        unit,
        &format!("a new MainPID (not {}) and active/running", before.main_pid),
        PATIENCE,
        |state| state.main_pid != before.main_pid && state.is_running(),
    )
}

/// The unit's main pid is a live process of the unit's cgroup running the
/// server; when `port` is a listener, it holds that listening socket.
fn check_serves(systemd: &Systemd, unit: &str, state: &MainState, port: u16) {
    let host = systemd.host_pid(state.main_pid).unwrap_or_else(|| {
        panic!(
            "MainPID {} is not a live process in the namespace; {}",
            state.main_pid,
            systemd.context()
        )
    });
    assert!(
        systemd.unit_pids(unit).contains(&state.main_pid),
        "MainPID {} is not in {unit}'s cgroup ({:?}); {}",
        state.main_pid,
        systemd.unit_pids(unit),
        systemd.context()
    );
    let inode = listener_inode(port).unwrap_or_else(|| panic!("nothing listens on port {port}"));
    let socket = format!("socket:[{inode}]");
    let held = fs::read_dir(format!("/proc/{host}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .find(|fd| fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == &*socket));
    let held = held.unwrap_or_else(|| {
        panic!(
            "MainPID {} (host pid {host}) does not hold the listener on port {port}; {}",
            state.main_pid,
            systemd.context()
        )
    });
    // Close-on-exec, as socket activation's fds must be once taken, so that
    // nothing the server starts inherits the listener.
    let fdinfo = fs::read_to_string(format!(
        "/proc/{host}/fdinfo/{}",
        held.file_name().to_string_lossy()
    ))
    .unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
        .expect("fdinfo has the flags");
    assert_ne!(
        flags & 0o2000000,
        0,
        "the listener is not close-on-exec: {fdinfo}"
    );
}

/// A process started by an upgrade was given no socket-activation
/// variables: only the first process could take the sockets, and every
/// later one gets the listener in the handover. (The first process's own
/// /proc environ still shows what it was started with; its program's
/// environment has them removed.)
fn check_no_stale_activation(systemd: &Systemd, state: &MainState) {
    let host = systemd.host_pid(state.main_pid).expect("MainPID runs");
    let environ = fs::read(format!("/proc/{host}/environ")).unwrap();
    let stale: Vec<String> = environ
        .split(|&byte| byte == 0)
        .map(|var| String::from_utf8_lossy(var).into_owned())
        .filter(|var| var.starts_with("LISTEN_"))
        .collect();
    assert!(stale.is_empty(), "MainPID {} has {stale:?}", state.main_pid);
}

/// After `systemctl stop`: the unit is inactive, not failed, and its last
/// main process `pid` exited by itself with status 0, without a SIGKILL.
fn check_stopped_cleanly(systemd: &Systemd, unit: &str, program: &str, pid: u32) {
    let shown = systemd.show(unit, &["ActiveState", "SubState", "Result", "MainPID"]);
    let got = |key: &str| shown[key].clone();
    eprintln!("[stop] {unit} after `systemctl stop`: {shown:?}");
    assert_eq!(
        [
            got("ActiveState"),
            got("SubState"),
            got("Result"),
            got("MainPID")
        ],
        ["inactive", "dead", "success", "0"],
        "{}",
        systemd.context()
    );
    // systemctl show has no exit status for a main process systemd did not
    // fork (ExecMainCode=0), but systemd, the namespace's init, reaps it and
    // logs how it ended.
    let death = format!("Child {pid} ({program}) died");
    let died = systemd.poll(PATIENCE, "systemd to log the main process's death", || {
        systemd.console_lines_with(&death).pop()
    });
    eprintln!("[stop] systemd's log: {died}");
    assert!(
        died.contains("(code=exited, status=0/SUCCESS)"),
        "{died}; {}",
        systemd.context()
    );
    let killed = systemd.console_lines_with(&format!("Killing process {pid} ({program})"));
    assert!(killed.is_empty(), "{killed:?}; {}", systemd.context());
    assert_eq!(systemd.unit_pids(unit), Vec::<u32>::new());
}

/// The lines of systemd's log about echo-server-control.service.
fn unit_log(systemd: &Systemd) -> Vec<String> {
    systemd.console_lines_with(&format!("{CONTROL_UNIT}: "))
}

/// [`unit_log`] after its first `from` lines, once it shows that the
/// reload's ExecReload= process has exited (the console log is written a
/// moment after systemd logs).
fn reload_log(systemd: &Systemd, from: usize) -> Vec<String> {
    systemd.poll(PATIENCE, "systemd to log the end of ExecReload=", || {
        let logged = unit_log(systemd).get(from..)?.to_vec();
        logged
            .iter()
            .any(|line| line.contains("Control process exited"))
            .then_some(logged)
    })
}

/// Where the first line containing `needle` is in `lines`.
fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("systemd did not log {needle:?}: {lines:#?}"))
}

/// `mitosisctl status`, run inside the namespace as root.
fn mitosisctl_status(systemd: &Systemd, mitosisctl: &Path) -> Answer {
    let mitosisctl = mitosisctl.display().to_string();
    let printed = systemd.run(&[&mitosisctl, "--socket", CONTROL_SOCKET, "status"]);
    printed
        .parse()
        .unwrap_or_else(|e| panic!("`mitosisctl status` printed {printed:?}: {e}"))
}

/// The answer starting with the line `verdict` that mitosisctl, run by
/// ExecReload=, printed to the service's log file `path` after its first
/// `from` bytes: that line and the `key: value` lines after it, up to the
/// server's own next log line.
fn answer_logged(path: &Path, from: usize, verdict: &str) -> Option<Answer> {
    let text = fs::read_to_string(path).ok()?;
    let mut lines = text.get(from..)?.lines();
    lines.find(|line| *line == verdict)?;
    let is_field = |line: &&str| {
        line.split_once(": ").is_some_and(|(key, _)| {
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        })
    };
    let fields: Vec<&str> = lines.take_while(is_field).collect();
    format!("{verdict}\n{}", fields.join("\n")).parse().ok()
}

/// Waits until the namespace's process `pid` has exited.
fn check_gone(systemd: &Systemd, pid: u32) {
    systemd.poll(PATIENCE, &format!("the old process {pid} to exit"), || {
        systemd.host_pid(pid).is_none().then_some(())
    });
}

/// The inode of the socket listening on 127.0.0.1:`port`, from
/// /proc/net/tcp (the namespace shares the test's network).
fn listener_inode(port: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address, then rem_address, then the state: 0A is LISTEN.
        (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

// ---------------------------------------------------------------------------
// The echo server's clients

/// `UPGRADED <old> <new> <generation>`.
#[derive(Debug)]
struct Upgraded {
    old_pid: u32,
    new_pid: u32,
    generation: u64,
}

/// One connection, kept open, sending `<id> <payload>` lines one at a time.
struct EchoClient {
    name: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    sent: u64,
}

impl EchoClient {
    fn connect(port: u16, name: &str) -> EchoClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("{name} could not connect to port {port}: {e}"));
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        EchoClient {
            name: name.to_owned(),
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            sent: 0,
        }
    }

    /// Sends one line and reads one back.
    fn request(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{} could not send {line:?}: {e}", self.name));
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) => panic!("{}: EOF instead of the answer to {line:?}", self.name),
            Ok(_) => reply.trim_end().to_owned(),
            Err(e) => panic!("{}: no answer to {line:?}: {e}", self.name),
        }
    }

    /// A request, which must come back as it went.
    fn echo(&mut self) {
        self.sent += 1;
        let line = format!(
            "{}-{} payload of request {}",
            self.name, self.sent, self.sent
        );
        let reply = self.request(&line);
        assert_eq!(reply, line, "{}'s echo", self.name);
    }

    fn upgrade(&mut self) -> Upgraded {
        let reply = self.request("UPGRADE");
        let fields: Vec<&str> = reply.split(' ').collect();
        let parsed = match fields.as_slice() {
            ["UPGRADED", old, new, generation] => (|| {
                Some((
                    old.parse().ok()?,
                    new.parse().ok()?,
                    generation.parse().ok()?,
                ))
            })(),
            _ => None,
        };
        let (old_pid, new_pid, generation) =
            parsed.unwrap_or_else(|| panic!("{}: UPGRADE was answered {reply:?}", self.name));
        Upgraded {
            old_pid,
            new_pid,
            generation,
        }
    }

    fn upgrade_failed(&mut self) -> String {
        let reply = self.request("UPGRADE");
        assert!(
            reply.starts_with("UPGRADE-FAILED "),
            "{}: UPGRADE with a broken build was answered {reply:?}",
            self.name
        );
        reply
    }

    /// The server has closed the connection.
    fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{} read {rest:?} before EOF", self.name),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{}: no EOF: {e}", self.name),
        }
    }
}

/// Clients that keep the server busy, each on one connection for the whole
/// test, pipelining batches of requests and checking that each comes back
/// exactly once, in order.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    const BATCH: u64 = 8;

    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut answered = Vec::new();
        let mut threads = Vec::new();
        for client in 0..clients {
            let count = Arc::new(AtomicU64::new(0));
            let mut connection = EchoClient::connect(port, &format!("load{client}"));
            let (stop, count_in_thread) = (stop.clone(), count.clone());
            threads.push(thread::spawn(move || {
                let mut next = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<String> = (next..next + Self::BATCH)
                        .map(|n| format!("{}-{n} {}", connection.name, "x".repeat(64)))
                        .collect();
                    let mut requests = batch.join("\n");
                    requests.push('\n');
                    connection.writer.write_all(requests.as_bytes()).unwrap();
                    for expected in &batch {
                        let mut reply = String::new();
                        let read = connection.reader.read_line(&mut reply);
                        assert!(
                            matches!(read, Ok(n) if n > 0),
                            "{}: {read:?} instead of the echo of {expected:?}",
                            connection.name
                        );
                        // A lost, repeated or reordered reply shows here.
                        assert_eq!(reply.trim_end(), expected, "{}", connection.name);
                    }
                    next += Self::BATCH;
                    count_in_thread.store(next, Ordering::Relaxed);
                }
            }));
            answered.push(count);
        }
        Load {
            stop,
            answered,
            threads,
        }
    }

    /// Waits until every client has had a whole batch answered since now.
    fn wait_until_all_served(&self, systemd: &Systemd) {
        let marks: Vec<u64> = self.counts();
        systemd.poll(PATIENCE, "every load client to be answered", || {
            let now = self.counts();
            let stuck = now.iter().zip(&marks).any(|(now, mark)| *now <= *mark);
            (!stuck).then_some(())
        });
    }

    fn counts(&self) -> Vec<u64> {
        self.answered
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }

    fn total(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// Stops the clients; how many requests each had answered.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in std::mem::take(&mut self.threads) {
            thread
                .join()
                .expect("a load client failed; see its panic above");
        }
        self.counts()
    }
}
