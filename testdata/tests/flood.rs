//! Floods of the handover port during slow starts, from this user and from
//! another one (`nobody`, through `setpriv`): every upgrade succeeds, within
//! the hello timeout. In a test binary of their own, because the floods
//! reach every loopback listener a watcher can see.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const FLOODER: &str = env!("CARGO_BIN_EXE_flooder");

/// How many upgrades each flood test runs.
const FLOODED_UPGRADES: u32 = 20;

/// How long each upgrade's flood lasts: from before the held child is let
/// go until well after a handover on this machine completes.
const FLOOD_FOR: Duration = Duration::from_millis(400);

/// Splits `FLOODED_UPGRADES` times in a row, each time holding the new
/// process before `init` (a slow start), flooding its handover port with
/// `flood(port)`, and then letting it go: every upgrade must succeed, the
/// new generation serving with the state intact. Returns how many
/// connections the floods made.
fn upgrades_under_a_flood(
    name: &str,
    mut flood: impl FnMut(u16) -> Box<dyn FnOnce() -> u64>,
) -> u64 {
    let (mut run, mut peer) = Spawn::new(name)
        .args(&["--blob-size", "100003", "--spare-fds", "10"])
        .start();
    let before = status(&mut peer);
    let mut flooded = 0;
    for upgrade in 1..=FLOODED_UPGRADES {
        let (child, fifo) = split_held_at(&mut run, &mut peer, &format!("release-{upgrade}.fifo"));
        // What any local user can do: read the port from the command line.
        let finish = flood(mitosis_port_of(child));
        let started = Instant::now();
        let ready = {
            let _writer = release(&fifo);
            peer.line()
        };
        let took = started.elapsed();
        flooded += finish();
        assert!(
            ready.starts_with("ready ") && field(&ready, "pid") == child.to_string(),
            "upgrade {upgrade} of {FLOODED_UPGRADES} under a flood: {ready:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "upgrade {upgrade} took {took:?} under the flood, past the 1 s hello timeout"
        );
        let now = status(&mut peer);
        assert_eq!(
            field(&now, "generation"),
            (upgrade + 1).to_string(),
            "{now:?}"
        );
        for key in ["blob", "spare"] {
            assert_eq!(field(&now, key), field(&before, key), "{key}: {now:?}");
        }
    }
    eprintln!(
        "{FLOODED_UPGRADES} of {FLOODED_UPGRADES} upgrades succeeded under {flooded} flood \
         connections"
    );
    flooded
}

/// A flood of idle connections from this user, during each of 20 slow
/// starts, fails no upgrade and delays none past the hello timeout.
#[test]
fn a_flood_from_the_same_user_fails_no_upgrade() {
    let flooded = upgrades_under_a_flood("flood-same-user", |port| {
        let until = Instant::now() + FLOOD_FOR;
        let flooder = std::thread::spawn(move || {
            let made = AtomicU64::new(0);
            flood(port, &made, || Instant::now() < until);
            made.into_inner()
        });
        Box::new(move || flooder.join().expect("the flooder"))
    });
    assert!(flooded > 0, "the flood made connections");
}

/// Connects to `port` for as long as `go_on` says, holding the newest 1,000
/// connections open and idle, and counts each connection in `made`.
fn flood(port: u16, made: &AtomicU64, mut go_on: impl FnMut() -> bool) {
    let mut open = std::collections::VecDeque::new();
    while go_on() {
        if let Ok(conn) = TcpStream::connect(("127.0.0.1", port)) {
            made.fetch_add(1, Ordering::Relaxed);
            open.push_back(conn);
            if open.len() > 1000 {
                open.pop_front();
            }
        }
    }
}

