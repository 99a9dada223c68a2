//! The IRC bot against a real IRC server: ngircd from Debian, one per test,
//! on a free loopback port. An observer and a flooder join the bot's
//! channel; the observer sends the commands and watches what the bot does.
//!
//! Without ngircd these tests skip with a reason, except under `CI=true`,
//! where they fail: `.ci/run` installs it.

mod irc_support;

use std::fs;
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
    let Some(server) = Ngircd::start() else {
        return;
    };
    let mut observer = Client::join(&server, ADMIN);
    let mut stranger = Client::join(&server, "stranger");
    let _bot = Bot::start(&server, Path::new(env!("CARGO_BIN_EXE_ircbot")));
    observer.expect_bot_join();
    let before = observer.status();

    stranger.say("!upgrade");
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
