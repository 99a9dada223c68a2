//! The record layer against rustls's own, over real loopback sockets, with
//! handovers in memory (the state encoded and decoded, the socket's fd
//! duplicated as the fd channel would).

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Once};
use std::thread;

use proptest::prelude::*;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite};

use super::TlsStream;
use crate::handover::tests::round_trip;

fn provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A server certificate for "localhost", and a client config that trusts
/// it, for one suite.
fn configs(suite: SupportedCipherSuite) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    provider();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let version = suite.version();
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(client), Arc::new(server))
}

fn name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Both ends of one connection, as TlsStreams.
fn pair(suite: SupportedCipherSuite) -> (TlsStream, TlsStream) {
    let (client, server) = configs(suite);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let accepting = thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        TlsStream::accept(server, socket).unwrap()
    });
    let client = TlsStream::connect(client, name(), TcpStream::connect(address).unwrap()).unwrap();
    (client, accepting.join().unwrap())
}

/// Every AEAD of TLS 1.3 and 1.2 (ECDSA, as rcgen's certificates are).
const SUITES: [SupportedCipherSuite; 6] = [
    suites::TLS13_AES_128_GCM_SHA256,
    suites::TLS13_AES_256_GCM_SHA384,
    suites::TLS13_CHACHA20_POLY1305_SHA256,
    suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

fn cross(stream: &TlsStream) -> TlsStream {
    round_trip(stream).unwrap()
}

fn line(stream: &mut TlsStream) -> String {
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    line
}

#[test]
fn every_suite_carries_on_after_both_ends_cross() {
    for suite in SUITES {
        let (mut client, mut server) = pair(suite);
        assert_eq!(client.cipher_suite(), suite.suite());
        assert_eq!(server.protocol_version(), suite.version().version);
        client.write_all(b"before\n").unwrap();
        assert_eq!(line(&mut server), "before\n");
        let mut client = cross(&client);
        let mut server = cross(&server);
        client.write_all(b"after, from the client\n").unwrap();
        server.write_all(b"after, from the server\n").unwrap();
        assert_eq!(line(&mut server), "after, from the client\n", "{suite:?}");
        assert_eq!(line(&mut client), "after, from the server\n", "{suite:?}");
        server.close().unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0, "{suite:?}");
        assert!(client.write_all(b"still open\n").is_ok(), "{suite:?}");
        assert_eq!(line(&mut server), "still open\n", "{suite:?}");
    }
}

#[test]
fn key_updates_both_ways_across_handovers() {
    for suite in &SUITES[..3] {
        let (mut client, mut server) = pair(*suite);
        client.update_keys().unwrap();
        client.write_all(b"one\n").unwrap();
        assert_eq!(line(&mut server), "one\n");
        // The server answered the requested update; the client follows it
        // once it reads, after crossing.
        server.write_all(b"two\n").unwrap();
        let mut client = cross(&client);
        assert_eq!(line(&mut client), "two\n");
        let mut server = cross(&server);
        server.update_keys().unwrap();
        server.write_all(b"three\n").unwrap();
        let mut client = cross(&client);
        assert_eq!(line(&mut client), "three\n");
        client.write_all(b"four\n").unwrap();
        assert_eq!(line(&mut server), "four\n");
    }
}

#[test]
fn tls12_refuses_a_key_update() {
    let (mut client, _server) = pair(SUITES[4]);
    let error = client.update_keys().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::Unsupported);
}

#[test]
fn a_partial_record_and_unread_plaintext_cross() {
    let (mut client, mut server) = pair(SUITES[0]);
    let sent: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    server.write_all(&sent).unwrap();
    let mut first = [0; 10];
    client.read_exact(&mut first).unwrap();
    // One read of the socket took two records and the start of the third.
    assert!(!client.session.incoming.is_empty());
    assert!(!client.buffer().is_empty());
    let mut client = cross(&client);
    let mut rest = vec![0; sent.len() - 10];
    client.read_exact(&mut rest).unwrap();
    assert_eq!([&first[..], &rest[..]].concat(), sent);
}

#[test]
fn the_old_stream_goes_on_when_the_copy_is_dropped() {
    // A failed handover: the state was encoded and decoded, and the new
    // process's copy never used.
    let (mut client, mut server) = pair(SUITES[1]);
    client.write_all(b"a\n").unwrap();
    drop(cross(&client));
    client.write_all(b"b\n").unwrap();
    assert_eq!(line(&mut server), "a\n");
    assert_eq!(line(&mut server), "b\n");
}

#[test]
fn a_fatal_alert_and_a_truncation_are_errors() {
    let (mut client, server) = pair(SUITES[0]);
    drop(server);
    let error = client.fill_buf().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    let (mut client, mut server) = pair(SUITES[0]);
    // A byte of the record flipped on the way.
    server.session.seal_data(b"hello").unwrap();
    let last = server.session.outgoing.len() - 1;
    server.session.outgoing[last] ^= 1;
    server.flush().unwrap();
    let error = client.fill_buf().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    assert!(error.to_string().contains("did not decrypt"), "{error}");
    // The client told the server, with bad_record_mac.
    let error = server.fill_buf().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted, "{error}");
    assert!(error.to_string().contains("BadRecordMac"), "{error}");
}

