//! Hostile and malformed bytes: every decoder on the wire, fed arbitrary
//! bytes and mutations of valid encodings (made by the real encoders), returns
//! an error and never panics. What it allocates grows with the bytes it was
//! given, never with a length or count those bytes claim, and stays within
//! the protocol's limits (PROTOCOL.md, "Frames" and "Limits").
//!
//! A counting global allocator records, for the current thread only, every
//! allocation a decoder makes while it runs, so that tests running in
//! parallel do not see each other's allocations.
#![deny(warnings)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use mitosis::testing::wire::{
    self, Frame, HEADER_LEN, HELLO_LEN, Kind, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD,
    MAX_STATE_BYTES, OUT_OF_LINE_BYTES, SECRET_LEN, WELCOME_LEN,
};
use mitosis::testing::{self as hooks, EncodedState};
use mitosis::{Error, Handover, Schema, Shape, Step};
use proptest::collection::{hash_map, vec};
use proptest::option;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// The counting allocator.

/// What the current thread allocated while [`measure`] ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stats {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    allocations: usize,
    /// The largest block asked for.
    largest: usize,
    /// Bytes allocated minus bytes freed since the start (freeing what was
    /// allocated before makes it negative).
    live: isize,
    /// The highest `live` reached.
    peak: isize,
}

impl Stats {
    const ZERO: Stats = Stats {
        allocations: 0,
        largest: 0,
        live: 0,
        peak: 0,
    };
}

thread_local! {
    /// `Some` while this thread is being measured. Const-initialised and
    /// without a destructor, so using it never allocates, even from inside
    /// the allocator.
    static STATS: Cell<Option<Stats>> = const { Cell::new(None) };
}

fn record(allocated: usize, freed: usize) {
    // `try_with`: a thread being torn down may still free memory.
    let _ = STATS.try_with(|cell| {
        if let Some(mut stats) = cell.get() {
            if allocated > 0 {
                stats.allocations += 1;
                stats.largest = stats.largest.max(allocated);
            }
            stats.live += allocated as isize - freed as isize;
            stats.peak = stats.peak.max(stats.live);
            cell.set(Some(stats));
        }
    });
}

/// The system allocator, counting.
struct Counting;

// SAFETY: every method passes its arguments unchanged to `System` and returns
// what `System` returned, so `System`'s guarantees hold for this allocator.
// The bookkeeping only reads and writes a const-initialised thread-local
// `Cell`, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (a
        // non-zero size), which is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(0, layout.size());
        // SAFETY: the caller guarantees that `ptr` came from this allocator,
        // that is from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size, layout.size());
        // SAFETY: the caller guarantees that `ptr` came from `System` with
        // `layout`, and that `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `run` and returns what it allocated on this thread.
fn measure<R>(run: impl FnOnce() -> R) -> (R, Stats) {
    STATS.with(|cell| cell.set(Some(Stats::ZERO)));
    let result = run();
    let stats = STATS.with(Cell::take).expect("measuring");
    (result, stats)
}

#[test]
fn the_allocator_counts_this_thread() {
    let (bytes, stats) = measure(|| vec![7u8; 1000]);
    assert_eq!(
        stats,
        Stats {
            allocations: 1,
            largest: 1000,
            live: 1000,
            peak: 1000
        }
    );
    let ((), stats) = measure(|| drop(bytes));
    assert_eq!((stats.allocations, stats.live), (0, -1000));
    let (_, stats) = measure(|| std::thread::spawn(|| vec![0u8; 5000]).join());
    assert!(
        stats.largest < 5000,
        "another thread's allocation: {stats:?}"
    );
}

// ---------------------------------------------------------------------------
// Mutations of valid encodings.

/// One change to a valid encoding. Positions wrap around its length.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

