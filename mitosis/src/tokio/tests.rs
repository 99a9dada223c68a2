//! tokio's types across in-memory handovers (the state encoded and decoded,
//! each fd duplicated as the fd channel would), decoded inside a
//! multi-thread runtime, inside a current-thread one, and with no runtime
//! at all (then used inside a runtime built afterwards). The far ends are
//! std's blocking sockets, used for small writes and reads that the kernel
//! buffers, so that they never wait on the runtime under test.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::os::unix::net::{UnixDatagram as StdUnixDatagram, UnixStream as StdUnixStream};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixListener, UnixStream};
use tokio::runtime::{Builder, Handle, Runtime};
use tokio_util::codec::{BytesCodec, Framed, FramedRead, FramedWrite, LinesCodec};

use crate::Handover;
use crate::error::{Error, Step};
use crate::handover::tests::{inode, round_trip};

#[derive(Clone, Copy, Debug)]
enum Mode {
    MultiThread,
    CurrentThread,
    NoRuntime,
}

const MODES: [Mode; 3] = [Mode::MultiThread, Mode::CurrentThread, Mode::NoRuntime];

fn runtime(mode: Mode) -> Runtime {
    match mode {
        Mode::MultiThread => Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
        Mode::CurrentThread | Mode::NoRuntime => {
            Builder::new_current_thread().enable_all().build().unwrap()
        }
    }
}

/// For each mode: `make` builds a state (tokio sockets need a runtime's
/// context, which the old process has) and the far ends it talks to; the
/// state crosses; `check` uses what came back, with the far ends and the
/// old state, inside a runtime.
fn in_every_mode<S, X, Made, Fut>(make: impl Fn() -> Made, check: impl Fn(S, X, S) -> Fut)
where
    S: Handover,
    Made: Future<Output = (S, X)>,
    Fut: Future<Output = ()>,
{
    for mode in MODES {
        eprintln!("{mode:?}");
        match mode {
            Mode::MultiThread | Mode::CurrentThread => runtime(mode).block_on(async {
                let (old, far) = make().await;
                let back = round_trip(&old).unwrap();
                check(back, far, old).await;
            }),
            Mode::NoRuntime => {
                // The old state's runtime stays alive: its sockets are
                // registered there, and it is the old process's.
                let old_runtime = runtime(Mode::CurrentThread);
                let (old, far) = old_runtime.block_on(make());
                assert!(Handle::try_current().is_err());
                let back = round_trip(&old).unwrap();
                runtime(Mode::CurrentThread).block_on(check(back, far, old));
            }
        }
    }
}

fn tcp_pair() -> (StdTcpStream, StdTcpStream) {
    let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let far = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (near, _) = listener.accept().unwrap();
    (near, far)
}

fn tokio_tcp(near: StdTcpStream) -> TcpStream {
    near.set_nonblocking(true).unwrap();
    TcpStream::from_std(near).unwrap()
}

fn tokio_unix(near: StdUnixStream) -> UnixStream {
    near.set_nonblocking(true).unwrap();
    UnixStream::from_std(near).unwrap()
}

fn read_exactly(far: &mut impl Read, len: usize) -> Vec<u8> {
    let mut got = vec![0; len];
    far.read_exact(&mut got).unwrap();
    got
}

#[test]
fn streams_cross_in_every_mode() {
    in_every_mode(
        || async {
            let (tcp, tcp_far) = tcp_pair();
            let (unix, unix_far) = StdUnixStream::pair().unwrap();
            ((tokio_tcp(tcp), tokio_unix(unix)), (tcp_far, unix_far))
        },
        |(mut tcp, mut unix), (mut tcp_far, mut unix_far), old| async move {
            assert_eq!(inode(&tcp), inode(&old.0));
            assert_eq!(inode(&unix), inode(&old.1));
            tcp_far.write_all(b"ping").unwrap();
            let mut got = [0; 4];
            tcp.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            tcp.write_all(b"pong").await.unwrap();
            assert_eq!(read_exactly(&mut tcp_far, 4), b"pong");
            unix_far.write_all(b"hello").unwrap();
            let mut got = [0; 5];
            unix.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            unix.write_all(b"back").await.unwrap();
            assert_eq!(read_exactly(&mut unix_far, 4), b"back");
        },
    );
}

