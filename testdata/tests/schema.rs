//! Schema fidelity (issue 12): the fingerprint compared at the schema offer
//! (PROTOCOL.md, step 4) must describe the encoding of the plain serde types
//! inside a state, not how their names are written.
//!
//! Each test runs a real old process (one of the `testdata-shape-*` builds,
//! see src/shape.rs) and splits it into another build (`split
//! binary=<path>`), whose nested types differ from the old one's in one
//! way:
//!
//! - a change in what postcard writes (fields swapped, a field widened,
//!   added or removed, an enum variant inserted, at the top of a serde type
//!   or deep inside `Option`/`Vec`/`BTreeMap`, in another crate) must be
//!   refused at step 4, both processes must name the difference, and the
//!   old process must serve on with its values intact;
//! - the same types spelled otherwise, or copied into another module, must
//!   be accepted, the values arriving intact;
//! - a type whose shape serde cannot describe from the type alone
//!   (`#[serde(untagged)]`, `deserialize_any`) must make the split fail,
//!   naming the type, with the old process serving on;
//! - a state evolved in place (`testdata-evolve-v1`..`-v3`: a field added
//!   with `#[handover(since = 2, default)]`, one removed with the
//!   container's `removed(...)`) must be taken by every later version,
//!   without copies of the older definitions.
//!
//! Differences are named as `field '<path>': ...` or `variant '<path>':
//! ...`, the path being dot-separated from the state's top and positions
//! 1-based among a struct's sent fields (or an enum's variants). The tests
//! look for those fragments with `contains`, not for whole lines.

mod common;

use common::*;

const SHAPE_BASE: &str = env!("CARGO_BIN_EXE_testdata-shape-base");
const SHAPE_TWIN: &str = env!("CARGO_BIN_EXE_testdata-shape-twin");
const SHAPE_SWAPPED: &str = env!("CARGO_BIN_EXE_testdata-shape-swapped");
const SHAPE_WIDENED: &str = env!("CARGO_BIN_EXE_testdata-shape-widened");
const SHAPE_ADDED: &str = env!("CARGO_BIN_EXE_testdata-shape-added");
const SHAPE_VARIANT: &str = env!("CARGO_BIN_EXE_testdata-shape-variant");
const SHAPE_SPELLED: &str = env!("CARGO_BIN_EXE_testdata-shape-spelled");
const SHAPE_UNTAGGED: &str = env!("CARGO_BIN_EXE_testdata-shape-untagged");
const SHAPE_ANY: &str = env!("CARGO_BIN_EXE_testdata-shape-any");
const SHAPE_DEEP_A: &str = env!("CARGO_BIN_EXE_testdata-shape-deep-a");
const SHAPE_DEEP_B: &str = env!("CARGO_BIN_EXE_testdata-shape-deep-b");
const EVOLVE_V1: &str = env!("CARGO_BIN_EXE_testdata-evolve-v1");
const EVOLVE_V2: &str = env!("CARGO_BIN_EXE_testdata-evolve-v2");
const EVOLVE_V3: &str = env!("CARGO_BIN_EXE_testdata-evolve-v3");

/// What a fresh `testdata-shape-*` state holds (src/shape.rs), as `status`
/// reports it.
const FRESH: [(&str, &str); 3] = [
    ("config.alpha", "11"),
    ("config.beta", "22"),
    ("mode", "Blue"),
];

/// What a fresh `testdata-shape-deep-*` state holds.
const FRESH_DEEP: &str = "[{first:seven/7,second:big/300},{}]";

// ---------------------------------------------------------------------------
// Helpers

/// Starts `binary` with a recognisable label and blob, and checks its fresh
/// values.
fn start(name: &str, binary: &'static str) -> (Run, Peer, String) {
    let (run, mut peer) = Spawn::new(name)
        .binary(binary)
        .args(&["--blob-size", "3001", "--label", name])
        .start();
    let before = status(&mut peer);
    assert_eq!(field(&before, "generation"), "1", "{before:?}");
    (run, peer, before)
}

/// Checks that `status` holds each `key=value` of `expected`.
fn assert_values(status: &str, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            try_field(status, key),
            Some(*value),
            "{key} is {value}: {status:?}"
        );
    }
}

/// The fields of `status` that every handover must carry unchanged.
fn assert_kept(before: &str, after: &str, keys: &[&str]) {
    for key in ["label", "blob"].iter().chain(keys) {
        assert_eq!(
            try_field(after, key),
            try_field(before, key),
            "{key} survived: {before:?} -> {after:?}"
        );
    }
}