/// A postcard varint, as the state stream writes lengths and counts.
fn varint(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while value >= 0x80 {
        bytes.push(value as u8 | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
    bytes
}

/// Bytes that make a length or a count lie.
fn lies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(varint(u32::MAX.into())),
        Just(varint(MAX_STATE_BYTES)),
        Just(varint(u64::MAX)),
        Just(varint(OUT_OF_LINE_BYTES as u64)),
        Just(varint(OUT_OF_LINE_BYTES as u64 - 1)),
        Just(u32::MAX.to_le_bytes().to_vec()),
        Just(u16::MAX.to_le_bytes().to_vec()),
        Just(vec![0xff]),
        Just(vec![0x80]),
        Just(vec![0]),
        vec(any::<u8>(), 1..8),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set(at, byte)),
        3 => (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        2 => (any::<usize>(), lies()).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        2 => (any::<usize>(), 1..8usize).prop_map(|(at, n)| Edit::Remove(at, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ];
    vec(edit, 1..5)
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match edit {
            Edit::Set(at, byte) if len > 0 => bytes[at % len] = *byte,
            Edit::Flip(at, bit) if len > 0 => bytes[at % len] ^= 1 << bit,
            Edit::Insert(at, new) => {
                let at = at % (len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Edit::Remove(at, n) if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Truncate(at) => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

fn secret() -> impl Strategy<Value = [u8; SECRET_LEN]> {
    vec(any::<u8>(), SECRET_LEN).prop_map(|bytes| bytes.try_into().unwrap())
}

// ---------------------------------------------------------------------------
// Step 3: HELLO and WELCOME.

const MAGIC: &[u8; 8] = b"mitosis\0";

/// PROTOCOL.md's reading of the first bytes of a connection.
fn hello_by_the_book(
    secret: &[u8; SECRET_LEN],
    received: &[u8],
) -> Result<Option<(u16, u16)>, &'static str> {
    let hello = &received[..received.len().min(HELLO_LEN)];
    if !MAGIC.starts_with(&hello[..hello.len().min(8)]) {
        return Err("sent bytes that are not a mitosis HELLO");
    }
    if hello.len() < HELLO_LEN {
        return Ok(None);
    }
    if hello[12..] != secret[..32] {
        return Err("sent a HELLO with the wrong secret");
    }
    let u16_at = |i: usize| u16::from_le_bytes([hello[i], hello[i + 1]]);
    Ok(Some((u16_at(8), u16_at(10))))
}

/// Checks the old process's reading of `received` against the book; it
/// allocates nothing at all.
fn check_hello(secret: &[u8; SECRET_LEN], received: &[u8]) {
    let (got, stats) = measure(|| wire::parse_hello(secret, received));
    assert_eq!(got, hello_by_the_book(secret, received), "{received:02x?}");
    assert_eq!(stats.allocations, 0, "{stats:?}");
    if let Ok(Some(theirs)) = got {
        // This build speaks 1..=3: the highest version both speak, if any.
        let low = theirs.0.max(1);
        let high = theirs.1.min(3);
        assert_eq!(wire::choose_version(theirs), (low <= high).then_some(high));
    }
}

#[test]
fn a_hello_proves_the_secret_only_when_complete() {
    let secret = [7; SECRET_LEN];
    let hello = wire::hello(&secret);
    assert_eq!(&hello[..8], MAGIC);
    assert_eq!(wire::parse_hello(&secret, &hello), Ok(Some((1, 3))));
    for len in 0..HELLO_LEN {
        assert_eq!(wire::parse_hello(&secret, &hello[..len]), Ok(None), "{len}");
    }
    let mut wrong = hello;
    wrong[HELLO_LEN - 1] ^= 1;
    assert_eq!(
        wire::parse_hello(&secret, &wrong),
        Err("sent a HELLO with the wrong secret")
    );
    assert_eq!(
        wire::parse_hello(&secret, b"GET / HTTP/1.1\r\n"),
        Err("sent bytes that are not a mitosis HELLO")
    );
    // Refused at the first byte that is not the magic.
    assert_eq!(
        wire::parse_hello(&secret, b"mitx"),
        Err("sent bytes that are not a mitosis HELLO")
    );
}

/// PROTOCOL.md's reading of a WELCOME, as the new process makes it.
#[derive(Debug)]
enum WelcomeVerdict {
    Chosen(u16),
    WrongMagic,
    WrongToken,
    NoSharedVersion((u16, u16)),
    NeverOffered(u16),
}

fn welcome_by_the_book(secret: &[u8; SECRET_LEN], welcome: &[u8; WELCOME_LEN]) -> WelcomeVerdict {
    let u16_at = |i: usize| u16::from_le_bytes([welcome[i], welcome[i + 1]]);
    if welcome[..8] != MAGIC[..] {
        WelcomeVerdict::WrongMagic
    } else if welcome[14..] != secret[32..] {
        WelcomeVerdict::WrongToken
    } else if u16_at(8) == 0 {
        WelcomeVerdict::NoSharedVersion((u16_at(10), u16_at(12)))
    } else if !(1..=3).contains(&u16_at(8)) {
        WelcomeVerdict::NeverOffered(u16_at(8))
    } else {
        WelcomeVerdict::Chosen(u16_at(8))
    }
}

fn check_welcome(secret: &[u8; SECRET_LEN], welcome: &[u8; WELCOME_LEN]) {
    let (got, stats) = measure(|| wire::parse_welcome(secret, welcome));
    let verdict = welcome_by_the_book(secret, welcome);
    match (&verdict, &got) {
        (WelcomeVerdict::Chosen(v), Ok(chosen)) => {
            assert_eq!(chosen, v);
            assert_eq!(stats.allocations, 0, "{stats:?}");
        }
        (WelcomeVerdict::WrongMagic, Err(Error::Protocol { step, detail })) => {
            assert_eq!(*step, Step::Hello);
            assert!(detail.contains("wrong magic bytes"), "{detail}");
        }
        (WelcomeVerdict::WrongToken, Err(Error::Protocol { step, detail })) => {
            assert_eq!(*step, Step::Hello);
            assert!(detail.contains("did not prove the secret"), "{detail}");
        }
        (WelcomeVerdict::NoSharedVersion(range), Err(Error::ProtocolVersion { ours, theirs })) => {
            assert_eq!((*ours, theirs), ((1, 3), range));
        }
        (WelcomeVerdict::NeverOffered(v), Err(Error::Protocol { step, detail })) => {
            assert_eq!(*step, Step::Hello);
            assert!(
                detail.contains(&format!(
                    "chose version {v}, which this process never offered"
                )),
                "{detail}"
            );
        }
        _ => panic!("expected {verdict:?}, got {got:?} for {welcome:02x?}"),
    }
    // A refusal allocates its message and nothing else.
    assert!(stats.largest <= 256, "{stats:?}");
}

#[test]
fn a_welcome_is_checked_field_by_field() {
    let secret: [u8; SECRET_LEN] = std::array::from_fn(|i| i as u8);
    let welcome = wire::welcome(&secret, 1);
    assert_eq!(wire::parse_welcome(&secret, &welcome).unwrap(), 1);
    let mut other_token = welcome;
    other_token[WELCOME_LEN - 1] ^= 0x40;
    // Version 2 is this build's too; 3 it never offered.
    let mut chosen_two = welcome;
    chosen_two[8] = 2;
    assert_eq!(wire::parse_welcome(&secret, &chosen_two).unwrap(), 2);
    let mut chosen_three = welcome;
    chosen_three[8] = 3;
    assert_eq!(wire::parse_welcome(&secret, &chosen_three).unwrap(), 3);
    let mut chosen_four = welcome;
    chosen_four[8] = 4;
    for bad in [
        other_token,
        chosen_four,
        wire::welcome(&secret, 0),
        [0; WELCOME_LEN],
    ] {
        check_welcome(&secret, &bad);
        assert!(wire::parse_welcome(&secret, &bad).is_err());
    }
}

fn welcome_array(mut bytes: Vec<u8>) -> [u8; WELCOME_LEN] {
    bytes.resize(WELCOME_LEN, 0);
    bytes.try_into().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_first_bytes_never_pass_for_a_hello(
        secret in secret(),
        received in prop_oneof![
            vec(any::<u8>(), 0..=2 * HELLO_LEN),
            // Past the magic, so that the token check is reached.
            vec(any::<u8>(), 0..=HELLO_LEN).prop_map(|tail| [&MAGIC[..], &tail].concat()),
        ],
    ) {
        check_hello(&secret, &received);
    }

    #[test]
    fn mutated_hellos_are_read_by_the_book(secret in secret(), edits in edits()) {
        check_hello(&secret, &mutate(wire::hello(&secret).to_vec(), &edits));
    }

    #[test]
    fn arbitrary_welcomes_are_read_by_the_book(
        secret in secret(),
        tail in vec(any::<u8>(), WELCOME_LEN - 8),
        magic in any::<bool>(),
    ) {
        let head = if magic { &MAGIC[..] } else { &tail[..8] };
        check_welcome(&secret, &welcome_array([head, &tail].concat()));
    }

    #[test]
    fn mutated_welcomes_are_read_by_the_book(
        secret in secret(),
        chosen in prop_oneof![Just(1u16), Just(0), any::<u16>()],
        edits in edits(),
    ) {
        let welcome = wire::welcome(&secret, chosen).to_vec();
        check_welcome(&secret, &welcome_array(mutate(welcome, &edits)));
    }
}

// ---------------------------------------------------------------------------
// Frame headers.

/// PROTOCOL.md's frame table: kind, name, largest payload.
const KINDS: [(Kind, &str, u32); 14] = [
    (Kind::Offer, "OFFER", 65_536),
    (Kind::State, "STATE", 65_536),
    (Kind::Data, "DATA", 1_048_576),
    (Kind::End, "END", 65_536),
    (Kind::Commit, "COMMIT", 65_536),
    (Kind::Ack, "ACK", 65_536),
    (Kind::Reject, "REJECT", 65_536),
    (Kind::Abort, "ABORT", 65_536),
    (Kind::BytesStart, "BYTES_START", 65_536),
    (Kind::Bytes, "BYTES", 1_048_576),
    (Kind::Taken, "TAKEN", 65_536),
    (Kind::Ready, "READY", 65_536),
    (Kind::BytesPiped, "BYTES_PIPED", 65_536),
    (Kind::Lineage, "LINEAGE", 65_536),
];

fn header(kind: u8, len: u32) -> [u8; HEADER_LEN] {
    let len = len.to_le_bytes();
    [kind, len[0], len[1], len[2], len[3]]
}

/// Checks a header against the table; a header that is accepted, or refused
/// for its length, allocates nothing.
fn check_header(bytes: [u8; HEADER_LEN], expected: &[Kind]) -> Result<(Kind, u32), Error> {
    let step = Step::State;
    let (got, stats) = measure(|| wire::decode_header(step, bytes, expected));
    let len = u32::from_le_bytes(bytes[1..].try_into().unwrap());
    let Some(&(kind, name, max)) = KINDS.get(usize::from(bytes[0]).wrapping_sub(1)) else {
        let detail = format!("unknown frame kind {:#04x}", bytes[0]);
        assert!(
            matches!(&got, Err(Error::Protocol { step: Step::State, detail: d }) if *d == detail),
            "{got:?}"
        );
        return got;
    };
    assert_eq!(kind as u8, bytes[0]);
    if !expected.contains(&kind) {
        let names: Vec<_> = expected.iter().map(|k| KINDS[*k as usize - 1].1).collect();
        let detail = format!("expected {}, got {name}", names.join(" or "));
        assert!(
            matches!(&got, Err(Error::Protocol { step: Step::State, detail: d }) if *d == detail),
            "{got:?}"
        );
    } else if len > max {
        assert!(
            matches!(
                got,
                Err(Error::FrameTooLarge { step: Step::State, kind: k, len: l, max: m })
                    if k == name && l == u64::from(len) && m == u64::from(max)
            ),
            "{got:?}"
        );
        assert_eq!(stats.allocations, 0, "{stats:?}");
    } else {
        assert_eq!(got.as_ref().unwrap(), &(kind, len));
        assert_eq!(stats.allocations, 0, "{stats:?}");
    }
    got
}

#[test]
fn the_kinds_and_limits_are_the_protocols() {
    assert_eq!(u64::from(MAX_CONTROL_PAYLOAD), 64 * 1024);
    assert_eq!(u64::from(MAX_DATA_PAYLOAD), 1024 * 1024);
    assert_eq!(MAX_STATE_BYTES, 4 << 30);
    for (i, (kind, _, max)) in KINDS.into_iter().enumerate() {
        assert_eq!(kind as usize, i + 1);
        assert_eq!(
            check_header(header(kind as u8, max), &[kind]).unwrap(),
            (kind, max)
        );
        assert!(check_header(header(kind as u8, max + 1), &[kind]).is_err());
        assert_eq!(
            check_header(header(kind as u8, 0), &[kind]).unwrap(),
            (kind, 0)
        );
    }
    for unknown in [0, 15, 0x42, 0xff] {
        assert!(check_header(header(unknown, 0), &[Kind::Offer]).is_err());
    }
}

#[test]
fn a_4_gib_frame_length_is_refused_before_anything_is_allocated() {
    for (kind, name, max) in KINDS {
        for len in [u32::MAX, max + 1] {
            let (got, stats) =
                measure(|| wire::decode_header(Step::State, header(kind as u8, len), &[kind]));
            assert!(
                matches!(
                    got,
                    Err(Error::FrameTooLarge { kind: k, len: l, max: m, .. })
                        if k == name && l == u64::from(len) && m == u64::from(max)
                ),
                "{got:?}"
            );
            assert_eq!(stats.allocations, 0, "{name}: {stats:?}");
        }
    }
}

fn expected_kinds() -> impl Strategy<Value = Vec<Kind>> {
    vec(any::<bool>(), KINDS.len()).prop_map(|mask| {
        KINDS
            .iter()
            .zip(mask)
            .filter(|(_, on)| *on)
            .map(|((kind, _, _), _)| *kind)
            .collect()
    })
}

fn lengths() -> impl Strategy<Value = u32> {
    prop_oneof![
        0..=64u32,
        Just(MAX_CONTROL_PAYLOAD),
        Just(MAX_CONTROL_PAYLOAD + 1),
        Just(MAX_DATA_PAYLOAD),
        Just(MAX_DATA_PAYLOAD + 1),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_headers_are_read_by_the_table(
        kind in prop_oneof![0..=12u8, any::<u8>()],
        len in lengths(),
        expected in expected_kinds(),
    ) {
        check_header(header(kind, len), &expected).ok();
    }
}

// ---------------------------------------------------------------------------
// Step 4: OFFER, as a payload and as a whole frame.

/// Schemas as the real encoder sees them, including a name longer than a
/// string may be (cut to 4,096 bytes at a character boundary).
fn schemas() -> &'static [Schema] {
    static SCHEMAS: OnceLock<Vec<Schema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let long: &'static str = "é".repeat(3000).leak();
        vec![
            Schema::new("bot::State", 3),
            Schema::new("bot::State", 2),
            Schema::new("", 0),
            Schema::new("ünï::cödé", u32::MAX),
            Schema::new(long, 1),
        ]
    })
}

fn schema_lists() -> impl Strategy<Value = Vec<Schema>> {
    vec(0..schemas().len(), 0..6)
        .prop_map(|picks| picks.into_iter().map(|i| schemas()[i].clone()).collect())
}

/// OFFER's payload, as the new process writes it, without a description
/// of its state.
fn offer(accepted: &[Schema]) -> Vec<u8> {
    wire::encode(&Frame::Offer {
        accepted: accepted.to_vec(),
        description: None,
    })
    .1
}

/// The reasons a frame's payload is refused.
const REFUSALS: [&str; 7] = [
    "too short",
    "unexpected trailing bytes",
    "invalid UTF-8",
    "unknown reason",
    "unknown description flag",
    "unknown node",
    "deeper than",
];

/// A schema takes at least 14 bytes of an OFFER (version, fingerprint,
/// name length) and 40 of memory (`Schema`), in a `Vec` that at most
/// doubles: so at most 6 bytes of memory per payload byte. A node of the
/// state's description takes one byte and at most 128 of memory (a 56-byte
/// `Shape`, in a `Vec` that at most doubles, plus its box): so at most 128
/// bytes per payload byte, plus an error message. With the 64 KiB limit on
/// the payload, at most 8 MiB.
fn check_offer(payload: &[u8]) -> Result<Vec<Schema>, Error> {
    let (got, stats) = measure(|| wire::decode(Kind::Offer, payload));
    let got = match got {
        // Read exactly the payload, and invented nothing.
        Ok(frame) => {
            assert_eq!(wire::encode(&frame).1, payload);
            let Frame::Offer { accepted, .. } = frame else {
                panic!("OFFER decoded as {frame:?}")
            };
            Ok(accepted)
        }
        Err(Error::Protocol { step, detail }) => {
            assert_eq!(step, Step::Offer);
            assert!(
                detail.starts_with("OFFER frame ")
                    && REFUSALS.iter().any(|why| detail.contains(why)),
                "{detail}"
            );
            Err(Error::Protocol { step, detail })
        }
        Err(other) => panic!("{other:?}"),
    };
    assert!(
        stats.largest <= 128 * payload.len() + 256,
        "{} bytes: {stats:?}",
        payload.len()
    );
    assert!(
        stats.peak <= 128 * payload.len() as isize + 512,
        "{} bytes: {stats:?}",
        payload.len()
    );
    got
}

#[test]
fn offers_round_trip_and_every_prefix_is_refused() {
    let all = schemas();
    let payload = offer(all);
    let accepted = check_offer(&payload).unwrap();
    assert_eq!(accepted.len(), all.len());
    assert_eq!(
        accepted[4].name,
        "é".repeat(2048),
        "cut at a character boundary"
    );
    assert_eq!(accepted[..4], all[..4].to_vec());
    for len in 0..payload.len() {
        assert!(check_offer(&payload[..len]).is_err(), "{len}");
    }
}

#[test]
fn a_full_size_offer_stays_within_its_bound() {
    // As many empty-named schemas as the 64 KiB limit holds, and no
    // description (its flag 0 is the last byte).
    let count = (MAX_CONTROL_PAYLOAD as usize - 3) / 14;
    let mut payload = (count as u16).to_le_bytes().to_vec();
    payload.resize(2 + 14 * count + 1, 0);
    assert_eq!(check_offer(&payload).unwrap().len(), count);
    // The same count claimed by a payload that holds one schema.
    assert!(check_offer(&payload[..16]).is_err());
}

/// A frame as a receiver reads it from the connection: the header, then a
/// payload of the length it allows, then the OFFER in it.
fn check_offer_frame(bytes: &[u8]) {
    let Ok(head) = <[u8; HEADER_LEN]>::try_from(&bytes[..bytes.len().min(HEADER_LEN)]) else {
        return; // the peer went away mid-header
    };
    let Ok((Kind::Offer, len)) = check_header(head, &[Kind::Offer]) else {
        return;
    };
    // What `read_frame` allocates next, checked before it does.
    assert!(len <= MAX_CONTROL_PAYLOAD);
    let rest = &bytes[HEADER_LEN..];
    if let Some(payload) = rest.get(..len as usize) {
        check_offer(payload).ok();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_offers_are_refused_or_read_exactly(
        payload in prop_oneof![
            vec(any::<u8>(), 0..256),
            // A count, then schema-shaped bytes.
            (0..8u16, vec(any::<u8>(), 0..256))
                .prop_map(|(n, tail)| [&n.to_le_bytes()[..], &tail].concat()),
        ],
    ) {
        check_offer(&payload).ok();
    }

    #[test]
    fn mutated_offers_are_refused_or_read_exactly(accepted in schema_lists(), edits in edits()) {
        let payload = offer(&accepted);
        let back = check_offer(&payload).unwrap();
        prop_assert_eq!(back.len(), accepted.len());
        check_offer(&mutate(payload, &edits)).ok();
    }

    #[test]
    fn mutated_offer_frames_never_allocate_past_the_limit(
        accepted in schema_lists(),
        edits in edits(),
    ) {
        let payload = offer(&accepted);
        let frame = [&header(Kind::Offer as u8, payload.len() as u32)[..], &payload].concat();
        check_offer_frame(&frame);
        check_offer_frame(&mutate(frame, &edits));
    }
}

// ---------------------------------------------------------------------------
// Every other frame's payload: STATE, REJECT, BYTES_START, BYTES_PIPED, END,
// ABORT, READY, COMMIT, ACK and TAKEN, through the same typed messages the
// handover uses.

/// Decodes a `kind` payload and checks the verdict: either the frame the
/// bytes hold, which encodes back to exactly those bytes, or a protocol
/// error that names the frame and the step it is read in. What it allocates
/// grows with the payload (a string is at most the payload), never with a
/// length the bytes claim.
fn check_frame(kind: Kind, payload: &[u8]) -> Result<Frame, Error> {
    let (got, stats) = measure(|| wire::decode(kind, payload));
    match &got {
        Ok(frame) => {
            let (encoded_kind, bytes) = wire::encode(frame);
            assert_eq!(encoded_kind, kind);
            assert_eq!(bytes, payload, "{frame:?} read other bytes than it holds");
        }
        Err(Error::Protocol { step, detail }) => {
            assert_eq!(*step, wire::step_of(kind));
            assert!(
                detail.starts_with(&format!("{kind:?}").to_uppercase())
                    || detail.starts_with("BYTES_START")
                    || detail.starts_with("BYTES_PIPED"),
                "{kind:?}: {detail}"
            );
            assert!(REFUSALS.iter().any(|why| detail.contains(why)), "{detail}");
        }
        Err(other) => panic!("{kind:?}: {other:?}"),
    }
    // A string is at most the payload; a description node, one byte of it,
    // at most 128 bytes of memory (see `check_offer`).
    assert!(
        stats.largest <= 128 * payload.len() + 256,
        "{kind:?}, {} bytes: {stats:?}",
        payload.len()
    );
    got
}

/// State descriptions of a few levels, as the shapes a state has.
fn descriptions() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        Just(Shape::U8),
        Just(Shape::U32),
        Just(Shape::Str),
        Just(Shape::Bytes),
        "[a-z]{1,8}".prop_map(Shape::Fd),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            inner
                .clone()
                .prop_map(|shape| Shape::Option(Box::new(shape))),
            inner.clone().prop_map(|shape| Shape::Seq(Box::new(shape))),
            vec(inner.clone(), 0..4).prop_map(Shape::Tuple),
            vec(("[a-z]{1,6}", inner), 0..4).prop_map(|fields| Shape::Struct {
                name: "S".into(),
                fields
            }),
        ]
    })
}

