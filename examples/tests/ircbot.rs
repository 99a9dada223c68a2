//! The IRC bot against a real IRC server: ngircd from Debian, one per test,
//! on a free loopback port. An observer and a flooder join the bot's
//! channel; the observer sends the commands and watches what the bot does.
//!
//! Without ngircd these tests skip with a reason, except under `CI=true`,
//! where they fail: `.ci/run` installs it.

mod irc_support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use irc_support::{
    ADMIN, BOT, Binaries, Bot, Client, NEXT_VERSION, Ngircd, VERSION, a_broken_build_rolls_back,
    five_upgrades_during_a_flood, report_latency,
};

#[test]
fn five_upgrades_under_a_flood_without_rejoin() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let mut observer = Client::join(&server, ADMIN);
    let flooder = Client::join(&server, "flooder");
    let mut bot = Bot::start(&server, Path::new(env!("CARGO_BIN_EXE_ircbot")));
    observer.expect_bot_join();
    five_upgrades_during_a_flood(
        "five_upgrades_under_a_flood",
        &mut observer,
        flooder,
        &mut bot,
        |_, _| {},
    );
}

#[test]
fn upgrade_runs_the_binary_renamed_over_the_old_one() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let binaries = Binaries::new("renamed");
    let mut observer = Client::join(&server, ADMIN);
    let mut bot = Bot::start(&server, &binaries.installed);
    observer.expect_bot_join();

    let before = observer.status();
    assert_eq!((before.version.as_str(), before.lines), (VERSION, 1));

    binaries.replace_with(Path::new(env!("CARGO_BIN_EXE_ircbot-next")));
    let (report, elapsed) = observer.upgrade();
    assert_eq!(report.old_pid, before.pid, "{report:?}");
    assert_eq!(report.version, NEXT_VERSION, "{report:?}");
    bot.adopt(report.new_pid);
    bot.expect_gone(before.pid);

    let after = observer.status();
    assert_eq!(after.pid, report.new_pid, "{after:?}");
    assert_eq!(after.version, NEXT_VERSION, "{after:?}");
    assert_eq!((after.generation, after.lines), (2, 3), "{after:?}");
    observer.assert_bot_never_left_or_rejoined();
    report_latency("upgrade_runs_the_binary_renamed_over", &[elapsed]);
}

/// While the new build starts (held here until the test lets it go), the
/// old process goes on answering in the channel; then it hands over.
#[test]
fn the_bot_answers_while_a_slow_build_starts() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let binaries = Binaries::new("slow");
    let mut observer = Client::join(&server, ADMIN);
    let mut bot = Bot::start(&server, &binaries.installed);
    observer.expect_bot_join();
    let first = observer.status();

    let fifo = binaries.replace_with_held();
    observer.say("!upgrade");
    observer.expect_bot_says("upgrading…");
    // The new build has not even started; the old one answers.
    for lines in [3, 4] {
        let during = observer.status();
        assert_eq!(during.pid, first.pid, "{during:?}");
        assert_eq!((during.generation, during.lines), (1, lines), "{during:?}");
    }
    observer.say("!upgrade");
    observer.expect_bot_says("an upgrade is already under way");
    // Let it start: the open for writing releases its open for reading.
    let release = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let line = observer.wait_for("the upgrade's report", |line| line.source == BOT);
    drop(release);
    assert!(line.text.starts_with("upgraded "), "{line:?}");
    let after = observer.status();
    assert_ne!(after.pid, first.pid, "{after:?}");
    assert_eq!(after.version, NEXT_VERSION, "{after:?}");
    assert_eq!((after.generation, after.lines), (2, 6), "{after:?}");
    bot.adopt(after.pid);
    bot.expect_gone(first.pid);
    observer.assert_bot_never_left_or_rejoined();
}

#[test]
fn a_binary_that_fails_at_start_rolls_back_and_the_next_upgrade_succeeds() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let binaries = Binaries::new("broken");
    let mut observer = Client::join(&server, ADMIN);
    let mut bot = Bot::start(&server, &binaries.installed);
    observer.expect_bot_join();
    let first = observer.status();
    assert_eq!((first.generation, first.lines), (1, 1), "{first:?}");
    a_broken_build_rolls_back(
        "after_a_failed_upgrade",
        &mut observer,
        &mut bot,
        &binaries,
        &first,
    );
}

#[test]
fn a_non_admin_upgrade_is_refused_and_changes_nothing() {
    a_non_admin_is_refused("!upgrade");
}

#[test]
fn a_non_admin_rollback_is_refused_and_changes_nothing() {
    a_non_admin_is_refused("!rollback");
}