/// Splits into `binary` (installed as `name`), a build that must refuse the
/// old process's state at the schema offer. Checks the refusal, that the
/// new process is gone and reaped, and returns the old process's
/// `split failed` line and the new process's `init error` line.
///
/// If the new build takes the state instead, the test fails with what the
/// new build made of it (its `status`).
fn refused(run: &mut Run, peer: &mut Peer, binary: &str, name: &str) -> (String, String) {
    let path = run.install(binary, name);
    let line = peer.command(&format!("split binary={}", path.display()));
    if line.starts_with("ready ") {
        let taken = status(peer);
        panic!(
            "{name} took the state instead of refusing it at the schema offer: {line:?}\n  \
             what it decoded: {taken:?}"
        );
    }
    failed_and_reaped(run, &line);
    assert!(
        line.contains("schema mismatch") && line.contains("| step=step 4 (schema offer) |"),
        "refused as a schema mismatch at the schema offer, before any state was sent: {line:?}"
    );
    let init = run.stderr.expect("init error:");
    assert!(
        init.contains("schema mismatch"),
        "the new process reports the schema mismatch: {init:?}"
    );
    (line, init)
}

/// Checks that both processes' errors name the difference `fragment`.
fn both_name(split: &str, init: &str, fragment: &str) {
    assert!(
        split.contains(fragment),
        "the old process names the difference {fragment:?}:\n  {split}"
    );
    assert!(
        init.contains(fragment),
        "the new process names the difference {fragment:?}:\n  {init}"
    );
}

/// The old process serves on as before: same pid, same status (so the same
/// nested values), and the conversation goes on.
fn still_serving(run: &Run, peer: &mut Peer, before: &str) {
    let now = status(peer);
    assert_eq!(now, before, "the status is unchanged after the refusal");
    assert_eq!(field(&now, "pid"), run.first_pid.to_string(), "{now:?}");
    assert_eq!(peer.command("ping still"), "pong still");
}

/// Splits into `binary` (installed as `name`), a build that must accept the
/// state, and returns the new generation's status.
fn accepted(run: &mut Run, peer: &mut Peer, binary: &str, name: &str, generation: u32) -> String {
    let path = run.install(binary, name);
    let ready = split_to_ready(
        run,
        peer,
        &format!("split binary={}", path.display()),
        "",
        generation,
    );
    assert_eq!(field(&ready, "version"), name, "{name} runs: {ready:?}");
    let after = status(peer);
    assert_eq!(field(&after, "pid"), field(&ready, "pid"), "{after:?}");
    after
}

/// Splits with `command` and expects the split to fail, whether refused
/// before a new process ran (`split refused:`) or failed with the new
/// process gone (`split failed:`). Returns the answer.
fn split_fails(run: &mut Run, peer: &mut Peer, command: &str) -> String {
    let line = peer.command(command);
    if line.starts_with("ready ") {
        let taken = status(peer);
        panic!("a new process took the state: {line:?}\n  what it decoded: {taken:?}");
    }
    if line.starts_with("split failed: ") {
        let child: u32 = field(&run.stdout.expect("splitting child="), "child")
            .parse()
            .unwrap();
        assert_eq!(field(&line, "children"), "none", "reaped: {line:?}");
        assert!(
            is_gone(child, run.first_pid),
            "the failed child {child} is gone"
        );
    } else {
        assert!(
            line.starts_with("split refused: "),
            "expected the split to fail, got {line:?}"
        );
    }
    line
}

/// Checks that `error` says that `type_name` (its last path segment at
/// least) cannot be traced.
fn names_untraceable(error: &str, type_name: &str) {
    assert!(
        error.contains("cannot be traced") && error.contains(type_name),
        "the error says that {type_name} cannot be traced:\n  {error}"
    );
}

// ---------------------------------------------------------------------------
// Accepted: the same encoding

/// The control for every refusal below: a build whose nested types are the
/// same definitions, copied into another module, takes the state with
/// every value intact, and hands it back.
#[test]
fn an_identical_definition_built_separately_is_accepted() {
    let (mut run, mut peer, before) = start("shape-twin", SHAPE_BASE);
    assert_values(&before, &FRESH);
    let after = accepted(&mut run, &mut peer, SHAPE_TWIN, "twin", 2);
    assert_values(&after, &FRESH);
    assert_kept(&before, &after, &[]);
    let back = accepted(&mut run, &mut peer, SHAPE_BASE, "base", 3);
    assert_values(&back, &FRESH);
    assert_kept(&before, &back, &[]);
}

/// Issue 12, 2: the fingerprint does not depend on how a type's path is
/// written. `listener: TcpListener` and `listener: std::net::TcpListener`,
/// in the same position, are one type.
#[test]
fn a_type_spelled_as_a_path_is_the_same_type() {
    let (mut run, mut peer, before) = start("shape-spelled", SHAPE_BASE);
    let after = accepted(&mut run, &mut peer, SHAPE_SPELLED, "spelled", 2);
    assert_values(&after, &FRESH);
    assert_kept(&before, &after, &[]);
    assert_eq!(peer.command("ping spelled"), "pong spelled");

    // And back: the other direction is the same comparison.
    let back = accepted(&mut run, &mut peer, SHAPE_BASE, "base", 3);
    assert_values(&back, &FRESH);
    assert_kept(&before, &back, &[]);
}