#[test]
fn the_keys_cross_on_the_fd_channel_only() {
    let (client, _server) = pair(SUITES[0]);
    let mut sink = crate::handover::InMemory::default();
    let encoded = crate::Encoder::encode(&mut sink, &client).unwrap();
    // The stream's side table: the secrets' pipe, then the socket.
    assert_eq!(encoded.fds.len(), 2);
    assert!(!encoded.fds[0].is_state() && encoded.fds[1].is_state());
    drop(encoded);
    let key = client.session.tx.keys.key.to_vec();
    assert_eq!(key.len(), 16);
    let found = sink.stream.windows(16).any(|window| window == key);
    assert!(!found, "the key is in the state stream");
}

#[derive(Clone, Debug)]
enum Op {
    Write { client: bool, len: usize },
    Read { client: bool },
    Cross { client: bool },
    Update { client: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0..40_000usize).prop_map(|(client, len)| Op::Write { client, len }),
        4 => any::<bool>().prop_map(|client| Op::Read { client }),
        2 => any::<bool>().prop_map(|client| Op::Cross { client }),
        1 => any::<bool>().prop_map(|client| Op::Update { client }),
    ]
}

/// One end of the pair, with what it has sent and received.
struct End {
    stream: TlsStream,
    sent: Vec<u8>,
    received: Vec<u8>,
    next: u8,
}

impl End {
    fn write(&mut self, len: usize) {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                self.next = self.next.wrapping_add(1);
                self.next
            })
            .collect();
        let mut at = 0;
        while at < bytes.len() {
            match self.stream.write(&bytes[at..]) {
                Ok(n) => at += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("{error}"),
            }
        }
        self.sent.extend_from_slice(&bytes[..at]);
        // What was not taken was never sent: the generator starts again.
        self.next = self.sent.last().copied().unwrap_or(0);
    }

    fn read(&mut self) {
        loop {
            match self.stream.fill_buf() {
                Ok([]) => return,
                Ok(bytes) => {
                    let n = bytes.len();
                    self.received.extend_from_slice(bytes);
                    self.stream.consume(n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => panic!("{error}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the order of reads, writes, key updates and handovers on
    /// either end, each end receives exactly what the other sent.
    #[test]
    fn interleaved_handovers_lose_and_repeat_nothing(
        suite in 0..6usize,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let suite = SUITES[suite];
        let (client, server) = pair(suite);
        client.get_ref().set_nonblocking(true).unwrap();
        server.get_ref().set_nonblocking(true).unwrap();
        let end = |stream| End { stream, sent: Vec::new(), received: Vec::new(), next: 0 };
        let mut ends = [end(client), end(server)];
        for op in ops {
            match op {
                Op::Write { client, len } => ends[usize::from(!client)].write(len),
                Op::Read { client } => ends[usize::from(!client)].read(),
                Op::Cross { client } => {
                    let end = &mut ends[usize::from(!client)];
                    end.stream = cross(&end.stream);
                }
                Op::Update { client } => {
                    let end = &mut ends[usize::from(!client)];
                    if end.stream.protocol_version() == rustls::ProtocolVersion::TLSv1_3 {
                        match end.stream.update_keys() {
                            Ok(()) => {}
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                            Err(error) => panic!("{error}"),
                        }
                    }
                }
            }
        }
        // Drain both ways.
        for _ in 0..10_000 {
            for end in &mut ends {
                match end.stream.flush() {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => panic!("{error}"),
                }
                end.read();
            }
            let done = ends[0].received.len() == ends[1].sent.len()
                && ends[1].received.len() == ends[0].sent.len()
                && !ends[0].stream.wants_write()
                && !ends[1].stream.wants_write();
            if done {
                break;
            }
            thread::yield_now();
        }
        prop_assert!(ends[0].received == ends[1].sent, "server to client differs");
        prop_assert!(ends[1].received == ends[0].sent, "client to server differs");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A corrupt state (any byte of a TLS stream's encoding changed, or
    /// the encoding cut short) is refused with an error, or decodes into a
    /// stream that reports errors: never a panic.
    #[test]
    fn a_corrupt_encoding_is_an_error_not_a_panic(
        suite in 0..6usize,
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let (client, mut server) = pair(SUITES[suite]);
        server.write_all(b"some data\n").unwrap();
        let mut sink = crate::handover::InMemory::default();
        let encoded = crate::Encoder::encode(&mut sink, &client).unwrap();
        let fds: Vec<_> = encoded.fds.iter().map(|fd| fd.try_clone_to_owned().unwrap()).collect();
        drop(encoded);
        let mut stream = sink.stream.clone();
        let at = at.index(stream.len());
        if cut {
            stream.truncate(at);
        } else {
            stream[at] = value;
        }
        let decoded = crate::handover::Decoder::new(&stream, sink.out_of_line, fds)
            .decode::<TlsStream>();
        if let Ok(mut stream) = decoded {
            // A corrupt length may wait for bytes that never come.
            stream.get_ref().set_read_timeout(Some(std::time::Duration::from_secs(1))).unwrap();
            let mut line = String::new();
            let _ = stream.read_line(&mut line);
            let _ = stream.write_all(b"reply\n");
        }
    }
}