#[test]
fn listeners_and_datagram_sockets_cross_in_every_mode() {
    let dir = std::env::temp_dir().join(format!("mitosis-tokio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    in_every_mode(
        || async {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("listener-{n}"));
            let tcp = StdTcpListener::bind("127.0.0.1:0").unwrap();
            tcp.set_nonblocking(true).unwrap();
            let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
            unix.set_nonblocking(true).unwrap();
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            udp.set_nonblocking(true).unwrap();
            let (datagram, datagram_far) = StdUnixDatagram::pair().unwrap();
            datagram.set_nonblocking(true).unwrap();
            let state = (
                TcpListener::from_std(tcp).unwrap(),
                UnixListener::from_std(unix).unwrap(),
                UdpSocket::from_std(udp).unwrap(),
                UnixDatagram::from_std(datagram).unwrap(),
            );
            (state, (path, datagram_far))
        },
        |(tcp, unix, udp, datagram), (path, datagram_far), _old| async move {
            let mut client = StdTcpStream::connect(tcp.local_addr().unwrap()).unwrap();
            let (mut accepted, _) = tcp.accept().await.unwrap();
            client.write_all(b"tcp").unwrap();
            let mut got = [0; 3];
            accepted.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"tcp");

            let mut client = StdUnixStream::connect(&path).unwrap();
            let (mut accepted, _) = unix.accept().await.unwrap();
            client.write_all(b"unix").unwrap();
            let mut got = [0; 4];
            accepted.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"unix");

            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sender.send_to(b"udp", udp.local_addr().unwrap()).unwrap();
            let mut got = [0; 8];
            let (len, from) = udp.recv_from(&mut got).await.unwrap();
            assert_eq!(
                (&got[..len], from),
                (&b"udp"[..], sender.local_addr().unwrap())
            );

            datagram_far.send(b"datagram").unwrap();
            let len = datagram.recv(&mut got).await.unwrap();
            assert_eq!(&got[..len], b"datagram");
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn buffered_bytes_cross_once_in_order() {
    in_every_mode(
        || async {
            let (near, mut far) = tcp_pair();
            let reader_half = near.try_clone().unwrap();
            far.write_all(b"PRIVMSG #a :one\r\nPRIVMSG #a :tw").unwrap();
            let (writer_near, writer_far) = StdUnixStream::pair().unwrap();
            let mut reader = BufReader::new(tokio_tcp(reader_half));
            let mut writer = BufWriter::with_capacity(100, tokio_unix(writer_near));
            {
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                assert_eq!(line, "PRIVMSG #a :one\r\n");
                writer.write_all(b"PONG :x\r\n").await.unwrap();
            }
            assert_eq!(reader.buffer(), b"PRIVMSG #a :tw");
            assert_eq!(writer.buffer(), b"PONG :x\r\n");
            ((reader, writer), (far, writer_far))
        },
        |(mut reader, mut writer), (mut far, mut writer_far), old| async move {
            assert_eq!(reader.buffer(), b"PRIVMSG #a :tw");
            assert_eq!(writer.buffer(), b"PONG :x\r\n");
            // Decoding wrote nothing.
            writer_far.set_nonblocking(true).unwrap();
            assert!(writer_far.read(&mut [0; 1]).is_err());
            writer_far.set_nonblocking(false).unwrap();
            far.write_all(b"o\r\nPRIVMSG #a :three\r\n").unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            assert_eq!(line, "PRIVMSG #a :two\r\n");
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            assert_eq!(line, "PRIVMSG #a :three\r\n");
            writer.write_all(b"PONG :y\r\n").await.unwrap();
            writer.flush().await.unwrap();
            assert_eq!(read_exactly(&mut writer_far, 18), b"PONG :x\r\nPONG :y\r\n");
            // The old writer's bytes are not its business any more: tokio's
            // BufWriter does not flush when dropped.
            drop(old);
            writer_far.set_nonblocking(true).unwrap();
            assert!(writer_far.read(&mut [0; 1]).is_err());
        },
    );
}

#[test]
fn a_bufreader_over_a_bufwriter_stands_for_a_bufstream() {
    in_every_mode(
        || async {
            let (near, mut far) = StdUnixStream::pair().unwrap();
            far.write_all(b"line one\nline tw").unwrap();
            let mut stream = BufReader::new(BufWriter::new(tokio_unix(near)));
            {
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                assert_eq!(line, "line one\n");
                stream.write_all(b"reply one\n").await.unwrap();
            }
            (stream, far)
        },
        |stream, mut far, _old| async move {
            let mut stream = tokio::io::BufStream::from(stream);
            far.write_all(b"o\n").unwrap();
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            assert_eq!(line, "line two\n");
            stream.write_all(b"reply two\n").await.unwrap();
            stream.flush().await.unwrap();
            assert_eq!(read_exactly(&mut far, 20), b"reply one\nreply two\n");
        },
    );
}

#[test]
fn framed_buffers_cross_once_in_order() {
    in_every_mode(
        || async {
            let (near, mut far) = tcp_pair();
            far.write_all(b"one\ntwo\nthree\nfou").unwrap();
            let mut framed = Framed::new(tokio_tcp(near), LinesCodec::new_with_max_length(64));
            framed.set_backpressure_boundary(1000);
            {
                assert_eq!(framed.next().await.unwrap().unwrap(), "one");
                framed.feed("reply one".to_string()).await.unwrap();
                framed.feed("reply two".to_string()).await.unwrap();
            }
            assert_eq!(framed.read_buffer(), &b"two\nthree\nfou"[..]);
            assert_eq!(framed.write_buffer(), &b"reply one\nreply two\n"[..]);
            (framed, far)
        },
        |mut framed, mut far, _old| async move {
            assert_eq!(framed.codec().max_length(), 64);
            assert_eq!(framed.backpressure_boundary(), 1000);
            // The frames already buffered come out with nothing more sent.
            assert_eq!(framed.next().await.unwrap().unwrap(), "two");
            assert_eq!(framed.next().await.unwrap().unwrap(), "three");
            far.write_all(b"r\n").unwrap();
            assert_eq!(framed.next().await.unwrap().unwrap(), "four");
            framed.send("reply three".to_string()).await.unwrap();
            assert_eq!(
                read_exactly(&mut far, 32),
                b"reply one\nreply two\nreply three\n"
            );
        },
    );
}

#[test]
fn framed_reads_and_writes_cross_once_in_order() {
    in_every_mode(
        || async {
            let (near, mut far) = StdUnixStream::pair().unwrap();
            far.write_all(b"a\nb\nc").unwrap();
            let mut reader = FramedRead::new(tokio_unix(near), LinesCodec::new());
            let (tcp, tcp_far) = tcp_pair();
            let mut writer = FramedWrite::new(tokio_tcp(tcp), BytesCodec::new());
            {
                assert_eq!(reader.next().await.unwrap().unwrap(), "a");
                writer
                    .feed(bytes::Bytes::from_static(b"unwritten"))
                    .await
                    .unwrap();
            }
            assert_eq!(reader.read_buffer(), &b"b\nc"[..]);
            ((reader, writer), (far, tcp_far))
        },
        |(mut reader, mut writer), (mut far, mut tcp_far), _old| async move {
            assert_eq!(reader.read_buffer(), &b"b\nc"[..]);
            assert_eq!(reader.decoder().max_length(), usize::MAX);
            assert_eq!(reader.next().await.unwrap().unwrap(), "b");
            far.write_all(b"d\n").unwrap();
            assert_eq!(reader.next().await.unwrap().unwrap(), "cd");
            assert_eq!(writer.write_buffer(), &b"unwritten"[..]);
            writer
                .send(bytes::Bytes::from_static(b", then this"))
                .await
                .unwrap();
            assert_eq!(read_exactly(&mut tcp_far, 20), b"unwritten, then this");
        },
    );
}

#[test]
fn tokio_and_std_types_share_their_fingerprints() {
    use crate::schema::Schema;
    fn same<A: Handover, B: Handover>() {
        assert_eq!(Schema::of::<A>().unwrap(), Schema::of::<B>().unwrap());
    }
    same::<TcpStream, std::net::TcpStream>();
    same::<UnixListener, std::os::unix::net::UnixListener>();
    same::<BufReader<TcpStream>, std::io::BufReader<std::net::TcpStream>>();
    same::<BufWriter<UnixStream>, std::io::BufWriter<std::os::unix::net::UnixStream>>();
    assert_ne!(
        Schema::of::<Framed<TcpStream, LinesCodec>>().unwrap(),
        Schema::of::<Framed<TcpStream, BytesCodec>>().unwrap()
    );
}

#[test]
fn a_std_bufreader_becomes_a_tokio_one() {
    let (near, mut far) = StdUnixStream::pair().unwrap();
    far.write_all(b"half a li").unwrap();
    let mut reader = std::io::BufReader::with_capacity(16, near);
    std::io::BufRead::fill_buf(&mut reader).unwrap();
    let mut sink = crate::handover::InMemory::default();
    let encoded = crate::handover::Encoder::encode(&mut sink, &reader).unwrap();
    let fds = encoded
        .fds
        .iter()
        .map(|fd| fd.try_clone_to_owned().unwrap())
        .collect();
    let decoder = crate::handover::Decoder::new(&sink.stream, sink.out_of_line, fds);
    runtime(Mode::CurrentThread).block_on(async {
        let mut back: BufReader<UnixStream> = decoder.decode().unwrap();
        far.write_all(b"ne\n").unwrap();
        let mut line = String::new();
        back.read_line(&mut line).await.unwrap();
        assert_eq!(line, "half a line\n");
    });
}

#[test]
fn the_old_process_refuses_a_bufreader_it_cannot_hand_over() {
    let max = crate::handover::buffered::MAX_UNREAD_BYTES;
    runtime(Mode::CurrentThread).block_on(async {
        for (size, crosses) in [(max + 1, false), (max, true)] {
            let (near, mut far) = StdUnixStream::pair().unwrap();
            // A Unix socket's buffer holds this much, and one read takes
            // it all.
            far.write_all(&vec![7; size]).unwrap();
            let mut reader = BufReader::with_capacity(2 * max, tokio_unix(near));
            assert_eq!(reader.fill_buf().await.unwrap().len(), size);
            match round_trip(&reader) {
                Ok(back) => {
                    assert!(crosses);
                    assert_eq!(back.buffer(), &vec![7; size][..]);
                }
                Err(err) => {
                    assert!(!crosses);
                    assert!(
                        matches!(err, Error::UnreadBytes { step: Step::State, unread, .. }
                            if unread == size as u64),
                        "{err}"
                    );
                }
            }
        }
    });
}

#[test]
fn a_runtime_without_io_is_an_error_not_a_panic() {
    let (near, _far) = StdUnixStream::pair().unwrap();
    let runtime = Builder::new_current_thread().build().unwrap();
    let err = runtime
        .block_on(async { round_trip(&near_as_tokio(near)) })
        .err()
        .unwrap();
    assert!(matches!(err, Error::Resume { .. }), "{err}");
    assert!(err.to_string().contains("enable_io"), "{err}");
}

/// A tokio UnixStream registered with the background reactor, for a test
/// whose own runtime has no IO driver.
fn near_as_tokio(near: StdUnixStream) -> UnixStream {
    let background = super::reactor::background().unwrap();
    let _context = background.enter();
    tokio_unix(near)
}
