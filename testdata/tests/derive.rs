//! `#[derive(Handover)]` through real handovers: the `roundtrip` program
//! builds a derived state, describes it (every fd by inode, in place),
//! splits into a fresh copy of itself, and the new process describes what it
//! received. Equal descriptions mean the same sockets and files arrived in
//! the same places. Plus the schema rules, checked in this process.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use common::*;
use mitosis::{Handover, Schema};

/// A finished round trip: what the old process had and what the new one got.
struct RoundTrip {
    run: Run,
    /// The old process's description, without `before pid=<pid> `.
    before: String,
    /// The new process's description, without `after pid=<pid> `.
    after: String,
    new_pid: u32,
}

/// Starts `roundtrip <case> <args>` and waits for both descriptions and the
/// old process's `done`.
fn start(case: &str, args: &[&str]) -> RoundTrip {
    let mut all = vec![case];
    all.extend_from_slice(args);
    let mut run = Spawn::new(case)
        .binary(ROUNDTRIP)
        .without_log()
        .args(&all)
        .spawn();
    let old_pid = run.first_pid;
    let before = run.stdout.expect("before ");
    let after = run.stdout.expect("after ");
    let before = strip_pid(&before, "before", old_pid);
    let (new_pid, after) = split_pid(&after, "after");
    assert_ne!(new_pid, old_pid, "a new process took over");
    let done = run.stdout.expect("done pid=");
    assert_eq!(
        done,
        format!("done pid={new_pid}"),
        "the old process's Done names the process that printed `after`"
    );
    RoundTrip {
        run,
        before,
        after,
        new_pid,
    }
}

fn split_pid(line: &str, word: &str) -> (u32, String) {
    let rest = line
        .strip_prefix(&format!("{word} pid="))
        .unwrap_or_else(|| panic!("not a `{word} pid=` line: {line:?}"));
    let (pid, description) = rest.split_once(' ').unwrap_or((rest, ""));
    (pid.parse().expect("a pid"), description.to_owned())
}

fn strip_pid(line: &str, word: &str, pid: u32) -> String {
    let (found, description) = split_pid(line, word);
    assert_eq!(found, pid, "{line:?}");
    description
}

impl RoundTrip {
    /// Waits for both processes to exit, checks the old one exited 0 and
    /// nobody reported an error, and returns the lines not yet taken.
    fn finish(&mut self) -> Vec<String> {
        let status = self.run.wait_first();
        assert!(status.success(), "the old process exited with {status}");
        let rest = self.run.stdout.wait_eof();
        let errors = self.run.stderr.wait_eof();
        assert_eq!(errors, Vec::<String>::new(), "nothing on stderr");
        assert!(
            !rest.iter().any(|line| line.starts_with("failed")),
            "{rest:?}"
        );
        assert!(
            is_gone(self.new_pid, std::process::id()),
            "the new process {} exited",
            self.new_pid
        );
        rest
    }
}

/// A description with every inode replaced by `_` and every port after one
/// by `_`, and the inodes in order: what to compare with a literal.
fn shape(description: &str) -> (String, Vec<u64>) {
    let mut shape = String::new();
    let mut inodes = Vec::new();
    let mut chars = description.chars().peekable();
    while let Some(c) = chars.next() {
        shape.push(c);
        if c != '#' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        inodes.push(digits.parse().expect("an inode after #"));
        shape.push('_');
        if chars.next_if_eq(&':').is_some() {
            shape.push(':');
            if chars.next_if(char::is_ascii_digit).is_some() {
                while chars.next_if(char::is_ascii_digit).is_some() {}
                shape.push('_');
            }
        }
    }
    (shape, inodes)
}

/// The common case: the new process describes exactly what the old one
/// had, of the expected shape, with `fds` distinct, nonzero inodes.
fn same_fds_in_same_places(case: &str, expected_shape: &str, fds: usize) -> Vec<String> {
    let mut trip = start(case, &[]);
    assert_eq!(
        trip.after, trip.before,
        "the new process holds the same fds in the same places"
    );
    let (shape, inodes) = shape(&trip.before);
    assert_eq!(shape, expected_shape, "{:?}", trip.before);
    let distinct: HashSet<&u64> = inodes.iter().collect();
    assert_eq!(
        (inodes.len(), distinct.len()),
        (fds, fds),
        "{fds} distinct fds: {inodes:?}"
    );
    assert!(!inodes.contains(&0), "every fd has an inode: {inodes:?}");
    trip.finish()
}

// ---------------------------------------------------------------------------
// Containers of fds