/// Frames whose strings fit (a longer one is cut; see the OFFER tests).
fn frames() -> impl Strategy<Value = Frame> {
    let fits = schemas().len() - 1;
    let schema = (0..fits).prop_map(|i| schemas()[i].clone());
    let text = prop_oneof!["[a-z ]{0,40}", "\\PC{0,20}"];
    prop_oneof![
        (vec(schema.clone(), 0..6), option::of(descriptions())).prop_map(
            |(accepted, description)| Frame::Offer {
                accepted,
                description
            }
        ),
        schema.clone().prop_map(Frame::State),
        (1..=5u8, schema, text.clone(), option::of(descriptions())).prop_map(
            |(reason, schema, message, description)| Frame::Reject {
                reason,
                schema,
                message,
                description
            }
        ),
        any::<u64>().prop_map(Frame::BytesStart),
        any::<u64>().prop_map(Frame::BytesPiped),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(a, b, c)| Frame::End {
            stream_bytes: a,
            out_of_line_bytes: b,
            fds: c
        }),
        (1..=5u8, text).prop_map(|(reason, message)| Frame::Abort { reason, message }),
        Just(Frame::Ready),
        Just(Frame::Commit),
        Just(Frame::Ack),
        Just(Frame::Taken),
    ]
}

#[test]
fn every_frame_round_trips_and_every_prefix_is_refused() {
    let all = [
        Frame::State(schemas()[3].clone()),
        Frame::Reject {
            reason: 2,
            schema: schemas()[0].clone(),
            message: "over the limit".into(),
            description: None,
        },
        Frame::Reject {
            reason: 1,
            schema: schemas()[0].clone(),
            message: "schema mismatch".into(),
            description: Some(Shape::Struct {
                name: "State".into(),
                fields: vec![("config".into(), Shape::Option(Box::new(Shape::U32)))],
            }),
        },
        Frame::BytesStart(1 << 40),
        Frame::BytesPiped(256 << 20),
        Frame::End {
            stream_bytes: 1,
            out_of_line_bytes: 2,
            fds: 3,
        },
        Frame::Abort {
            reason: 3,
            message: "could not decode".into(),
        },
        Frame::Ready,
        Frame::Commit,
        Frame::Ack,
        Frame::Taken,
    ];
    for frame in all {
        let (kind, payload) = wire::encode(&frame);
        assert_eq!(check_frame(kind, &payload).unwrap(), frame);
        for len in 0..payload.len() {
            assert!(
                check_frame(kind, &payload[..len]).is_err(),
                "{kind:?} {len}"
            );
        }
        let mut long = payload.clone();
        long.push(0);
        assert!(
            check_frame(kind, &long).is_err(),
            "{kind:?} with a trailing byte"
        );
    }
}

