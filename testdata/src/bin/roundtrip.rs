//! `roundtrip`: hands one `#[derive(Handover)]` state over to a fresh copy
//! of itself, for `tests/derive.rs`.
//!
//! `roundtrip <case> [--connect <port>]`
//!
//! The first process builds the case's state, prints
//! `before pid=<pid> <description>` on stdout and splits into its own
//! binary. The new process prints `after pid=<pid> <description>`, does the
//! case's follow-up (if any), and exits. The old process prints
//! `done pid=<new pid>` once the split is done, and exits; on a failed split
//! it prints `failed: <error>` and exits 1.
//!
//! A description shows every value in the state in place, and every fd by
//! its kind and inode (`tcp#<st_ino>`), so equal descriptions mean the new
//! process holds the very same sockets and files in the same places. Files
//! and Unix sockets are created in the working directory and shown by their
//! file name.
//!
//! Cases with a follow-up in the new process (proof that the fds work, not
//! only that they are the same):
//!
//! - `hashmap`: connects to each handed-over listener and accepts, then
//!   prints `live <key> ...`;
//! - `btreemap`: appends `after <key>` to each handed-over file;
//! - `nested`: connects to the Unix listener and sends itself a datagram;
//! - `bufreader`: prints `ready pid=<pid>`, then reads two lines from the
//!   `--connect` peer through the handed-over `BufReader`, printing each as
//!   `read <line:?>` and echoing it back as `echo <line>`;
//! - `bufwriter`: flushes the handed-over `BufWriter` to the `--connect`
//!   peer, then writes `after\n` and flushes again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::process::ExitCode;
use testdata::say;

use mitosis::{Handover, Outcome};

/// What the command line says.
struct Context {
    case: String,
    /// A port on 127.0.0.1 to connect to (the `bufreader` and `bufwriter`
    /// cases talk to the test over it).
    connect: Option<u16>,
}

impl Context {
    fn parse() -> Result<Context, String> {
        // The arguments without `--mitosis=<port>`: the new process gets the
        // same ones and must pick the same case before it calls `init`.
        let mut args = mitosis::args()
            .skip(1)
            .map(|arg| arg.to_string_lossy().into_owned());
        let case = args
            .next()
            .ok_or("usage: roundtrip <case> [--connect <port>]")?;
        let mut connect = None;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--connect" => {
                    let port = args.next().ok_or("--connect needs a port")?;
                    connect = Some(port.parse().map_err(|e| format!("--connect {port}: {e}"))?);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Context { case, connect })
    }

    fn peer(&self) -> io::Result<TcpStream> {
        let port = self
            .connect
            .ok_or_else(|| io::Error::other("this case needs --connect <port>"))?;
        TcpStream::connect(("127.0.0.1", port))
    }
}

/// One state type and how to build, show and exercise it.
trait Case: Handover + Describe + Send + 'static {
    /// Builds the state in the first process, with whatever must stay open
    /// outside the state (the far ends of its sockets) until it exits.
    fn build(ctx: &Context) -> io::Result<(Self, Vec<OwnedFd>)>;

    /// Runs in the new process after it printed its description.
    fn after(self, _ctx: &Context) -> io::Result<()> {
        Ok(())
    }
}

fn main() -> ExitCode {
    let ctx = match Context::parse() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            return ExitCode::from(4);
        }
    };
    match ctx.case.as_str() {
        "option-some" | "option-none" => run::<OptionCase>(&ctx),
        "vec" => run::<VecCase>(&ctx),
        "many-fds" => run::<ManyFds>(&ctx),
        "vecdeque" => run::<VecDequeCase>(&ctx),
        "hashmap" => run::<HashMapCase>(&ctx),
        "btreemap" => run::<BTreeMapCase>(&ctx),
        "box" => run::<BoxCase>(&ctx),
        "tuple" => run::<TupleCase>(&ctx),
        "nested" => run::<NestedCase>(&ctx),
        "generic" => run::<Generic<TcpListener>>(&ctx),
        "generic-pair" => run::<Pair<UdpSocket, Option<Generic<File>>>>(&ctx),
        "enum-struct" | "enum-tuple" | "enum-unit" => run::<Link>(&ctx),
        "tuple-struct" => run::<TupleStruct>(&ctx),
        "unit-struct" => run::<UnitStruct>(&ctx),
        "bufreader" => run::<BufReaderCase>(&ctx),
        "bufwriter" => run::<BufWriterCase>(&ctx),
        "skip" => run::<SkipCase>(&ctx),
        "with" => run::<WithCase>(&ctx),
        other => {
            eprintln!("roundtrip: unknown case {other:?}");
            ExitCode::from(4)
        }
    }
}

