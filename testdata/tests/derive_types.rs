//! `#[derive(Handover)]` in memory: shapes, attributes, fingerprints and
//! migrations. The real handovers between processes are in testdata's tests.
#![deny(warnings)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use mitosis::testing::round_trip;
use mitosis::{Handover, Schema};

/// The inode behind an fd: the same socket or file after a handover.
fn inode(fd: &impl AsFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    File::from(fd.as_fd().try_clone_to_owned().unwrap())
        .metadata()
        .unwrap()
        .ino()
}

fn connected() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (a, listener.accept().unwrap().0)
}

#[derive(Handover, Debug, Default, PartialEq)]
struct Settings {
    nick: String,
    channels: Vec<String>,
}

#[derive(Handover)]
#[handover(version = 4)]
struct Everything {
    settings: Settings,
    blob: Vec<u8>,
    counts: HashMap<String, Vec<String>>,
    peers: Vec<TcpStream>,
    named: HashMap<String, TcpListener>,
    files: BTreeMap<u32, File>,
    maybe: Option<TcpStream>,
    none: Option<TcpStream>,
    queue: VecDeque<UdpSocket>,
    boxed: Box<UnixStream>,
    pair: (TcpStream, File),
    #[handover(skip)]
    cache: HashMap<u32, u32>,
    #[handover(skip, default = "forty_two")]
    answer: u32,
    #[handover(with = "as_text")]
    address: std::net::Ipv6Addr,
    #[handover(fd)]
    raw: OwnedFd,
}

fn forty_two() -> u32 {
    42
}

/// A `with` module: the address as a string.
mod as_text {
    pub fn encode<'a>(
        value: &'a std::net::Ipv6Addr,
        out: &mut mitosis::Encoder<'a>,
    ) -> Result<(), mitosis::Error> {
        out.value(&value.to_string())
    }

    pub fn decode(input: &mut mitosis::Decoder<'_>) -> Result<std::net::Ipv6Addr, mitosis::Error> {
        let text: String = input.value()?;
        text.parse().map_err(|_| mitosis::Error::Decode {
            detail: format!("not an IPv6 address: {text}"),
        })
    }
}

#[test]
fn every_container_and_attribute_round_trips() {
    let (a, _a) = connected();
    let (b, _b) = connected();
    let state = Everything {
        settings: Settings {
            nick: "bot".into(),
            channels: vec!["#a".into(), "#b".into()],
        },
        blob: (0..100_000u32).map(|i| i as u8).collect(),
        counts: [("k".to_string(), vec!["v".to_string(); 3])].into(),
        peers: vec![a, b],
        named: [("irc".to_string(), TcpListener::bind("127.0.0.1:0").unwrap())].into(),
        files: [(7, File::open("/proc/self/exe").unwrap())].into(),
        maybe: Some(connected().0),
        none: None,
        queue: [UdpSocket::bind("127.0.0.1:0").unwrap()].into(),
        boxed: Box::new(UnixStream::pair().unwrap().0),
        pair: (connected().0, File::open("/proc/self/exe").unwrap()),
        cache: [(1, 1)].into(),
        answer: 7,
        address: "::1".parse().unwrap(),
        raw: File::open("/proc/self/exe").unwrap().into(),
    };
    let back: Everything = round_trip(&state).unwrap();
    assert_eq!(back.settings, state.settings);
    assert!(back.blob == state.blob);
    assert_eq!(back.counts, state.counts);
    let inodes = |v: &[TcpStream]| v.iter().map(inode).collect::<Vec<_>>();
    assert_eq!(inodes(&back.peers), inodes(&state.peers));
    assert_eq!(inode(&back.named["irc"]), inode(&state.named["irc"]));
    assert_eq!(inode(&back.files[&7]), inode(&state.files[&7]));
    assert_eq!(
        inode(back.maybe.as_ref().unwrap()),
        inode(state.maybe.as_ref().unwrap())
    );
    assert!(back.none.is_none());
    assert_eq!(inode(&back.queue[0]), inode(&state.queue[0]));
    assert_eq!(inode(&*back.boxed), inode(&*state.boxed));
    assert_eq!(inode(&back.pair.0), inode(&state.pair.0));
    assert_eq!(inode(&back.raw), inode(&state.raw));
    assert!(
        back.cache.is_empty(),
        "skipped fields are rebuilt with Default"
    );
    assert_eq!(back.answer, 42, "or with their default function");
    assert_eq!(back.address, state.address);
    assert_eq!(Everything::SCHEMA.version, 4);
    assert_eq!(Everything::SCHEMA.name, "derive_types::Everything");
}

#[derive(Handover, Debug, PartialEq)]
struct Tuple(u32, String);

#[derive(Handover, Debug, PartialEq)]
struct Unit;

