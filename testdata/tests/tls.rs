//! A TLS client (`testdata-tls`) whose session crosses upgrades, against a
//! real TLS server: rustls, run here record by record, so that the test can
//! send a KeyUpdate at the moment it chooses, cut a record into pieces
//! around a handover, and end with close_notify.

mod common;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use common::{Run, Spawn, TIMEOUT, field};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ProtocolVersion, ServerConfig, ServerConnection};

const TESTDATA_TLS: &str = env!("CARGO_BIN_EXE_testdata-tls");

/// The server end: a rustls connection over an accepted socket, driven by
/// hand.
struct Server {
    socket: TcpStream,
    tls: ServerConnection,
    received: Vec<u8>,
}

impl Server {
    /// Starts `testdata-tls` against a fresh server that speaks only
    /// `version`, and completes the handshake.
    fn start(version: &'static rustls::SupportedProtocolVersion) -> (Run, Server, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca)
            .unwrap();
        let config = ServerConfig::builder_with_protocol_versions(&[version])
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let spawn = Spawn::new("tls").binary(TESTDATA_TLS).without_log();
        let ca_path = spawn_dir_file(&ca_cert.pem());
        let run = spawn
            .args(&["--connect", &port, "--ca", ca_path.to_str().unwrap()])
            .spawn();
        let (socket, _) = listener.accept().unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut server = Server {
            socket,
            tls: ServerConnection::new(Arc::new(config)).unwrap(),
            received: Vec::new(),
        };
        let hello = server.line();
        assert!(hello.starts_with("hello generation=1 "), "{hello:?}");
        (run, server, hello)
    }

    /// Writes everything rustls has sealed.
    fn send_sealed(&mut self) {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.socket).unwrap();
        }
    }

    fn send(&mut self, line: &str) {
        self.tls.writer().write_all(line.as_bytes()).unwrap();
        self.tls.writer().write_all(b"\n").unwrap();
        self.send_sealed();
    }

    /// The records of `line`, sealed but not sent.
    fn sealed(&mut self, line: &str) -> Vec<u8> {
        self.tls.writer().write_all(line.as_bytes()).unwrap();
        self.tls.writer().write_all(b"\n").unwrap();
        let mut records = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut records).unwrap();
        }
        records
    }

    /// The next line from the client; the handshake is completed on the
    /// way, and every KeyUpdate answered.
    fn line(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(end) = self.received.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.received.drain(..=end).collect();
                let line = String::from_utf8(line).unwrap().trim_end().to_owned();
                eprintln!("[client] {line}");
                return line;
            }
            assert!(Instant::now() < deadline, "no line within {TIMEOUT:?}");
            self.send_sealed();
            let read = self.tls.read_tls(&mut self.socket).unwrap();
            let state = self.tls.process_new_packets().unwrap();
            if state.plaintext_bytes_to_read() > 0 {
                let mut plain = vec![0; state.plaintext_bytes_to_read()];
                self.tls.reader().read_exact(&mut plain).unwrap();
                self.received.extend_from_slice(&plain);
            }
            assert!(
                read > 0 || state.peer_has_closed() || !self.received.is_empty(),
                "the client hung up"
            );
            if state.peer_has_closed() && !self.received.contains(&b'\n') {
                return String::new();
            }
            self.send_sealed();
        }
    }

    fn command(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }
}