fn run<S: Case>(ctx: &Context) -> ExitCode {
    let pid = std::process::id();
    match mitosis::init::<S>() {
        Err(e) => {
            eprintln!("init error: {e}");
            ExitCode::from(2)
        }
        Ok(Some(state)) => {
            say(format!("after pid={pid} {}", state.describe()));
            match state.after(ctx) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("roundtrip: after the handover: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(None) => {
            let (state, _far_ends) = match S::build(ctx) {
                Ok(built) => built,
                Err(e) => {
                    eprintln!("roundtrip: building {}: {e}", ctx.case);
                    return ExitCode::FAILURE;
                }
            };
            say(format!("before pid={pid} {}", state.describe()));
            match mitosis::split(state).wait() {
                Outcome::Done { pid } => {
                    say(format!("done pid={pid}"));
                    ExitCode::SUCCESS
                }
                Outcome::Failed { error, .. } => {
                    say(format!("failed: {error}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Descriptions

/// A value as the tests compare it: fds by kind and inode, in place.
trait Describe {
    fn describe(&self) -> String;
}

fn inode(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).map_or(0, |stat| stat.st_ino)
}

/// The file name an fd refers to, from /proc/self/fd.
fn file_name(fd: impl AsFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
        .ok()
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into())
}

fn unix_name(addr: io::Result<std::os::unix::net::SocketAddr>) -> String {
    addr.ok()
        .and_then(|addr| {
            Some(
                addr.as_pathname()?
                    .file_name()?
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .unwrap_or_else(|| "unnamed".into())
}

impl Describe for TcpStream {
    fn describe(&self) -> String {
        format!("tcp#{}", inode(self))
    }
}

impl Describe for TcpListener {
    fn describe(&self) -> String {
        let port = self.local_addr().map_or(0, |addr| addr.port());
        format!("listener#{}:{port}", inode(self))
    }
}

impl Describe for UdpSocket {
    fn describe(&self) -> String {
        let port = self.local_addr().map_or(0, |addr| addr.port());
        format!("udp#{}:{port}", inode(self))
    }
}

impl Describe for UnixStream {
    fn describe(&self) -> String {
        format!("unix#{}", inode(self))
    }
}

impl Describe for UnixListener {
    fn describe(&self) -> String {
        format!(
            "unixlistener#{}:{}",
            inode(self),
            unix_name(self.local_addr())
        )
    }
}

impl Describe for UnixDatagram {
    fn describe(&self) -> String {
        format!("unixdgram#{}:{}", inode(self), unix_name(self.local_addr()))
    }
}

impl Describe for File {
    fn describe(&self) -> String {
        format!("file#{}:{}", inode(self), file_name(self))
    }
}

impl Describe for OwnedFd {
    fn describe(&self) -> String {
        format!("fd#{}:{}", inode(self), file_name(self))
    }
}

impl Describe for String {
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl Describe for u32 {
    fn describe(&self) -> String {
        self.to_string()
    }
}

impl<T: Describe> Describe for Option<T> {
    fn describe(&self) -> String {
        match self {
            Some(value) => format!("Some({})", value.describe()),
            None => "None".into(),
        }
    }
}

impl<T: Describe> Describe for Box<T> {
    fn describe(&self) -> String {
        format!("Box({})", (**self).describe())
    }
}

fn list<'a, T: Describe + 'a>(items: impl IntoIterator<Item = &'a T>) -> String {
    let items: Vec<String> = items.into_iter().map(Describe::describe).collect();
    format!("[{}]", items.join(","))
}

impl<T: Describe> Describe for Vec<T> {
    fn describe(&self) -> String {
        list(self)
    }
}

impl<T: Describe> Describe for VecDeque<T> {
    fn describe(&self) -> String {
        list(self)
    }
}

impl<A: Describe, B: Describe> Describe for (A, B) {
    fn describe(&self) -> String {
        format!("({},{})", self.0.describe(), self.1.describe())
    }
}

/// Sorted by key, so that the order is the same in both processes.
impl<V: Describe> Describe for HashMap<String, V> {
    fn describe(&self) -> String {
        let mut entries: Vec<_> = self.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let entries: Vec<String> = entries
            .into_iter()
            .map(|(key, value)| format!("{key}={}", value.describe()))
            .collect();
        format!("{{{}}}", entries.join(","))
    }
}

impl<V: Describe> Describe for BTreeMap<u32, V> {
    fn describe(&self) -> String {
        let entries: Vec<String> = self
            .iter()
            .map(|(key, value)| format!("{key}={}", value.describe()))
            .collect();
        format!("{{{}}}", entries.join(","))
    }
}

// ---------------------------------------------------------------------------
// Helpers for building states

/// A connected pair of TCP streams over loopback.
fn tcp_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let near = TcpStream::connect(listener.local_addr()?)?;
    let (far, _) = listener.accept()?;
    Ok((near, far))
}

fn create_file(name: &str, content: &str) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(name)?;
    file.write_all(content.as_bytes())?;
    // Reopened for appending: the new process writes after this content.
    OpenOptions::new().append(true).open(name)
}

/// A Unix socket path in the working directory, free to bind.
fn fresh_path(name: &str) -> &str {
    let _ = std::fs::remove_file(name);
    name
}

// ---------------------------------------------------------------------------
// The cases

/// `Option<TcpStream>`: `Some` in `option-some`, `None` in `option-none`.
#[derive(Handover)]
struct OptionCase {
    conn: Option<TcpStream>,
    label: String,
}

impl Describe for OptionCase {
    fn describe(&self) -> String {
        format!(
            "conn={} label={}",
            self.conn.describe(),
            self.label.describe()
        )
    }
}

impl Case for OptionCase {
    fn build(ctx: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        if ctx.case == "option-none" {
            let state = OptionCase {
                conn: None,
                label: "none".into(),
            };
            return Ok((state, Vec::new()));
        }
        let (near, far) = tcp_pair()?;
        let state = OptionCase {
            conn: Some(near),
            label: "some".into(),
        };
        Ok((state, vec![far.into()]))
    }
}

/// `Vec<TcpStream>`.
#[derive(Handover)]
struct VecCase {
    streams: Vec<TcpStream>,
    count: u32,
}

impl Describe for VecCase {
    fn describe(&self) -> String {
        format!("streams={} count={}", self.streams.describe(), self.count)
    }
}

impl Case for VecCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut streams = Vec::new();
        let mut far_ends = Vec::new();
        for _ in 0..4 {
            let (near, far) = tcp_pair()?;
            streams.push(near);
            far_ends.push(far.into());
        }
        Ok((VecCase { streams, count: 4 }, far_ends))
    }
}

/// 300 fds in a `Vec<UdpSocket>`: more than one SCM_RIGHTS batch (253).
#[derive(Handover)]
struct ManyFds {
    sockets: Vec<UdpSocket>,
}

impl Describe for ManyFds {
    fn describe(&self) -> String {
        format!("sockets={}", self.sockets.describe())
    }
}

impl Case for ManyFds {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let sockets = (0..300)
            .map(|_| UdpSocket::bind("127.0.0.1:0"))
            .collect::<io::Result<_>>()?;
        Ok((ManyFds { sockets }, Vec::new()))
    }
}

/// `VecDeque<UdpSocket>`, wrapped around the end of its ring buffer, so
/// that its logical order differs from its memory layout.
#[derive(Handover)]
struct VecDequeCase {
    sockets: VecDeque<UdpSocket>,
}

impl Describe for VecDequeCase {
    fn describe(&self) -> String {
        format!("sockets={}", self.sockets.describe())
    }
}

impl Case for VecDequeCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut sockets = VecDeque::with_capacity(4);
        for _ in 0..4 {
            sockets.push_back(UdpSocket::bind("127.0.0.1:0")?);
        }
        // Drop two from the front and add two at the back: the last two
        // wrap to the start of the buffer.
        sockets.pop_front();
        sockets.pop_front();
        sockets.push_back(UdpSocket::bind("127.0.0.1:0")?);
        sockets.push_back(UdpSocket::bind("127.0.0.1:0")?);
        let (front, back) = sockets.as_slices();
        assert!(!front.is_empty() && !back.is_empty(), "the deque wraps");
        Ok((VecDequeCase { sockets }, Vec::new()))
    }
}

/// `HashMap<String, TcpListener>`.
#[derive(Handover)]
struct HashMapCase {
    listeners: HashMap<String, TcpListener>,
}

impl Describe for HashMapCase {
    fn describe(&self) -> String {
        format!("listeners={}", self.listeners.describe())
    }
}

impl Case for HashMapCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut listeners = HashMap::new();
        for key in ["irc", "http", "admin"] {
            listeners.insert(key.to_owned(), TcpListener::bind("127.0.0.1:0")?);
        }
        Ok((HashMapCase { listeners }, Vec::new()))
    }

    /// Each listener still listens: a connection to its port is accepted,
    /// and the accepted socket's peer is that connection.
    fn after(self, _: &Context) -> io::Result<()> {
        let mut keys: Vec<&String> = self.listeners.keys().collect();
        keys.sort();
        for key in keys {
            let listener = &self.listeners[key];
            let client = TcpStream::connect(listener.local_addr()?)?;
            let (_, from) = listener.accept()?;
            let matches = from == client.local_addr()?;
            say(format!("live {key} accepted={matches}"));
        }
        Ok(())
    }
}

/// `BTreeMap<u32, File>`.
#[derive(Handover)]
struct BTreeMapCase {
    files: BTreeMap<u32, File>,
}

impl Describe for BTreeMapCase {
    fn describe(&self) -> String {
        format!("files={}", self.files.describe())
    }
}

impl Case for BTreeMapCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut files = BTreeMap::new();
        // Inserted out of order; the map keeps them sorted.
        for key in [3u32, 1, 2] {
            let file = create_file(&format!("file-{key}.txt"), &format!("file {key}\n"))?;
            files.insert(key, file);
        }
        Ok((BTreeMapCase { files }, Vec::new()))
    }

    /// Writes through each handed-over fd: the test reads the files by path.
    fn after(self, _: &Context) -> io::Result<()> {
        for (key, mut file) in self.files {
            writeln!(file, "after {key}")?;
        }
        Ok(())
    }
}