#[test]
fn option_some_tcp_stream() {
    let rest = same_fds_in_same_places("option-some", r#"conn=Some(tcp#_) label="some""#, 1);
    assert_eq!(rest, Vec::<String>::new());
}

#[test]
fn option_none_tcp_stream() {
    // No fd at all crosses: the fd channel carries an empty table.
    let rest = same_fds_in_same_places("option-none", r#"conn=None label="none""#, 0);
    assert_eq!(rest, Vec::<String>::new());
}

#[test]
fn vec_of_tcp_streams() {
    same_fds_in_same_places("vec", "streams=[tcp#_,tcp#_,tcp#_,tcp#_] count=4", 4);
}

#[test]
fn vec_of_300_udp_sockets_crosses_fd_batches() {
    let expected = format!("sockets=[{}]", vec!["udp#_:_"; 300].join(","));
    same_fds_in_same_places("many-fds", &expected, 300);
}

#[test]
fn vecdeque_of_udp_sockets() {
    // The deque wraps around its buffer (checked when it is built); the
    // logical order is what must survive.
    same_fds_in_same_places("vecdeque", "sockets=[udp#_:_,udp#_:_,udp#_:_,udp#_:_]", 4);
}

#[test]
fn hashmap_of_tcp_listeners() {
    let rest = same_fds_in_same_places(
        "hashmap",
        "listeners={admin=listener#_:_,http=listener#_:_,irc=listener#_:_}",
        3,
    );
    assert_eq!(
        rest,
        [
            "live admin accepted=true",
            "live http accepted=true",
            "live irc accepted=true"
        ],
        "each handed-over listener accepts in the new process"
    );
}

#[test]
fn btreemap_of_files() {
    let mut trip = start("btreemap", &[]);
    assert_eq!(trip.after, trip.before);
    let (shape, inodes) = shape(&trip.before);
    assert_eq!(
        shape,
        "files={1=file#_:file-1.txt,2=file#_:file-2.txt,3=file#_:file-3.txt}"
    );
    assert_eq!(inodes.iter().collect::<HashSet<_>>().len(), 3);
    trip.finish();
    // The new process (gone now) appended through the handed-over fds, to
    // the files the old process created.
    for key in 1..=3 {
        let path = trip.run.dir.join(&format!("file-{key}.txt"));
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content, format!("file {key}\nafter {key}\n"));
    }
}

#[test]
fn boxed_unix_stream() {
    same_fds_in_same_places("box", "stream=Box(unix#_)", 1);
}

#[test]
fn tuple_of_tcp_stream_and_file() {
    same_fds_in_same_places("tuple", "pair=(tcp#_,file#_:tuple.txt)", 2);
}

#[test]
fn nested_derived_struct_with_owned_fd_and_unix_sockets() {
    let inner = |n: u32| {
        format!(
            "{{fd=fd#_:owned-{n}.txt listener=unixlistener#_:listener-{n}.sock \
             datagram=unixdgram#_:datagram-{n}.sock name=\"inner {n}\"}}"
        )
    };
    let expected = format!(
        "inner={} more=[{},{}] depth=2",
        inner(0),
        inner(1),
        inner(2)
    );
    let rest = same_fds_in_same_places("nested", &expected, 9);
    assert_eq!(
        rest,
        [r#"live accepted=true datagram="to datagram-0""#],
        "the Unix listener and datagram socket work in the new process"
    );
}

// ---------------------------------------------------------------------------
// Generic types, enums, tuple and unit structs

#[test]
fn generic_state_with_a_listener() {
    same_fds_in_same_places(
        "generic",
        r#"Generic{value=listener#_:_ label="listener"}"#,
        1,
    );
}

#[test]
fn generic_state_with_two_parameters() {
    // Pair<UdpSocket, Option<Generic<File>>>.
    same_fds_in_same_places(
        "generic-pair",
        r#"Pair{first=udp#_:_ second=Some(Generic{value=file#_:pair.txt label="file"}) count=2}"#,
        2,
    );
}

#[test]
fn enum_struct_variant() {
    same_fds_in_same_places("enum-struct", "Connected{stream=tcp#_ since=1234}", 1);
}

#[test]
fn enum_tuple_variant() {
    same_fds_in_same_places("enum-tuple", r#"Listening(listener#_:_,"irc")"#, 1);
}

#[test]
fn enum_unit_variant() {
    same_fds_in_same_places("enum-unit", "Idle", 0);
}

#[test]
fn tuple_struct() {
    same_fds_in_same_places("tuple-struct", "TupleStruct(tcp#_,77,[1, 2, 3])", 1);
}

#[test]
fn unit_struct() {
    // An empty state: no bytes, no fds.
    same_fds_in_same_places("unit-struct", "UnitStruct", 0);
}

// ---------------------------------------------------------------------------
// Buffered I/O

/// The IRC case: half a line sits in the `BufReader` at the split, and the
/// rest arrives after the new process took over. Nothing may be lost or
/// duplicated.
#[test]
fn bufreader_half_line_survives() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut run = Spawn::new("bufreader")
        .binary(ROUNDTRIP)
        .without_log()
        .args(&["bufreader", "--connect", &port])
        .spawn();
    let mut conn = accept_timeout(&listener);
    let mut replies = BufReader::new(conn.try_clone().unwrap());

    // One write: the old process's BufReader takes it all in one read.
    conn.write_all(b"first line\nsecond li").unwrap();
    assert_eq!(run.stdout.expect("read "), r#"read "first line\n""#);
    let before = strip_pid(&run.stdout.expect("before "), "before", run.first_pid);
    assert_eq!(
        shape(&before).0,
        r#"reader=tcp#_ buffered="second li" lines=1"#,
        "the old process read one line and kept the rest buffered: {before:?}"
    );
    let (new_pid, after) = split_pid(&run.stdout.expect("after "), "after");
    assert_eq!(
        after, before,
        "the new process has the same socket and the same buffered bytes"
    );
    assert_eq!(
        run.stdout.expect("ready pid="),
        format!("ready pid={new_pid}")
    );
    assert_eq!(
        run.stdout.expect("done pid="),
        format!("done pid={new_pid}")
    );

    conn.write_all(b"ne\n").unwrap();
    assert_eq!(run.stdout.expect("read "), r#"read "second line\n""#);
    let mut echo = String::new();
    replies.read_line(&mut echo).unwrap();
    assert_eq!(echo, "echo second line\n");

    // The buffer is now empty: the next line is exactly what is sent next.
    conn.write_all(b"third\n").unwrap();
    assert_eq!(run.stdout.expect("read "), r#"read "third\n""#);
    echo.clear();
    replies.read_line(&mut echo).unwrap();
    assert_eq!(echo, "echo third\n");
    assert_eq!(run.stdout.expect("lines="), "lines=3");

    // Both processes exit and close the socket: nothing else was written.
    let mut rest = Vec::new();
    replies.read_to_end(&mut rest).unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "");
    assert!(run.wait_first().success());
    assert_eq!(run.stdout.wait_eof(), Vec::<String>::new());
}

/// Bytes written into a `BufWriter` but not flushed at the split reach the
/// peer exactly once: the new process writes them, the old one must not.
///
/// The old process drops its copy of the state after ACK, and `BufWriter`'s
/// `Drop` flushes; before its fds were pointed at /dev/null first, the peer
/// got `unwritten line\nunwritten line\nafter\n`.
#[test]
fn bufwriter_unwritten_bytes_are_written_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut run = Spawn::new("bufwriter")
        .binary(ROUNDTRIP)
        .without_log()
        .args(&["bufwriter", "--connect", &port])
        .spawn();
    let mut conn: TcpStream = accept_timeout(&listener);
    let before = strip_pid(&run.stdout.expect("before "), "before", run.first_pid);
    assert_eq!(
        shape(&before).0,
        r#"writer=tcp#_ unwritten="unwritten line\n""#
    );
    let (_, after) = split_pid(&run.stdout.expect("after "), "after");
    assert_eq!(
        after, before,
        "the new process has the same socket and the same unwritten bytes"
    );
    run.stdout.expect("done pid=");
    let (bytes, end) = read_to_end(&mut conn, "the bufwriter peer");
    assert_eq!(
        (String::from_utf8_lossy(&bytes).as_ref(), end),
        ("unwritten line\nafter\n", "eof"),
        "the unwritten bytes arrive once, before what the new process writes"
    );
    assert!(run.wait_first().success());
}

// ---------------------------------------------------------------------------
// Field attributes

#[test]
fn skip_fields_are_rebuilt_not_sent() {
    let mut trip = start("skip", &[]);
    let (before, inodes) = shape(&trip.before);
    assert_eq!(
        before,
        "before=unix#_ cache=[(1, 10), (2, 20)] counter=7 kept=42"
    );
    let (after, after_inodes) = shape(&trip.after);
    assert_eq!(
        after, "before=unix#_ cache=[] counter=1000 kept=42",
        "`skip` gives Default::default() (an empty map), `skip, default` calls \
         fresh_counter(), and the fields around them cross"
    );
    assert_eq!(after_inodes, inodes, "the same socket");
    trip.finish();
}

#[test]
fn with_field_uses_its_module() {
    let mut trip = start("with", &[]);
    let (before, inodes) = shape(&trip.before);
    assert_eq!(
        before,
        r#"foreign=("foreign",unixdgram#_:unnamed) after=tcp#_"#
    );
    let (after, after_inodes) = shape(&trip.after);
    assert_eq!(
        after, r#"foreign=("foreign (decoded by foreign_codec)",unixdgram#_:unnamed) after=tcp#_"#,
        "foreign_codec::decode built the field"
    );
    assert_eq!(
        after_inodes, inodes,
        "the module's fd and the field after it are the same sockets, in place"
    );
    trip.finish();
}

// ---------------------------------------------------------------------------
// Schemas, in this process

mod shapes {
    use mitosis::Handover;

    pub mod a {
        use mitosis::Handover;
        #[derive(Handover)]
        #[handover(name = "Inner")]
        pub struct Inner {
            pub port: u16,
        }
        #[derive(Handover)]
        #[handover(name = "Outer")]
        pub struct Outer {
            pub inner: Inner,
        }
    }

    pub mod b {
        use mitosis::Handover;
        /// Differs from `a::Inner` in a field's type only.
        #[derive(Handover)]
        #[handover(name = "Inner")]
        pub struct Inner {
            pub port: u32,
        }
        /// Written exactly as `a::Outer`.
        #[derive(Handover)]
        #[handover(name = "Outer")]
        pub struct Outer {
            pub inner: Inner,
        }
    }

    #[derive(Handover)]
    #[handover(name = "S", version = 1)]
    pub struct Base {
        pub count: u32,
        pub name: String,
    }

    #[derive(Handover)]
    #[handover(name = "S", version = 1)]
    pub struct Renamed {
        pub total: u32,
        pub name: String,
    }

    #[derive(Handover)]
    #[handover(name = "S", version = 1)]
    pub struct Retyped {
        pub count: u64,
        pub name: String,
    }

    #[derive(Handover)]
    #[handover(name = "S", version = 1)]
    pub struct Reordered {
        pub name: String,
        pub count: u32,
    }

    #[derive(Handover)]
    #[handover(name = "S", version = 2)]
    pub struct Bumped {
        pub count: u32,
        pub name: String,
    }

    #[derive(Handover)]
    #[handover(name = "G")]
    pub struct Generic<T> {
        pub value: T,
    }

    #[derive(Handover)]
    pub struct DefaultName {
        pub value: u8,
    }
}

#[test]
fn fingerprint_covers_names_types_order_and_version() {
    use shapes::*;
    let base = Schema::of::<Base>().unwrap();
    assert_eq!((base.name.as_ref(), base.version), ("S", 1));
    for (what, other) in [
        ("a renamed field", Schema::of::<Renamed>().unwrap()),
        ("a field's type", Schema::of::<Retyped>().unwrap()),
        ("the field order", Schema::of::<Reordered>().unwrap()),
        ("the version", Schema::of::<Bumped>().unwrap()),
    ] {
        assert_ne!(
            base.fingerprint, other.fingerprint,
            "{what} changes the fingerprint"
        );
    }
    assert_eq!(
        (
            DefaultName::SCHEMA.name.as_ref(),
            DefaultName::SCHEMA.version
        ),
        ("derive::shapes::DefaultName", 0),
        "the default name is the module path and the type's name; the default version 0"
    );
}

#[test]
fn fingerprint_covers_nested_types() {
    assert_ne!(
        mitosis::Schema::of::<shapes::a::Inner>()
            .unwrap()
            .fingerprint,
        mitosis::Schema::of::<shapes::b::Inner>()
            .unwrap()
            .fingerprint
    );
    assert_ne!(
        mitosis::Schema::of::<shapes::a::Outer>()
            .unwrap()
            .fingerprint,
        mitosis::Schema::of::<shapes::b::Outer>()
            .unwrap()
            .fingerprint,
        "two Outers written the same way differ when their Inners differ"
    );
}

#[test]
fn fingerprint_of_a_generic_type_covers_its_arguments() {
    use std::fs::File;
    use std::net::TcpStream;
    type G<T> = shapes::Generic<T>;
    // A File must never be decoded as a TcpStream, nor one fd as many.
    let schemas: Vec<Schema> = vec![
        Schema::of::<G<File>>().unwrap(),
        Schema::of::<G<TcpStream>>().unwrap(),
        Schema::of::<G<Vec<TcpStream>>>().unwrap(),
        Schema::of::<G<Option<File>>>().unwrap(),
    ];
    let distinct: HashSet<u64> = schemas.iter().map(|s| s.fingerprint).collect();
    assert_eq!(distinct.len(), schemas.len(), "{schemas:?}");
}