// ---------------------------------------------------------------------------
// Refused: the encoding changed inside a serde type (issue 12, 1 and 3)

/// `Config { alpha, beta }` becomes `Config { beta, alpha }`: both u32, so
/// postcard would decode the old bytes "fine", with the values swapped.
#[test]
fn swapped_fields_of_a_serde_struct_are_refused_and_named() {
    let (mut run, mut peer, before) = start("shape-swapped", SHAPE_BASE);
    assert_values(&before, &FRESH);
    let (split, init) = refused(&mut run, &mut peer, SHAPE_SWAPPED, "swapped");
    both_name(
        &split,
        &init,
        "field 'config.beta': was u32 at position 2, now position 1",
    );
    still_serving(&run, &mut peer, &before);

    // The state came back whole: a build that can take it gets the values
    // where they were.
    let after = accepted(&mut run, &mut peer, SHAPE_TWIN, "twin", 2);
    assert_values(&after, &FRESH);
    assert_kept(&before, &after, &[]);
}

/// `Config::alpha` widened from u32 to u64.
#[test]
fn a_widened_field_of_a_serde_struct_is_refused_and_named() {
    let (mut run, mut peer, before) = start("shape-widened", SHAPE_BASE);
    let (split, init) = refused(&mut run, &mut peer, SHAPE_WIDENED, "widened");
    both_name(&split, &init, "field 'config.alpha': was u32, now u64");
    still_serving(&run, &mut peer, &before);
    let after = accepted(&mut run, &mut peer, SHAPE_TWIN, "twin", 2);
    assert_values(&after, &FRESH);
}

/// `Config` gains `gamma: u32` as its third field, and, from a process
/// that has it, loses it again.
#[test]
fn added_and_removed_fields_of_a_serde_struct_are_refused_and_named() {
    let (mut run, mut peer, before) = start("shape-added", SHAPE_BASE);
    let (split, init) = refused(&mut run, &mut peer, SHAPE_ADDED, "added");
    both_name(
        &split,
        &init,
        "field 'config.gamma': added (u32) at position 3",
    );
    still_serving(&run, &mut peer, &before);
    drop(peer);
    drop(run);

    let (mut run, mut peer, before) = start("shape-removed", SHAPE_ADDED);
    assert_values(&before, &FRESH);
    assert_values(&before, &[("config.gamma", "33")]);
    let (split, init) = refused(&mut run, &mut peer, SHAPE_BASE, "base");
    both_name(
        &split,
        &init,
        "field 'config.gamma': removed (was u32 at position 3)",
    );
    still_serving(&run, &mut peer, &before);
}

/// `Mode { Red, Blue }` becomes `Mode { Red, Green, Blue }`: the old
/// process's `Blue` is variant 1, which the new build would read as
/// `Green`.
#[test]
fn a_variant_inserted_into_a_serde_enum_is_refused_and_named() {
    let (mut run, mut peer, before) = start("shape-variant", SHAPE_BASE);
    let (split, init) = refused(&mut run, &mut peer, SHAPE_VARIANT, "variant");
    both_name(&split, &init, "variant 'mode.Green': added at position 2");
    both_name(
        &split,
        &init,
        "variant 'mode.Blue': was at position 2, now position 3",
    );
    still_serving(&run, &mut peer, &before);
    let after = accepted(&mut run, &mut peer, SHAPE_TWIN, "twin", 2);
    assert_values(&after, &FRESH);
}

/// The state is defined in the binary's crate; the changed type lives in
/// the library crate, inside `Option<Vec<BTreeMap<String, Inner>>>`, and
/// widens its `weight` from u32 to u64.
#[test]
fn a_change_deep_in_options_vecs_and_maps_of_another_crate_is_refused() {
    let (mut run, mut peer, before) = start("shape-deep", SHAPE_DEEP_A);
    assert_eq!(field(&before, "deep"), FRESH_DEEP, "{before:?}");
    let (split, init) = refused(&mut run, &mut peer, SHAPE_DEEP_B, "deep-b");
    both_name(&split, &init, "weight': was u32, now u64");
    both_name(&split, &init, "field 'deep.");
    still_serving(&run, &mut peer, &before);

    // The control: a copy of the same build takes it, deep values intact.
    let after = accepted(&mut run, &mut peer, SHAPE_DEEP_A, "deep-a", 2);
    assert_eq!(field(&after, "deep"), FRESH_DEEP, "{after:?}");
    assert_kept(&before, &after, &[]);
}