/// `Box<UnixStream>`.
#[derive(Handover)]
struct BoxCase {
    stream: Box<UnixStream>,
}

impl Describe for BoxCase {
    fn describe(&self) -> String {
        format!("stream={}", self.stream.describe())
    }
}

impl Case for BoxCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let (near, far) = UnixStream::pair()?;
        let state = BoxCase {
            stream: Box::new(near),
        };
        Ok((state, vec![far.into()]))
    }
}

/// A tuple `(TcpStream, File)`.
#[derive(Handover)]
struct TupleCase {
    pair: (TcpStream, File),
}

impl Describe for TupleCase {
    fn describe(&self) -> String {
        format!("pair={}", self.pair.describe())
    }
}

impl Case for TupleCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let (near, far) = tcp_pair()?;
        let file = create_file("tuple.txt", "tuple\n")?;
        Ok((TupleCase { pair: (near, file) }, vec![far.into()]))
    }
}

/// A derived struct inside the state.
#[derive(Handover)]
struct Inner {
    fd: OwnedFd,
    listener: UnixListener,
    datagram: UnixDatagram,
    name: String,
}

impl Describe for Inner {
    fn describe(&self) -> String {
        format!(
            "{{fd={} listener={} datagram={} name={}}}",
            self.fd.describe(),
            self.listener.describe(),
            self.datagram.describe(),
            self.name.describe()
        )
    }
}