/// KEY, the fd channel's first message: read only at its exact length and
/// magic, and then exactly what was sent.
fn check_key(bytes: &[u8]) {
    let (got, stats) = measure(|| wire::parse_key(bytes));
    match got {
        Ok((secret, timeout, bytes_limit, fds)) => {
            assert_eq!(wire::key(&secret, timeout, bytes_limit, fds), bytes);
        }
        Err(Error::Protocol { step, detail }) => {
            assert_eq!(step, Step::Connect);
            assert!(
                detail.contains("KEY") && (detail.contains("magic") || detail.contains("bytes")),
                "{detail}"
            );
        }
        Err(other) => panic!("{other:?}"),
    }
    assert!(stats.largest <= 256, "{stats:?}");
}

/// PIPE, the fd channel's message beside the pipe: the magic alone, read
/// only exactly.
fn check_pipe(bytes: &[u8]) {
    let (got, stats) = measure(|| wire::parse_pipe(bytes));
    match got {
        Ok(()) => assert_eq!(bytes, wire::pipe()),
        Err(Error::Protocol { step, detail }) => {
            assert_eq!(step, Step::State);
            assert!(detail.contains("PIPE"), "{detail}");
        }
        Err(other) => panic!("{other:?}"),
    }
    assert!(stats.largest <= 256, "{stats:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_and_mutated_pipe_messages_are_refused_or_read_exactly(
        noise in vec(any::<u8>(), 0..16),
        edits in edits(),
    ) {
        prop_assert_eq!(wire::pipe().len(), wire::PIPE_LEN);
        check_pipe(&noise);
        check_pipe(&mutate(wire::pipe(), &edits));
    }

    #[test]
    fn arbitrary_and_mutated_keys_are_refused_or_read_exactly(
        secret in secret(),
        numbers in (any::<u64>(), any::<u64>(), any::<u64>()),
        noise in vec(any::<u8>(), 0..128),
        edits in edits(),
    ) {
        let key = wire::key(&secret, numbers.0, numbers.1, numbers.2);
        prop_assert_eq!(key.len(), wire::KEY_LEN);
        prop_assert_eq!(wire::parse_key(&key).unwrap(), (secret, numbers.0, numbers.1, numbers.2));
        check_key(&noise);
        check_key(&mutate(key, &edits));
    }

    #[test]
    fn arbitrary_payloads_of_every_kind_are_refused_or_read_exactly(
        kind in (0..wire::KINDS.len()).prop_map(|i| wire::KINDS[i]),
        payload in vec(any::<u8>(), 0..128),
    ) {
        check_frame(kind, &payload).ok();
    }

    #[test]
    fn mutated_frames_are_refused_or_read_exactly(frame in frames(), edits in edits()) {
        let (kind, payload) = wire::encode(&frame);
        prop_assert_eq!(check_frame(kind, &payload).unwrap(), frame);
        check_frame(kind, &mutate(payload, &edits)).ok();
    }
}