#[derive(Handover, Debug, PartialEq)]
enum Mode {
    Idle,
    Counting(u64),
    Named { name: String, weight: f32 },
}

#[test]
fn tuple_unit_and_enum_shapes_round_trip() {
    assert_eq!(
        round_trip::<_, Tuple>(&Tuple(1, "x".into())).unwrap(),
        Tuple(1, "x".into())
    );
    assert_eq!(round_trip::<_, Unit>(&Unit).unwrap(), Unit);
    for mode in [
        Mode::Idle,
        Mode::Counting(9),
        Mode::Named {
            name: "n".into(),
            weight: 0.5,
        },
    ] {
        assert_eq!(round_trip::<_, Mode>(&mode).unwrap(), mode);
    }
}

#[derive(Handover)]
enum Connection {
    Listening(TcpListener),
    Connected {
        stream: BufReader<TcpStream>,
        since: u64,
    },
}

#[test]
fn enum_with_fds_and_a_buffered_half_line() {
    let (mut far, near) = connected();
    far.write_all(b"one\ntw").unwrap();
    let mut reader = BufReader::new(near);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "one\n");
    let state = Connection::Connected {
        stream: reader,
        since: 5,
    };
    let Connection::Connected { mut stream, since } = round_trip(&state).unwrap() else {
        panic!("the variant changed");
    };
    assert_eq!(since, 5);
    far.write_all(b"o\n").unwrap();
    line.clear();
    stream.read_line(&mut line).unwrap();
    assert_eq!(line, "two\n");
}

#[derive(Handover)]
struct Generic<T, U> {
    value: T,
    values: Vec<U>,
    label: String,
}

#[test]
fn generic_state_round_trips_and_fingerprints_per_instance() {
    let state = Generic {
        value: File::open("/proc/self/exe").unwrap(),
        values: vec![connected().0],
        label: "x".into(),
    };
    let back: Generic<File, TcpStream> = round_trip(&state).unwrap();
    assert_eq!(inode(&back.value), inode(&state.value));
    assert_eq!(inode(&back.values[0]), inode(&state.values[0]));
    assert_eq!(back.label, "x");
    assert_ne!(
        mitosis::Schema::of::<Generic::<File, TcpStream>>()
            .unwrap()
            .fingerprint,
        mitosis::Schema::of::<Generic::<TcpStream, TcpStream>>()
            .unwrap()
            .fingerprint
    );
}

#[derive(Handover)]
struct Wrapper<T> {
    inner: T,
    generation: u64,
}

#[test]
fn generic_wrapper_round_trips() {
    let state = Wrapper {
        inner: Some(File::open("/proc/self/exe").unwrap()),
        generation: 3,
    };
    let back: Wrapper<Option<File>> = round_trip(&state).unwrap();
    assert_eq!(back.generation, 3);
    assert_eq!(
        inode(back.inner.as_ref().unwrap()),
        inode(state.inner.as_ref().unwrap())
    );
}

#[derive(Handover)]
struct Outer {
    inner: Settings,
}

mod changed {
    /// `Settings` with one more field, under the same name.
    #[derive(mitosis::Handover)]
    #[handover(name = "derive_types::Settings")]
    pub struct Settings {
        pub nick: String,
        pub channels: Vec<String>,
        pub topic: String,
    }

    #[derive(mitosis::Handover)]
    #[handover(name = "derive_types::Outer")]
    pub struct Outer {
        pub inner: Settings,
    }
}

#[test]
fn fingerprints_see_names_types_versions_and_nested_types() {
    #[derive(Handover)]
    #[handover(name = "derive_types::Settings")]
    struct Same {
        nick: String,
        channels: Vec<String>,
    }
    #[derive(Handover)]
    #[handover(name = "derive_types::Settings")]
    struct Renamed {
        nick: String,
        rooms: Vec<String>,
    }
    #[derive(Handover)]
    #[handover(name = "derive_types::Settings")]
    struct Retyped {
        nick: String,
        channels: Vec<u32>,
    }
    /// Another type written, the same encoding: a sequence of strings.
    #[derive(Handover)]
    #[handover(name = "derive_types::Settings")]
    struct SameEncoding {
        nick: String,
        channels: VecDeque<String>,
    }
    #[derive(Handover)]
    #[handover(name = "derive_types::Settings", version = 1)]
    struct Bumped {
        nick: String,
        channels: Vec<String>,
    }
    let fp = mitosis::Schema::of::<Settings>().unwrap().fingerprint;
    assert_eq!(
        mitosis::Schema::of::<Same>().unwrap().fingerprint,
        fp,
        "a verbatim copy matches"
    );
    assert_ne!(mitosis::Schema::of::<Renamed>().unwrap().fingerprint, fp);
    assert_ne!(mitosis::Schema::of::<Retyped>().unwrap().fingerprint, fp);
    assert_eq!(
        mitosis::Schema::of::<SameEncoding>().unwrap().fingerprint,
        fp,
        "the fingerprint sees the encoding, not how the type is written"
    );
    assert_ne!(mitosis::Schema::of::<Bumped>().unwrap().fingerprint, fp);
    // Outer's own fields are the same, but what it holds changed.
    assert_ne!(
        mitosis::Schema::of::<changed::Outer>().unwrap().fingerprint,
        mitosis::Schema::of::<Outer>().unwrap().fingerprint
    );
    let _ = changed::Settings {
        nick: String::new(),
        channels: Vec::new(),
        topic: String::new(),
    };
}