#[derive(Handover)]
struct NestedCase {
    inner: Inner,
    more: Vec<Inner>,
    depth: u32,
}

impl Describe for NestedCase {
    fn describe(&self) -> String {
        format!(
            "inner={} more={} depth={}",
            self.inner.describe(),
            self.more.describe(),
            self.depth
        )
    }
}

impl Case for NestedCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let inner = |n: u32| -> io::Result<Inner> {
            Ok(Inner {
                fd: create_file(&format!("owned-{n}.txt"), "owned\n")?.into(),
                listener: UnixListener::bind(fresh_path(&format!("listener-{n}.sock")))?,
                datagram: UnixDatagram::bind(fresh_path(&format!("datagram-{n}.sock")))?,
                name: format!("inner {n}"),
            })
        };
        let state = NestedCase {
            inner: inner(0)?,
            more: vec![inner(1)?, inner(2)?],
            depth: 2,
        };
        Ok((state, Vec::new()))
    }

    /// The Unix listener accepts a connection, and the datagram socket
    /// receives a datagram sent to its path.
    fn after(self, _: &Context) -> io::Result<()> {
        let inner = &self.inner;
        let _client = UnixStream::connect("listener-0.sock")?;
        inner.listener.accept()?;
        let sender = UnixDatagram::unbound()?;
        sender.send_to(b"to datagram-0", "datagram-0.sock")?;
        let mut buffer = [0u8; 64];
        let n = inner.datagram.recv(&mut buffer)?;
        say(format!(
            "live accepted=true datagram={:?}",
            String::from_utf8_lossy(&buffer[..n])
        ));
        Ok(())
    }
}

