//! State migrations between binaries whose state types differ: v1
//! (`testdata`), v2 (`testdata-migrate-v2`: a field renamed, one added),
//! v3 (`testdata-migrate-v3`: migrates from v2, and through it from v1), and
//! binaries without the migration a state needs, which must refuse it and
//! leave the old process serving.

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpStream;

use common::*;
use mitosis::{Handover, Schema, Shapes};
use testdata::{State, nomigrate, schema2, v2, v3};

/// Sends `command`, expects it to be refused at the schema offer, and checks
/// the failed child is gone and reaped. Returns the `split failed` line.
fn failed_split(run: &mut Run, peer: &mut Peer, command: &str) -> String {
    let line = peer.command(command);
    failed_and_reaped(run, &line);
    assert!(
        line.contains("| step=step 4 (schema offer) |"),
        "refused at the schema offer, before any state was sent: {line:?}"
    );
    line
}

/// The fields of `status` that must survive any handover.
fn assert_kept(before: &str, after: &str) {
    for key in ["label", "blob"] {
        assert_eq!(
            field(after, key),
            field(before, key),
            "{key} survived: {before:?} -> {after:?}"
        );
    }
}

/// What a visitor to the (handed-over) listener is told.
fn greeting(run: &Run) -> String {
    let mut visitor = TcpStream::connect(("127.0.0.1", run.port)).expect("connect a visitor");
    visitor.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut greeting = String::new();
    visitor
        .read_to_string(&mut greeting)
        .expect("read the greeting");
    greeting
}

/// What a handover compares for `S`.
fn schema<S: Handover>() -> Schema {
    Schema::of::<S>().unwrap()
}

/// The exact start of a schema mismatch message, as both processes print it.
fn mismatch(sent: Schema, accepted: &[Schema]) -> String {
    let accepted: Vec<String> = accepted.iter().map(Schema::to_string).collect();
    format!(
        "state schema mismatch: the old process has {sent}, the new process accepts {};",
        accepted.join(", ")
    )
}

/// Checks that both sides of a refused split name the same schemas, in the
/// same words.
fn assert_refused(run: &mut Run, line: &str, sent: Schema, accepted: &[Schema]) {
    let expected = mismatch(sent, accepted);
    assert!(
        line.starts_with(&format!("split failed: {expected}")),
        "the old process names both sides:\n  {line}\nexpected it to start with\n  \
         split failed: {expected}"
    );
    let init = run.stderr.expect("init error:");
    assert!(
        init.starts_with(&format!("init error: {expected}")),
        "the new process names both sides:\n  {init}\nexpected\n  init error: {expected}"
    );
}

/// The old process serves on as before: same pid, same generation, same
/// version, same blob, and the conversation goes on.
fn still_serving(run: &Run, peer: &mut Peer, before: &str) {
    let now = status(peer);
    assert_eq!(now, before, "the status is unchanged after the refusal");
    assert_eq!(field(&now, "pid"), run.first_pid.to_string(), "{now:?}");
    assert_eq!(peer.command("ping still"), "pong still");
}

// ---------------------------------------------------------------------------
// The schemas, in this process

#[test]
fn verbatim_copies_have_the_original_fingerprints() {
    let v1 = schema::<State>();
    assert_eq!((v1.name.as_ref(), v1.version), (testdata::STATE_NAME, 1));
    assert_eq!(schema::<v2::StateV1>(), v1, "migrate-v2's copy of v1");
    assert_eq!(schema::<v3::StateV1>(), v1, "migrate-v3's copy of v1");
    assert_eq!(
        schema::<v3::StateV2>(),
        schema::<v2::State>(),
        "migrate-v3's copy of v2"
    );
    assert_eq!(
        schema::<nomigrate::State>(),
        schema::<v2::State>(),
        "the same definition without migrate_from has the same fingerprint"
    );
    assert_eq!(
        (
            schema::<v2::State>().name.as_ref(),
            schema::<v2::State>().version
        ),
        (testdata::STATE_NAME, 2)
    );
    assert_eq!(
        (
            schema::<v3::State>().name.as_ref(),
            schema::<v3::State>().version
        ),
        (testdata::STATE_NAME, 3)
    );

    let schema2 = schema::<schema2::State>();
    assert_eq!(
        (schema2.name.as_ref(), schema2.version),
        (testdata::STATE_NAME, 2)
    );
    assert_ne!(
        schema2.fingerprint, v1.fingerprint,
        "v1's fields, but version 2"
    );
    assert_ne!(
        schema2.fingerprint,
        schema::<v2::State>().fingerprint,
        "both say v2, but their fields differ"
    );

    assert_eq!(
        State::accepted(&mut Shapes::new()).unwrap(),
        std::slice::from_ref(&v1)
    );
    assert_eq!(
        v2::State::accepted(&mut Shapes::new()).unwrap(),
        [schema::<v2::State>(), v1.clone()]
    );
    assert_eq!(
        v3::State::accepted(&mut Shapes::new()).unwrap(),
        [schema::<v3::State>(), schema::<v2::State>(), v1.clone()],
        "v3 accepts v2 and, through v2's migration, v1; newest first"
    );
    assert_eq!(
        nomigrate::State::accepted(&mut Shapes::new()).unwrap(),
        [schema::<v2::State>()]
    );
    assert_eq!(
        schema2::State::accepted(&mut Shapes::new()).unwrap(),
        [schema2]
    );
}