// ---------------------------------------------------------------------------
// Steps 5 and 7: the state stream, decoded.

/// Decodes `stream` as a `T` and checks what that allocated: at most
/// `per_byte` bytes of memory per stream byte in one block, plus `fixed`.
///
/// A decoded collection reserves room for at most as many elements as there
/// are stream bytes left (each takes at least one), so what it allocates
/// grows with the bytes that arrived, never with the length they claim.
/// `per_byte` is the largest element (or hash bucket) of the type's
/// collections; `fixed` covers error messages and serde's own cautious
/// preallocation (at most 1 MiB of elements) for fields on the serde path.
fn decode_within<T: Handover>(
    stream: &[u8],
    out_of_line: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
    per_byte: usize,
    fixed: usize,
) -> Result<T, Error> {
    let prepared = hooks::Prepared::of::<T>().unwrap();
    let (got, stats) = measure(|| hooks::decode_prepared::<T>(stream, out_of_line, fds, prepared));
    let bound = per_byte * stream.len() + fixed;
    assert!(
        stats.largest <= bound,
        "{} stream bytes: {stats:?}, bound {bound}",
        stream.len()
    );
    assert!(
        stats.peak <= 2 * bound as isize,
        "{} stream bytes: {stats:?}, bound {bound}",
        stream.len()
    );
    if let Err(error) = &got {
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("could not decode the handed-over state: "),
            "{error}"
        );
    }
    got
}