/// Three versions of one state, the way three builds of a program hold them.
mod versions {
    use mitosis::Handover;

    #[derive(Handover)]
    #[handover(name = "bot::State", version = 1)]
    pub struct V1 {
        pub generation: u32,
        pub log: std::fs::File,
    }

    #[derive(Handover)]
    #[handover(name = "bot::State", version = 2, migrate_from(V1))]
    pub struct V2 {
        pub generations: u64,
        pub log: std::fs::File,
        pub nick: String,
    }

    impl From<V1> for V2 {
        fn from(old: V1) -> V2 {
            V2 {
                generations: old.generation.into(),
                log: old.log,
                nick: "bot".into(),
            }
        }
    }

    #[derive(Handover)]
    #[handover(name = "bot::State", version = 3, migrate_from(V2))]
    pub struct V3 {
        pub generations: u64,
        pub log: std::fs::File,
        pub nick: String,
        pub away: bool,
    }

    impl From<V2> for V3 {
        fn from(old: V2) -> V3 {
            V3 {
                generations: old.generations,
                log: old.log,
                nick: old.nick,
                away: false,
            }
        }
    }
}

#[test]
fn migrations_chain() {
    use versions::*;
    let schema = |schema: Result<Schema, mitosis::Error>| schema.unwrap();
    assert_eq!(
        V3::accepted(&mut mitosis::Shapes::new()).unwrap(),
        [
            schema(Schema::of::<V3>()),
            schema(Schema::of::<V2>()),
            schema(Schema::of::<V1>())
        ]
    );
    let v1 = V1 {
        generation: 6,
        log: File::open("/proc/self/exe").unwrap(),
    };
    let v3: V3 = round_trip(&v1).unwrap();
    assert_eq!(
        (v3.generations, v3.nick.as_str(), v3.away),
        (6, "bot", false)
    );
    assert_eq!(inode(&v3.log), inode(&v1.log));
    let v2: V2 = round_trip(&v1).unwrap();
    assert_eq!(v2.generations, 6);
    // Nothing migrates into V1.
    let err = round_trip::<_, V1>(&v2).err().unwrap();
    assert!(err.to_string().contains("has no migration"), "{err}");
}

#[test]
fn schema_names_default_to_the_module_path() {
    assert_eq!(Settings::SCHEMA.name, "derive_types::Settings");
    assert_eq!(versions::V1::SCHEMA.name, "bot::State");
}

/// What a crate that re-exports mitosis looks like to its users.
mod reexport {
    pub use mitosis as m;
}

#[derive(reexport::m::Handover, Debug, PartialEq)]
#[handover(crate = "reexport::m", version = 2)]
struct Reexported<T> {
    name: String,
    blob: Vec<u8>,
    inner: T,
    #[handover(skip)]
    cache: u32,
}

#[derive(reexport::m::Handover, Debug, PartialEq)]
#[handover(crate = "reexport::m", migrate_from(Settings))]
enum ReexportedMode {
    Idle,
    Counting(u64),
}

impl From<Settings> for ReexportedMode {
    fn from(_: Settings) -> Self {
        ReexportedMode::Idle
    }
}

#[test]
fn crate_path_reaches_mitosis_through_a_reexport() {
    let state = Reexported {
        name: "n".into(),
        blob: vec![1, 2, 3],
        inner: Settings {
            nick: "bot".into(),
            channels: vec!["#a".into()],
        },
        cache: 7,
    };
    let back: Reexported<Settings> = round_trip(&state).unwrap();
    assert_eq!(back, Reexported { cache: 0, ..state });
    assert_eq!(Reexported::<Settings>::SCHEMA.version, 2);
    let mode = ReexportedMode::Counting(3);
    assert_eq!(round_trip::<_, ReexportedMode>(&mode).unwrap(), mode);
    let migrated: ReexportedMode = round_trip(&Settings::default()).unwrap();
    assert_eq!(migrated, ReexportedMode::Idle);
}