// ---------------------------------------------------------------------------
// Migrations that work

#[test]
fn migrates_v1_to_v2() {
    let (mut run, mut peer) = Spawn::new("migrate-v1-v2")
        .args(&["--blob-size", "100003", "--label", "kept"])
        .start();
    assert_eq!(peer.command("ping one"), "pong one");
    let before = status(&mut peer);
    assert_eq!(field(&before, "version"), "v1", "{before:?}");
    assert_eq!(field(&before, "generation"), "1", "{before:?}");
    assert_eq!(
        try_field(&before, "note"),
        None,
        "v1 has no note: {before:?}"
    );

    // The rebuild: the v2 binary renamed over the running v1 one.
    let fresh = run.install(TESTDATA_MIGRATE_V2, "testdata.new");
    fs::rename(&fresh, &run.binary).expect("rename the v2 binary over the v1 one");

    // Half a command rides along in the peer buffer.
    let ready = split_to_ready(&mut run, &mut peer, "split", "ping ha", 2);
    assert_eq!(
        field(&ready, "version"),
        "m2",
        "the v2 binary runs: {ready:?}"
    );
    peer.send("lf\n");
    assert_eq!(peer.line(), "pong half", "the conversation continues");

    let after = status(&mut peer);
    assert_eq!(field(&after, "pid"), field(&ready, "pid"));
    assert_eq!(
        field(&after, "generation"),
        "2",
        "v1's generation, renamed epoch in v2, carried the old value: {after:?}"
    );
    assert_eq!(
        field(&after, "note"),
        "v1>v2",
        "the added field has its migration value: {after:?}"
    );
    assert_kept(&before, &after);

    // The listener and the log file came through the migration too.
    let new_pid = field(&ready, "pid");
    assert_eq!(
        greeting(&run),
        format!("hello generation=2 pid={new_pid}\n")
    );
    let log = fs::read_to_string(&run.log).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            format!("generation 1 pid {} version v1", run.first_pid),
            format!("generation 2 pid {new_pid} version m2"),
        ]
    );
}

#[test]
fn migrates_v1_to_v3_through_the_chain() {
    let (mut run, mut peer) = Spawn::new("migrate-v1-v3")
        .args(&["--blob-size", "70001", "--label", "chain"])
        .start();
    let before = status(&mut peer);
    let v3 = run.install(TESTDATA_MIGRATE_V3, "testdata-migrate-v3");
    let ready = split_to_ready(
        &mut run,
        &mut peer,
        &format!("split binary={}", v3.display()),
        "ping cha",
        2,
    );
    assert_eq!(field(&ready, "version"), "m3", "{ready:?}");
    peer.send("in\n");
    assert_eq!(peer.line(), "pong chain");
    let after = status(&mut peer);
    assert_eq!(field(&after, "generation"), "2", "{after:?}");
    assert_eq!(
        field(&after, "note"),
        "v1>v2>v3",
        "v1 became v2 with v2's migration, then v3 with v3's: {after:?}"
    );
    assert_kept(&before, &after);
    let new_pid = field(&ready, "pid");
    assert_eq!(
        greeting(&run),
        format!("hello generation=2 pid={new_pid}\n")
    );

    // The v3 process hands over to its own binary: no migration runs.
    let again = split_to_ready(&mut run, &mut peer, "split", "", 3);
    assert_eq!(field(&again, "version"), "m3", "{again:?}");
    let last = status(&mut peer);
    assert_eq!(field(&last, "note"), "v1>v2>v3", "{last:?}");
    assert_kept(&before, &last);
}

#[test]
fn migrates_v2_to_v3() {
    let (mut run, mut peer) = Spawn::new("migrate-v2-v3")
        .binary(TESTDATA_MIGRATE_V2)
        .args(&["--label", "two"])
        .start();
    let before = status(&mut peer);
    assert_eq!(field(&before, "version"), "m2", "{before:?}");
    assert_eq!(field(&before, "note"), "v2", "a fresh v2 state: {before:?}");
    let v3 = run.install(TESTDATA_MIGRATE_V3, "testdata-migrate-v3");
    let ready = split_to_ready(
        &mut run,
        &mut peer,
        &format!("split binary={}", v3.display()),
        "",
        2,
    );
    assert_eq!(field(&ready, "version"), "m3", "{ready:?}");
    let after = status(&mut peer);
    assert_eq!(field(&after, "note"), "v2>v3", "{after:?}");
    assert_eq!(field(&after, "generation"), "2", "{after:?}");
    assert_kept(&before, &after);
}