/// Room for an error message.
const MESSAGE: usize = 512;

/// A hash map reserves at most 2 × 8/7 buckets per element, each the size of
/// the entry plus a control byte.
const fn map_per_byte<K, V>() -> usize {
    (size_of::<(K, V)>() + 1) * 16 / 7 + 1
}

#[derive(Handover, Debug, Clone, PartialEq)]
#[handover(version = 1)]
enum Mode {
    Idle,
    Busy { since: u64 },
    Named(String),
}

/// A derived state with every plain path: serde, bytes (inline and out of
/// line), maps, nested options and vectors, an enum.
#[derive(Handover, Debug, PartialEq)]
#[handover(version = 2)]
struct Plain {
    id: u64,
    nick: String,
    seen: Vec<u8>,
    blob: Vec<u8>,
    tags: HashMap<String, Vec<u32>>,
    nested: Option<Vec<Option<Vec<u64>>>>,
    mode: Mode,
}

const PLAIN_PER_BYTE: usize = map_per_byte::<String, Vec<u32>>();

/// Fields that `Handover` does not cover go through serde: collections that
/// serde preallocates, cautiously.
#[derive(Handover, Debug, PartialEq)]
struct SerdePath {
    pairs: Vec<[u8; 2]>,
    ports: HashSet<u16>,
    words: BTreeSet<String>,
}

/// serde reserves at most 1 MiB of elements for each: 1 MiB for `pairs`,
/// and for `ports` a hash table of 2^20 buckets of 3 bytes.
const SERDE_FIXED: usize = (1 << 20) + 3 * (1 << 20) + 64 + MESSAGE;

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Idle),
        any::<u64>().prop_map(|since| Mode::Busy { since }),
        ".{0,8}".prop_map(Mode::Named),
    ]
}

fn tags() -> impl Strategy<Value = HashMap<String, Vec<u32>>> {
    hash_map(".{0,6}", vec(any::<u32>(), 0..4), 0..4)
}

fn nested() -> impl Strategy<Value = Option<Vec<Option<Vec<u64>>>>> {
    option::of(vec(option::of(vec(any::<u64>(), 0..4)), 0..4))
}