/// A generic state; the derive bounds `T: Handover`.
#[derive(Handover)]
struct Generic<T> {
    value: T,
    label: String,
}

impl<T: Describe> Describe for Generic<T> {
    fn describe(&self) -> String {
        format!(
            "Generic{{value={} label={}}}",
            self.value.describe(),
            self.label.describe()
        )
    }
}

impl Case for Generic<TcpListener> {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let state = Generic {
            value: TcpListener::bind("127.0.0.1:0")?,
            label: "listener".into(),
        };
        Ok((state, Vec::new()))
    }
}

/// Two type parameters, one of them instantiated with a generic type.
#[derive(Handover)]
struct Pair<A, B> {
    first: A,
    second: B,
    count: u32,
}

impl<A: Describe, B: Describe> Describe for Pair<A, B> {
    fn describe(&self) -> String {
        format!(
            "Pair{{first={} second={} count={}}}",
            self.first.describe(),
            self.second.describe(),
            self.count
        )
    }
}

impl Case for Pair<UdpSocket, Option<Generic<File>>> {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let state = Pair {
            first: UdpSocket::bind("127.0.0.1:0")?,
            second: Some(Generic {
                value: create_file("pair.txt", "pair\n")?,
                label: "file".into(),
            }),
            count: 2,
        };
        Ok((state, Vec::new()))
    }
}

/// An enum state: the live variant crosses, whichever it is.
#[derive(Handover)]
enum Link {
    Connected { stream: TcpStream, since: u32 },
    Listening(TcpListener, String),
    Idle,
}

impl Describe for Link {
    fn describe(&self) -> String {
        match self {
            Link::Connected { stream, since } => {
                format!("Connected{{stream={} since={since}}}", stream.describe())
            }
            Link::Listening(listener, name) => {
                format!("Listening({},{})", listener.describe(), name.describe())
            }
            Link::Idle => "Idle".into(),
        }
    }
}

impl Case for Link {
    fn build(ctx: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        Ok(match ctx.case.as_str() {
            "enum-struct" => {
                let (near, far) = tcp_pair()?;
                let state = Link::Connected {
                    stream: near,
                    since: 1234,
                };
                (state, vec![far.into()])
            }
            "enum-tuple" => {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                (Link::Listening(listener, "irc".into()), Vec::new())
            }
            _ => (Link::Idle, Vec::new()),
        })
    }
}

/// A tuple struct.
#[derive(Handover)]
struct TupleStruct(TcpStream, u32, Vec<u8>);

impl Describe for TupleStruct {
    fn describe(&self) -> String {
        format!("TupleStruct({},{},{:?})", self.0.describe(), self.1, self.2)
    }
}

impl Case for TupleStruct {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let (near, far) = tcp_pair()?;
        Ok((TupleStruct(near, 77, vec![1, 2, 3]), vec![far.into()]))
    }
}

/// A unit struct: an empty state, no bytes and no fds.
#[derive(Handover)]
struct UnitStruct;

impl Describe for UnitStruct {
    fn describe(&self) -> String {
        "UnitStruct".into()
    }
}

impl Case for UnitStruct {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        Ok((UnitStruct, Vec::new()))
    }
}

/// A `BufReader<TcpStream>` holding half a line: the IRC case.
#[derive(Handover)]
struct BufReaderCase {
    reader: BufReader<TcpStream>,
    lines: u32,
}

impl Describe for BufReaderCase {
    fn describe(&self) -> String {
        format!(
            "reader={} buffered={:?} lines={}",
            self.reader.get_ref().describe(),
            String::from_utf8_lossy(self.reader.buffer()),
            self.lines
        )
    }
}