#[test]
fn v2_process_splits_into_a_v2_binary() {
    let (mut run, mut peer) = Spawn::new("v2-v2")
        .binary(TESTDATA_MIGRATE_V2)
        .args(&["--blob-size", "4099", "--label", "same"])
        .start();
    let before = status(&mut peer);

    // Into its own binary.
    let ready = split_to_ready(&mut run, &mut peer, "split", "", 2);
    assert_eq!(field(&ready, "version"), "m2", "{ready:?}");
    let second = status(&mut peer);
    assert_eq!(field(&second, "note"), "v2", "no migration ran: {second:?}");
    assert_kept(&before, &second);

    // Into a separately built v2 binary whose type is written the same way
    // but has no migrations: same fingerprint, so it takes the state.
    let nomigrate = run.install(TESTDATA_NOMIGRATE, "testdata-nomigrate");
    let ready = split_to_ready(
        &mut run,
        &mut peer,
        &format!("split binary={}", nomigrate.display()),
        "",
        3,
    );
    assert_eq!(field(&ready, "version"), "n2", "{ready:?}");
    let third = status(&mut peer);
    assert_eq!(field(&third, "note"), "v2", "{third:?}");
    assert_eq!(field(&third, "generation"), "3", "{third:?}");
    assert_kept(&before, &third);
    assert_eq!(peer.command("ping v2"), "pong v2");
}

// ---------------------------------------------------------------------------
// Refusals

#[test]
fn missing_migration_is_refused_and_rolls_back() {
    let (mut run, mut peer) = Spawn::new("missing-migration")
        .args(&["--blob-size", "5000", "--label", "stay"])
        .start();
    let before = status(&mut peer);
    let nomigrate = run.install(TESTDATA_NOMIGRATE, "testdata-nomigrate");
    let line = failed_split(
        &mut run,
        &mut peer,
        &format!("split binary={}", nomigrate.display()),
    );
    assert!(
        line.contains("testdata::State v1 (") && line.contains("testdata::State v2 ("),
        "{line:?}"
    );
    assert_refused(
        &mut run,
        &line,
        schema::<State>(),
        &[schema::<nomigrate::State>()],
    );
    still_serving(&run, &mut peer, &before);

    // The state came back whole: it migrates to a binary that can take it.
    let v2 = run.install(TESTDATA_MIGRATE_V2, "testdata-migrate-v2");
    let ready = split_to_ready(
        &mut run,
        &mut peer,
        &format!("split binary={}", v2.display()),
        "",
        2,
    );
    assert_eq!(field(&ready, "version"), "m2");
    let after = status(&mut peer);
    assert_eq!(field(&after, "note"), "v1>v2", "{after:?}");
    assert_kept(&before, &after);
}

#[test]
fn same_version_with_other_fields_is_refused() {
    // Both say `testdata::State v2`, but schema2's fields are v1's.
    let (mut run, mut peer) = Spawn::new("same-version")
        .binary(TESTDATA_NOMIGRATE)
        .start();
    let before = status(&mut peer);
    let schema2 = run.install(TESTDATA_SCHEMA2, "testdata-schema2");
    let line = failed_split(
        &mut run,
        &mut peer,
        &format!("split binary={}", schema2.display()),
    );
    assert_refused(
        &mut run,
        &line,
        schema::<nomigrate::State>(),
        &[schema::<schema2::State>()],
    );
    still_serving(&run, &mut peer, &before);
}

#[test]
fn older_binary_refuses_a_newer_state() {
    // A rollback of the binary: v1 does not know v2.
    let (mut run, mut peer) = Spawn::new("downgrade").binary(TESTDATA_MIGRATE_V2).start();
    let before = status(&mut peer);
    let v1 = run.install(TESTDATA, "testdata-v1");
    let line = failed_split(
        &mut run,
        &mut peer,
        &format!("split binary={}", v1.display()),
    );
    assert_refused(&mut run, &line, schema::<v2::State>(), &[schema::<State>()]);
    still_serving(&run, &mut peer, &before);
}

#[test]
fn refusal_lists_every_accepted_schema() {
    // schema2's state is none of v3, v2, v1: the new process offered all
    // three, and both sides say so.
    let (mut run, mut peer) = Spawn::new("offer-list").binary(TESTDATA_SCHEMA2).start();
    let before = status(&mut peer);
    let v3 = run.install(TESTDATA_MIGRATE_V3, "testdata-migrate-v3");
    let line = failed_split(
        &mut run,
        &mut peer,
        &format!("split binary={}", v3.display()),
    );
    assert_refused(
        &mut run,
        &line,
        schema::<schema2::State>(),
        &[
            schema::<v3::State>(),
            schema::<v2::State>(),
            schema::<State>(),
        ],
    );
    still_serving(&run, &mut peer, &before);
}