fn plain() -> impl Strategy<Value = Plain> {
    (
        any::<u64>(),
        ".{0,12}",
        vec(any::<u8>(), 0..32),
        // Inline, or out of line at the threshold and past it.
        prop_oneof![
            vec(any::<u8>(), 0..16),
            (0..2usize).prop_map(|extra| vec![0xab; OUT_OF_LINE_BYTES + extra]),
        ],
        tags(),
        nested(),
        mode(),
    )
        .prop_map(|(id, nick, seen, blob, tags, nested, mode)| Plain {
            id,
            nick,
            seen,
            blob,
            tags,
            nested,
            mode,
        })
}

/// Out-of-line buffers as they might arrive: as sent, one missing, one cut
/// short, or one too many.
fn out_of_line_edit(mut buffers: Vec<Vec<u8>>, edit: u8) -> Vec<Vec<u8>> {
    match edit {
        1 => {
            buffers.pop();
        }
        2 => {
            if let Some(first) = buffers.first_mut() {
                first.pop();
            }
        }
        3 => buffers.push(vec![1; OUT_OF_LINE_BYTES]),
        _ => {}
    }
    buffers
}

/// Encodes `value`, checks that it decodes back to itself, then decodes the
/// mutated encoding.
fn round_trip_then_mutate<T: Handover + PartialEq + Debug>(
    value: &T,
    edits: &[Edit],
    out_of_line_edit_kind: u8,
    per_byte: usize,
    fixed: usize,
) {
    let encoded = hooks::encode_state(value).unwrap();
    assert!(encoded.fds.is_empty());
    let back: T = decode_within(
        &encoded.stream,
        encoded.out_of_line.clone(),
        Vec::new(),
        per_byte,
        fixed,
    )
    .unwrap();
    assert_eq!(&back, value);
    let stream = mutate(encoded.stream, edits);
    let out_of_line = out_of_line_edit(encoded.out_of_line, out_of_line_edit_kind);
    decode_within::<T>(&stream, out_of_line, Vec::new(), per_byte, fixed).ok();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn mutated_byte_vectors(value in vec(any::<u8>(), 0..64), edits in edits()) {
        round_trip_then_mutate(&value, &edits, 0, 1, MESSAGE);
    }

    #[test]
    fn mutated_strings(value in any::<String>(), edits in edits()) {
        round_trip_then_mutate(&value, &edits, 0, 1, MESSAGE);
    }

    #[test]
    fn mutated_maps(value in tags(), edits in edits()) {
        round_trip_then_mutate(&value, &edits, 0, PLAIN_PER_BYTE, MESSAGE);
    }

    #[test]
    fn mutated_nested_options_and_vectors(value in nested(), edits in edits()) {
        round_trip_then_mutate(&value, &edits, 0, size_of::<Option<Vec<u64>>>(), MESSAGE);
    }

    #[test]
    fn mutated_derived_states(value in plain(), edits in edits(), oob in 0..4u8) {
        round_trip_then_mutate(&value, &edits, oob, PLAIN_PER_BYTE, MESSAGE);
    }

    #[test]
    fn mutated_serde_fields(
        pairs in vec(any::<[u8; 2]>(), 0..8),
        ports in proptest::collection::hash_set(any::<u16>(), 0..8),
        words in proptest::collection::btree_set(".{0,6}", 0..4),
        edits in edits(),
    ) {
        let value = SerdePath { pairs, ports, words };
        round_trip_then_mutate(&value, &edits, 0, 64, SERDE_FIXED);
    }

    #[test]
    fn arbitrary_streams(
        stream in prop_oneof![
            vec(any::<u8>(), 0..512),
            vec(lies(), 0..8).prop_map(|parts| parts.concat()),
        ],
        big in 0..3usize,
    ) {
        let out_of_line = || vec![vec![0; OUT_OF_LINE_BYTES]; big];
        decode_within::<Vec<u8>>(&stream, out_of_line(), Vec::new(), 1, MESSAGE).ok();
        decode_within::<String>(&stream, out_of_line(), Vec::new(), 1, MESSAGE).ok();
        decode_within::<HashMap<String, Vec<u32>>>(
            &stream, out_of_line(), Vec::new(), PLAIN_PER_BYTE, MESSAGE,
        ).ok();
        decode_within::<Option<Vec<Option<Vec<u64>>>>>(
            &stream, out_of_line(), Vec::new(), size_of::<Option<Vec<u64>>>(), MESSAGE,
        ).ok();
        decode_within::<Plain>(&stream, out_of_line(), Vec::new(), PLAIN_PER_BYTE, MESSAGE).ok();
        decode_within::<SerdePath>(&stream, out_of_line(), Vec::new(), 64, SERDE_FIXED).ok();
    }
}

// ---------------------------------------------------------------------------
// A state with fds.

#[derive(Handover, Debug)]
#[handover(version = 1)]
struct Conns {
    name: String,
    log: File,
    peers: Vec<UnixStream>,
    spare: Option<OwnedFd>,
    by_name: HashMap<String, File>,
    idle: Option<Vec<UnixStream>>,
}

const CONNS_PER_BYTE: usize = map_per_byte::<String, File>();

fn null() -> File {
    File::open("/dev/null").unwrap()
}

fn null_fds(count: usize) -> Vec<OwnedFd> {
    (0..count).map(|_| null().into()).collect()
}

/// One sample, encoded once; each case decodes fresh duplicates of its fds.
fn conns() -> &'static (Conns, EncodedState) {
    static CONNS: OnceLock<(Conns, EncodedState)> = OnceLock::new();
    CONNS.get_or_init(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let conns = Conns {
            name: "irc".into(),
            log: null(),
            peers: vec![a, b],
            spare: Some(null().into()),
            by_name: [("one".to_string(), null()), ("two".to_string(), null())].into(),
            idle: Some(Vec::new()),
        };
        let encoded = hooks::encode_state(&conns).unwrap();
        (conns, encoded)
    })
}

fn duplicates(fds: &[OwnedFd]) -> Vec<OwnedFd> {
    fds.iter().map(|fd| fd.try_clone().unwrap()).collect()
}

fn inode(fd: &impl AsFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    File::from(fd.as_fd().try_clone_to_owned().unwrap())
        .metadata()
        .unwrap()
        .ino()
}