/// 100,000 connections from this user during one slow start, and more
/// while the new process connects: the upgrade succeeds within the hello
/// timeout.
#[test]
fn a_flood_of_100000_connections_during_a_slow_start_fails_nothing() {
    const FLOOD: u64 = 100_000;
    const THREADS: u64 = 2;
    let (mut run, mut peer) = Spawn::new("flood-100000")
        .args(&["--blob-size", "100003", "--spare-fds", "10"])
        .start();
    let before = status(&mut peer);
    let (child, fifo) = split_held_at_fifo(&mut run, &mut peer);
    let port = mitosis_port_of(child);
    let made = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (enough, flood_reached) = std::sync::mpsc::sync_channel(THREADS as usize);
    let flooders: Vec<_> = (0..THREADS)
        .map(|_| {
            let (made, stop, enough) = (made.clone(), stop.clone(), enough.clone());
            std::thread::spawn(move || {
                let mut told = false;
                flood(port, &made, || {
                    if !told && made.load(Ordering::Relaxed) >= FLOOD {
                        told = enough.send(()).is_ok();
                    }
                    !stop.load(Ordering::Relaxed)
                })
            })
        })
        .collect();
    flood_reached
        .recv_timeout(Duration::from_secs(120))
        .expect("the flood reached 100,000 connections");
    let started = Instant::now();
    let ready = {
        let _writer = release(&fifo);
        peer.line()
    };
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("a flooder");
    }
    let connected = made.load(Ordering::Relaxed);
    eprintln!("{connected} flood connections; the upgrade took {took:?} after the release");
    assert!(
        ready.starts_with("ready ") && field(&ready, "pid") == child.to_string(),
        "the upgrade under a flood of {connected} connections: {ready:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the upgrade took {took:?} under the flood, past the 1 s hello timeout"
    );
    let now = status(&mut peer);
    for key in ["blob", "spare"] {
        assert_eq!(field(&now, key), field(&before, key), "{key}: {now:?}");
    }
}

/// The same, from user nobody: the flooder is another user's process.
#[test]
fn a_flood_from_another_user_fails_no_upgrade() {
    let Some(setpriv) = setpriv_as_root() else {
        return;
    };
    let tools = TempDir::new("flooder-tools");
    fs::set_permissions(tools.path(), fs::Permissions::from_mode(0o755))
        .expect("make the tools directory world-readable");
    let binary = tools.install(FLOODER, "flooder");
    let flooded = upgrades_under_a_flood("flood-other-user", |port| {
        let child = Command::new(&setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary)
            .arg(port.to_string())
            .arg(FLOOD_FOR.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the flooder as nobody");
        Box::new(move || {
            let output = child.wait_with_output().expect("the flooder's output");
            let text = String::from_utf8_lossy(&output.stdout);
            text.trim()
                .strip_prefix("flooded ")
                .and_then(|rest| rest.strip_suffix(" connections"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("the flooder said {text:?}"))
        })
    });
    assert!(flooded > 0, "the flood made connections");
}

/// From user nobody again, but the flooder finds each handover port by
/// itself, as any local user can: it watches `/proc/net/tcp` for new
/// loopback listeners and floods each one as it appears.
#[test]
fn a_flood_from_another_user_watching_proc_net_tcp_fails_no_upgrade() {
    let Some(setpriv) = setpriv_as_root() else {
        return;
    };
    let tools = TempDir::new("watcher-tools");
    fs::set_permissions(tools.path(), fs::Permissions::from_mode(0o755))
        .expect("make the tools directory world-readable");
    let binary = tools.install(FLOODER, "flooder");
    let mut watcher = Command::new(&setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .arg("watch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the watching flooder as nobody");
    let mut said = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut next = || {
        said.next()
            .and_then(Result::ok)
            .expect("the watcher's next line")
    };
    assert_eq!(next(), "watching");
    let mut found = Vec::new();
    // Each upgrade is let go only once the watcher has found its port (and
    // any other new listener it saw first), and has flooded it with 1,000
    // connections.
    upgrades_under_a_flood("flood-watcher", |port| {
        loop {
            let line = next();
            if line.starts_with("busy ") {
                continue; // an earlier port's
            }
            let seen: u16 = line
                .strip_prefix("port ")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("the watcher said {line:?}"));
            found.push(seen);
            if seen == port {
                break;
            }
        }
        // And only once it floods it in earnest.
        let busy = format!("busy {port}");
        while next() != busy {}
        Box::new(|| 0)
    });
    drop(watcher.stdin.take());
    // Past any report on other listeners, to the summary.
    let last = loop {
        let line = next();
        if line.starts_with("flooded ") {
            break line;
        }
    };
    let status = watcher
        .wait()
        .expect("the watcher exits once its stdin closes");
    let words: Vec<&str> = last.split(' ').collect();
    let [_, connections, _, _, ports, _] = words[..] else {
        panic!("the watcher ended with {last:?}");
    };
    let (connections, ports): (u64, usize) = (connections.parse().unwrap(), ports.parse().unwrap());
    eprintln!("the watcher found {found:?} and made {connections} connections");
    assert!(connections > 0, "{last}");
    // Every handover port, and any other listener that appeared meanwhile.
    assert!(ports >= found.len(), "{last}: {found:?}");
    assert!(found.len() >= FLOODED_UPGRADES as usize, "{found:?}");
    assert!(status.success(), "{status}");
}