/// Writes `contents` to a file of its own that outlives the test.
fn spawn_dir_file(contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mitosis-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("ca-{}.pem", rand_suffix()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn rand_suffix() -> u64 {
    let mut bytes = [0; 8];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).unwrap();
    u64::from_ne_bytes(bytes)
}

fn pid_of(line: &str) -> u32 {
    field(line, "pid").parse().unwrap()
}

fn versions() -> [(&'static rustls::SupportedProtocolVersion, ProtocolVersion); 2] {
    [
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
    ]
}

#[test]
fn upgrades_and_a_rollback_keep_the_session() {
    for (version, expected) in versions() {
        let (mut run, mut server, hello) = Server::start(version);
        assert_eq!(field(&hello, "version"), format!("{expected:?}"));
        let mut pids = vec![pid_of(&hello)];
        for generation in 2..=4 {
            let ready = server.command("upgrade");
            assert_eq!(
                field(&ready, "generation"),
                generation.to_string(),
                "{ready}"
            );
            assert!(
                !pids.contains(&pid_of(&ready)),
                "{ready} reuses one of {pids:?}"
            );
            pids.push(pid_of(&ready));
            assert_eq!(
                server.command(&format!("line {generation}")),
                format!("echo line {generation}")
            );
        }
        // The new process dies after decoding the session: the old one
        // carries on with the same keys and sequence numbers.
        let rolled_back = server.command("upgrade-broken");
        assert!(rolled_back.starts_with("rolled back: "), "{rolled_back}");
        let status = server.command("status");
        assert_eq!(status, format!("status generation=4 pid={}", pids[3]));
        let ready = server.command("upgrade");
        assert_eq!(field(&ready, "generation"), "5", "{ready}");
        assert_eq!(
            server.command("after the rollback"),
            "echo after the rollback"
        );
        // close_notify from the server: the client answers, says its own,
        // and exits.
        server.tls.send_close_notify();
        server.send_sealed();
        assert_eq!(server.line(), "closed by peer");
        assert_eq!(server.line(), "", "the client's close_notify");
        run.stdout.expect("closed");
        drop(run);
    }
}

#[test]
fn key_updates_both_ways_around_a_handover() {
    let (_run, mut server, _) = Server::start(&rustls::version::TLS13);
    // The client asks; rustls answers with its own update.
    assert_eq!(server.command("keyupdate"), "updated");
    assert_eq!(server.command("one"), "echo one");
    // A KeyUpdate sent while the client hands over, then data under the
    // new keys: the new process reads both first thing.
    server.send("upgrade");
    server.tls.refresh_traffic_keys().unwrap();
    server.send("under new keys");
    let ready = server.line();
    assert!(ready.starts_with("ready generation=2 "), "{ready}");
    assert_eq!(server.line(), "echo under new keys");
    // And one right after it took over.
    server.tls.refresh_traffic_keys().unwrap();
    assert_eq!(server.command("two"), "echo two");
    assert_eq!(server.command("keyupdate"), "updated");
    let ready = server.command("upgrade");
    assert!(ready.starts_with("ready generation=3 "), "{ready}");
    assert_eq!(server.command("three"), "echo three");
}

#[test]
fn a_record_cut_around_a_handover_arrives_once() {
    for (version, _) in versions() {
        let (_run, mut server, _) = Server::start(version);
        let upgrade = server.sealed("upgrade");
        let payload = "x".repeat(3000);
        let record = server.sealed(&payload);
        // The start of the next record comes with `upgrade`, in one write:
        // the old process reads it with the command and hands it over
        // unopened.
        server
            .socket
            .write_all(&[&upgrade[..], &record[..7]].concat())
            .unwrap();
        // More of it while the new process starts, the rest once it is
        // there.
        server.socket.write_all(&record[7..1500]).unwrap();
        let ready = server.line();
        assert!(ready.starts_with("ready generation=2 "), "{ready}");
        for piece in record[1500..].chunks(400) {
            server.socket.write_all(piece).unwrap();
        }
        assert_eq!(server.line(), format!("echo {payload}"));
        assert_eq!(server.command("after"), "echo after");
    }
}

#[test]
fn a_tampered_record_is_an_error_not_a_hang() {
    let (mut run, mut server, _) = Server::start(&rustls::version::TLS13);
    let mut record = server.sealed("hello");
    let last = record.len() - 1;
    record[last] ^= 0x40;
    server.socket.write_all(&record).unwrap();
    let error = run.stderr.expect("testdata-tls: ");
    assert!(error.contains("did not decrypt"), "{error}");
    let status = run.wait_first();
    assert_eq!(status.code(), Some(1));
    // The client told the server why.
    let mut alert = Vec::new();
    let _ = server.socket.read_to_end(&mut alert);
    let error = server
        .tls
        .read_tls(&mut &alert[..])
        .and_then(|_| server.tls.process_new_packets().map_err(io::Error::other))
        .unwrap_err();
    assert!(error.to_string().contains("BadRecordMac"), "{error}");
}