#[test]
fn a_state_with_fds_round_trips_and_every_prefix_is_refused() {
    let (conns, encoded) = conns();
    assert_eq!(encoded.fds.len(), 6);
    let back: Conns = decode_within(
        &encoded.stream,
        Vec::new(),
        duplicates(&encoded.fds),
        CONNS_PER_BYTE,
        MESSAGE,
    )
    .unwrap();
    assert_eq!(back.name, "irc");
    assert_eq!(inode(&back.peers[1]), inode(&conns.peers[1]));
    assert_eq!(back.by_name.len(), 2);
    assert_eq!(back.idle.map(|idle| idle.len()), Some(0));
    for len in 0..encoded.stream.len() {
        let stream = &encoded.stream[..len];
        let fds = duplicates(&encoded.fds);
        let got = decode_within::<Conns>(stream, Vec::new(), fds, CONNS_PER_BYTE, MESSAGE);
        assert!(got.is_err(), "{len}");
    }
    // Too few fds, and one too many.
    let fds = duplicates(&encoded.fds[1..]);
    let error = decode_within::<Conns>(&encoded.stream, Vec::new(), fds, CONNS_PER_BYTE, MESSAGE)
        .unwrap_err();
    assert!(
        error.to_string().contains("fd index 5 is out of range"),
        "{error}"
    );
    let mut fds = duplicates(&encoded.fds);
    fds.push(null().into());
    let error = decode_within::<Conns>(&encoded.stream, Vec::new(), fds, CONNS_PER_BYTE, MESSAGE)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("1 received fds were not claimed"),
        "{error}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_states_with_fds(edits in edits(), fd_edit in 0..3u8) {
        let (_, encoded) = conns();
        let mut fds = duplicates(&encoded.fds);
        match fd_edit {
            1 => drop(fds.pop()),
            2 => fds.push(null().into()),
            _ => {}
        }
        let stream = mutate(encoded.stream.clone(), &edits);
        decode_within::<Conns>(&stream, Vec::new(), fds, CONNS_PER_BYTE, MESSAGE).ok();
    }

    #[test]
    fn arbitrary_streams_with_fds(
        stream in prop_oneof![
            vec(any::<u8>(), 0..256),
            vec(prop_oneof![lies(), vec(0..4u8, 1..4)], 0..12).prop_map(|parts| parts.concat()),
        ],
        fds in 0..8usize,
    ) {
        decode_within::<Conns>(&stream, Vec::new(), null_fds(fds), CONNS_PER_BYTE, MESSAGE).ok();
    }
}

// ---------------------------------------------------------------------------
// Lengths of 4 GiB and more in the state stream.

/// A derived type whose `Vec<u8>` takes the byte-buffer path.
#[derive(Handover, Debug)]
struct Bytes {
    data: Vec<u8>,
}

/// Decodes `stream` as a `T`, which must fail having allocated nothing but
/// its error message.
fn refused_without_allocating<T: Handover + Debug>(stream: &[u8], fds: Vec<OwnedFd>) -> String {
    let prepared = hooks::Prepared::of::<T>().unwrap();
    let (got, stats) = measure(|| hooks::decode_prepared::<T>(stream, Vec::new(), fds, prepared));
    let error = got.unwrap_err();
    let Error::Decode { detail } = &error else {
        panic!("{error:?}")
    };
    assert!(stats.largest <= MESSAGE, "{detail}: {stats:?}");
    detail.clone()
}

#[test]
fn a_4_gib_state_length_is_refused_before_anything_is_allocated() {
    for claimed in [u64::from(u32::MAX), MAX_STATE_BYTES, u64::MAX] {
        let lie = varint(claimed);
        assert_eq!(
            refused_without_allocating::<Bytes>(&lie, Vec::new()),
            format!("a byte buffer of {claimed} bytes was announced but did not arrive")
        );
        let detail = refused_without_allocating::<String>(&lie, Vec::new());
        assert!(detail.contains("Hit the end of buffer"), "{detail}");
        refused_without_allocating::<Vec<u64>>(&lie, Vec::new());
        refused_without_allocating::<Vec<String>>(&lie, Vec::new());
        refused_without_allocating::<HashMap<String, u32>>(&lie, Vec::new());
        refused_without_allocating::<Vec<File>>(&lie, null_fds(2));

        // Followed by a few bytes: room for those, not for the claim.
        let stream = [&lie[..], &[0; 16]].concat();
        decode_within::<Bytes>(&stream, Vec::new(), Vec::new(), 1, MESSAGE).unwrap_err();
        decode_within::<Vec<u64>>(&stream, Vec::new(), Vec::new(), 8, MESSAGE).unwrap_err();
        decode_within::<Vec<String>>(&stream, Vec::new(), Vec::new(), 24, MESSAGE).unwrap_err();
        let per_byte = map_per_byte::<String, u32>();
        decode_within::<HashMap<String, u32>>(&stream, Vec::new(), Vec::new(), per_byte, MESSAGE)
            .unwrap_err();

        // A collection on the serde path gets serde's cautious reservation:
        // at most 1 MiB of elements, whatever the claim.
        let prepared = hooks::Prepared::of::<SerdePath>().unwrap();
        let (got, stats) =
            measure(|| hooks::decode_prepared::<SerdePath>(&lie, Vec::new(), Vec::new(), prepared));
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        assert!(stats.largest <= 1 << 20, "{stats:?}");
    }
}

#[test]
fn a_buffer_capacity_past_1_gib_is_refused_before_it_is_allocated() {
    // BufReader and BufWriter: capacity (varint), buffered bytes, the fd.
    let capacity = (1u64 << 30) + 1;
    let stream = [varint(capacity), vec![0, 0]].concat();
    let detail = refused_without_allocating::<std::io::BufWriter<File>>(&stream, null_fds(1));
    assert_eq!(
        detail,
        "BufWriter of capacity 1073741825 cannot hold its 0 buffered bytes"
    );
    let detail = refused_without_allocating::<std::io::BufReader<File>>(&stream, null_fds(1));
    assert_eq!(
        detail,
        "BufReader of capacity 1073741825 cannot hold its 0 buffered bytes"
    );
}