/// A stranger says `command`: the bot refuses, in the channel, and goes
/// on as before.
fn a_non_admin_is_refused(command: &str) {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let mut observer = Client::join(&server, ADMIN);
    let mut stranger = Client::join(&server, "stranger");
    let _bot = Bot::start(&server, Path::new(env!("CARGO_BIN_EXE_ircbot")));
    observer.expect_bot_join();
    let before = observer.status();

    stranger.say(command);
    let refusal = stranger.wait_for("the bot's refusal", |line| {
        line.source == BOT && line.text.starts_with("sorry")
    });
    assert_eq!(refusal.text, "sorry stranger, only an admin may upgrade me");

    let after = observer.status();
    assert_eq!(after.pid, before.pid, "{after:?}");
    assert_eq!((after.generation, after.lines), (1, 3), "{after:?}");
    // The observer saw the refusal, and nothing else from the bot, between
    // the two statuses.
    let said: Vec<&str> = observer
        .seen
        .iter()
        .filter(|line| line.source == BOT && line.command == "PRIVMSG")
        .map(|line| line.text.as_str())
        .collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert_eq!(said[1], refusal.text);
    observer.assert_bot_never_left_or_rejoined();
}

/// The file the generation `pid` runs, by the kernel's handle to it:
/// its inode, and how many names it has on disk.
fn running_file(pid: u32) -> (u64, u64) {
    let file = fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    (file.ino(), file.nlink())
}

/// v1 runs from a file of its own; v2 is renamed over it, so that v1's
/// file has no name left on disk. `!upgrade` runs v2; `!rollback` then runs
/// v1 again, from the handle each generation keeps to its predecessor's
/// build, on the same connection and with the counters. The process it
/// starts upgrades from the installed path again.
#[test]
fn rollback_goes_back_to_the_previous_build_after_its_file_is_gone() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let binaries = Binaries::new("rollback");
    binaries.replace_with_copy(Path::new(env!("CARGO_BIN_EXE_ircbot")));
    let v1 = fs::metadata(&binaries.installed).unwrap().ino();
    let mut observer = Client::join(&server, ADMIN);
    let mut bot = Bot::start(&server, &binaries.installed);
    observer.expect_bot_join();
    let first = observer.status();
    assert_eq!(
        (first.version.as_str(), first.generation, first.lines),
        (VERSION, 1, 1),
        "{first:?}"
    );
    assert_eq!(running_file(first.pid), (v1, 1));

    binaries.replace_with(Path::new(env!("CARGO_BIN_EXE_ircbot-next")));
    // Only the running process holds v1's file now.
    assert_eq!(running_file(first.pid), (v1, 0));
    let (upgraded, _) = observer.upgrade();
    assert_eq!(
        (
            upgraded.old_pid,
            upgraded.generation,
            upgraded.version.as_str()
        ),
        (first.pid, 2, NEXT_VERSION),
        "{upgraded:?}"
    );
    bot.adopt(upgraded.new_pid);
    bot.expect_gone(first.pid);

    let (back, elapsed) = observer.rollback();
    assert_eq!(
        (back.old_pid, back.generation, back.version.as_str()),
        (upgraded.new_pid, 3, VERSION),
        "{back:?}"
    );
    bot.adopt(back.new_pid);
    bot.expect_gone(upgraded.new_pid);
    // The very file v1 ran from, which has no name on disk.
    assert_eq!(running_file(back.new_pid), (v1, 0));
    let after = observer.status();
    assert_eq!(after.pid, back.new_pid, "{after:?}");
    assert_eq!(after.version, VERSION, "{after:?}");
    // !status, !upgrade, !rollback, !status: the count crossed both.
    assert_eq!((after.generation, after.lines), (3, 4), "{after:?}");
    observer.assert_bot_never_left_or_rejoined();
    eprintln!(
        "rollback_goes_back: !rollback to upgraded in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );

    // v1, started from the handle, upgrades from the installed path as the
    // first generation did: to v2 again.
    let (again, _) = observer.upgrade();
    assert_eq!(
        (again.old_pid, again.generation, again.version.as_str()),
        (back.new_pid, 4, NEXT_VERSION),
        "{again:?}"
    );
    bot.adopt(again.new_pid);
    bot.expect_gone(back.new_pid);
    observer.assert_bot_never_left_or_rejoined();
}

/// A bot that started fresh has no previous build: `!rollback` says so with
/// the library's reason, and the bot carries on, on the same connection.
#[test]
fn rollback_without_a_previous_build_says_why_and_the_bot_carries_on() {
    let Some(server) = Ngircd::start() else {
        return;
    };
    let mut observer = Client::join(&server, ADMIN);
    let _bot = Bot::start(&server, Path::new(env!("CARGO_BIN_EXE_ircbot")));
    observer.expect_bot_join();
    let before = observer.status();

    observer.say("!rollback");
    observer.expect_bot_says("going back to the previous build…");
    observer.expect_bot_says(&format!(
        "upgrade failed: {}",
        mitosis::Error::NoPreviousBinary
    ));

    let after = observer.status();
    assert_eq!(after.pid, before.pid, "{after:?}");
    assert_eq!(after.version, VERSION, "{after:?}");
    assert_eq!((after.generation, after.lines), (1, 3), "{after:?}");
    observer.assert_bot_never_left_or_rejoined();
}