impl Case for BufReaderCase {
    /// Reads exactly one line, so that the rest of what arrived stays in
    /// the reader's buffer.
    fn build(ctx: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut reader = BufReader::new(ctx.peer()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        say(format!("read {line:?}"));
        Ok((BufReaderCase { reader, lines: 1 }, Vec::new()))
    }

    fn after(mut self, _: &Context) -> io::Result<()> {
        say(format!("ready pid={}", std::process::id()));
        for _ in 0..2 {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            self.lines += 1;
            say(format!("read {line:?}"));
            let mut echo = self.reader.get_ref();
            echo.write_all(format!("echo {line}").as_bytes())?;
        }
        say(format!("lines={}", self.lines));
        Ok(())
    }
}

/// A `BufWriter<TcpStream>` holding bytes it has not written yet.
#[derive(Handover)]
struct BufWriterCase {
    writer: BufWriter<TcpStream>,
}

impl Describe for BufWriterCase {
    fn describe(&self) -> String {
        format!(
            "writer={} unwritten={:?}",
            self.writer.get_ref().describe(),
            String::from_utf8_lossy(self.writer.buffer())
        )
    }
}

impl Case for BufWriterCase {
    fn build(ctx: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut writer = BufWriter::with_capacity(4096, ctx.peer()?);
        writer.write_all(b"unwritten line\n")?;
        Ok((BufWriterCase { writer }, Vec::new()))
    }

    fn after(mut self, _: &Context) -> io::Result<()> {
        self.writer.flush()?;
        self.writer.write_all(b"after\n")?;
        self.writer.flush()
    }
}

/// Neither serde nor `Handover`: rebuilt by `fresh_counter`.
struct Counter {
    value: u64,
}

fn fresh_counter() -> Counter {
    Counter { value: 1000 }
}

/// `skip` fields: not sent, rebuilt with `Default` or a function.
#[derive(Handover)]
struct SkipCase {
    before: UnixStream,
    #[handover(skip)]
    cache: HashMap<u32, u32>,
    #[handover(skip, default = "fresh_counter")]
    counter: Counter,
    kept: u32,
}

impl Describe for SkipCase {
    fn describe(&self) -> String {
        let mut cache: Vec<_> = self.cache.iter().collect();
        cache.sort();
        format!(
            "before={} cache={cache:?} counter={} kept={}",
            self.before.describe(),
            self.counter.value,
            self.kept
        )
    }
}

impl Case for SkipCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let (near, far) = UnixStream::pair()?;
        let state = SkipCase {
            before: near,
            cache: HashMap::from([(1, 10), (2, 20)]),
            counter: Counter { value: 7 },
            kept: 42,
        };
        Ok((state, vec![far.into()]))
    }
}

/// A type that is neither serde nor `Handover`, sent by a `with` module.
struct Foreign {
    name: String,
    socket: UnixDatagram,
}

/// How a `Foreign` crosses: its name as plain data, its socket as an fd.
mod foreign_codec {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    use super::Foreign;

    pub fn encode<'a>(
        value: &'a Foreign,
        out: &mut mitosis::Encoder<'a>,
    ) -> Result<(), mitosis::Error> {
        out.value(&value.name)?;
        out.fd(value.socket.as_fd())
    }

    pub fn decode(input: &mut mitosis::Decoder<'_>) -> Result<Foreign, mitosis::Error> {
        let name: String = input.value()?;
        Ok(Foreign {
            name: format!("{name} (decoded by foreign_codec)"),
            socket: UnixDatagram::from(input.fd()?),
        })
    }
}

#[derive(Handover)]
struct WithCase {
    #[handover(with = "foreign_codec")]
    foreign: Foreign,
    /// An fd after the module's: the fd indices stay in step.
    after: TcpStream,
}

impl Describe for WithCase {
    fn describe(&self) -> String {
        format!(
            "foreign=({},{}) after={}",
            self.foreign.name.describe(),
            self.foreign.socket.describe(),
            self.after.describe()
        )
    }
}

impl Case for WithCase {
    fn build(_: &Context) -> io::Result<(Self, Vec<OwnedFd>)> {
        let (near, far) = UnixDatagram::pair()?;
        let (stream, stream_far) = tcp_pair()?;
        let state = WithCase {
            foreign: Foreign {
                name: "foreign".into(),
                socket: near,
            },
            after: stream,
        };
        Ok((state, vec![far.into(), stream_far.into()]))
    }
}