// ---------------------------------------------------------------------------
// Untraceable types fail closed (issue 12, 4)

/// The old process holds a `#[serde(untagged)]` enum: no handover, even
/// into its own binary, and the error names the type.
#[test]
fn an_untagged_enum_in_the_state_cannot_be_traced() {
    let (mut run, mut peer, before) = start("shape-untagged", SHAPE_UNTAGGED);
    assert_values(&before, &[("setting", "Number(5)")]);
    let line = split_fails(&mut run, &mut peer, "split");
    names_untraceable(&line, "UntaggedSetting");
    still_serving(&run, &mut peer, &before);
}

/// The old process holds a type whose `Deserialize` calls
/// `deserialize_any`.
#[test]
fn a_deserialize_any_type_in_the_state_cannot_be_traced() {
    let (mut run, mut peer, before) = start("shape-any", SHAPE_ANY);
    assert_values(&before, &[("value", "6")]);
    let line = split_fails(&mut run, &mut peer, "split");
    names_untraceable(&line, "AnyShaped");
    still_serving(&run, &mut peer, &before);
}

/// The new build holds the untraceable type: it cannot say what it
/// accepts, so it takes nothing, and says why.
#[test]
fn a_new_build_with_an_untraceable_type_fails_closed() {
    for (binary, name, type_name) in [
        (SHAPE_UNTAGGED, "untagged", "UntaggedSetting"),
        (SHAPE_ANY, "any", "AnyShaped"),
    ] {
        let (mut run, mut peer, before) = start(&format!("shape-new-{name}"), SHAPE_BASE);
        let path = run.install(binary, name);
        split_fails(
            &mut run,
            &mut peer,
            &format!("split binary={}", path.display()),
        );
        let init = run.stderr.expect("init error:");
        names_untraceable(&init, type_name);
        still_serving(&run, &mut peer, &before);
    }
}

// ---------------------------------------------------------------------------
// Evolving a state in place (issue 12, 5)

/// v1 → v2 → v3, then v3 into its own binary: `count` appears with its
/// default, `legacy` disappears, and `generation` and `nick` go through.
#[test]
fn a_state_evolves_in_place_from_1_through_2_to_3() {
    let (mut run, mut peer, before) = start("evolve-1-2-3", EVOLVE_V1);
    assert_values(&before, &[("nick", "nick-v1"), ("legacy", "7")]);
    assert_eq!(
        try_field(&before, "count"),
        None,
        "v1 has no count: {before:?}"
    );

    let v2 = accepted(&mut run, &mut peer, EVOLVE_V2, "evolve-v2", 2);
    assert_values(&v2, &[("nick", "nick-v1"), ("legacy", "7"), ("count", "0")]);
    assert_kept(&before, &v2, &[]);

    let v3 = accepted(&mut run, &mut peer, EVOLVE_V3, "evolve-v3", 3);
    assert_values(&v3, &[("nick", "nick-v1"), ("count", "0")]);
    assert_eq!(try_field(&v3, "legacy"), None, "v3 dropped legacy: {v3:?}");
    assert_kept(&before, &v3, &[]);

    let again = accepted(&mut run, &mut peer, EVOLVE_V3, "evolve-v3", 4);
    assert_values(&again, &[("nick", "nick-v1"), ("count", "0")]);
    assert_kept(&before, &again, &[]);
    assert_eq!(peer.command("ping evolved"), "pong evolved");
}

/// v1 straight to v3: the added field and the removed one at once.
#[test]
fn a_state_evolves_in_place_from_1_straight_to_3() {
    let (mut run, mut peer, before) = start("evolve-1-3", EVOLVE_V1);
    let v3 = accepted(&mut run, &mut peer, EVOLVE_V3, "evolve-v3", 2);
    assert_values(&v3, &[("nick", "nick-v1"), ("count", "0")]);
    assert_eq!(try_field(&v3, "legacy"), None, "v3 dropped legacy: {v3:?}");
    assert_kept(&before, &v3, &[]);
}

/// v2 to v3: `count` keeps the value it had, `legacy` is dropped.
#[test]
fn a_state_evolves_in_place_from_2_to_3() {
    let (mut run, mut peer, before) = start("evolve-2-3", EVOLVE_V2);
    assert_values(
        &before,
        &[("nick", "nick-v2"), ("legacy", "8"), ("count", "42")],
    );
    let v3 = accepted(&mut run, &mut peer, EVOLVE_V3, "evolve-v3", 2);
    assert_values(&v3, &[("nick", "nick-v2"), ("count", "42")]);
    assert_eq!(try_field(&v3, "legacy"), None, "v3 dropped legacy: {v3:?}");
    assert_kept(&before, &v3, &[]);
}
