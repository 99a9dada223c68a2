//! A TLS client (`testdata-tls`) whose session crosses upgrades, against
//! two real TLS servers: rustls, run here record by record, so that the
//! test can send a KeyUpdate at the moment it chooses, cut a record into
//! pieces around a handover, and end with close_notify; and OpenSSL's
//! `s_server`, another implementation, driven by its stdin commands.

mod common;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use common::{Lines, Pids, Run, Spawn, TIMEOUT, TempDir, field};
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
        let pki = Pki::new();
        let config = ServerConfig::builder_with_protocol_versions(&[version])
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(pki.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pki.key.as_bytes()).unwrap(),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let run = client(listener.local_addr().unwrap().port(), &pki);
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

/// A CA, and a server certificate for "localhost" that it signed, as PEM
/// files in a directory of their own.
struct Pki {
    dir: TempDir,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let dir = TempDir::new("tls-pki");
        let pki = Pki {
            dir,
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        std::fs::write(pki.path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(pki.path("cert.pem"), &pki.cert).unwrap();
        std::fs::write(pki.path("key.pem"), &pki.key).unwrap();
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

/// Starts `testdata-tls` against the server at `port`, trusting `pki`'s CA.
fn client(port: u16, pki: &Pki) -> Run {
    Spawn::new("tls")
        .binary(TESTDATA_TLS)
        .without_log()
        .args(&["--connect", &port.to_string(), "--ca", &pki.path("ca.pem")])
        .spawn()
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
        // Records that arrive meanwhile (a KeyUpdate too, in TLS 1.3) are
        // read by the old process once it has its state back: the new one
        // never touched the socket.
        server.send("upgrade-broken");
        if expected == ProtocolVersion::TLSv1_3 {
            server.tls.refresh_traffic_keys().unwrap();
        }
        server.send("sent during the rollback");
        let rolled_back = server.line();
        assert!(rolled_back.starts_with("rolled back: "), "{rolled_back}");
        assert_eq!(server.line(), "echo sent during the rollback");
        let status = server.command("status");
        assert_eq!(status, format!("status generation=4 pid={}", pids[3]));
        // A new build that installs no crypto provider cannot resume the
        // session, and says what to do; the old one carries on.
        let failed = server.command("upgrade-no-provider");
        assert!(failed.starts_with("failed: "), "{failed}");
        assert!(failed.contains("install_default"), "{failed}");
        assert_eq!(server.command("status"), status);
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
        let (mut run, mut server, hello) = Server::start(version);
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
        let handed = run
            .stderr
            .wait_for("the old process's TLS hand-over", |line| {
                line.contains("TLS: handing over")
                    && line.contains(&format!("pid={} ", pid_of(&hello)))
            });
        // Whether the second piece was in by the time the old process read
        // is up to the scheduler; either way the start of the record crossed.
        let held = [
            "with 7 bytes of a record not whole",
            "with 1500 bytes of a record not whole",
        ];
        assert!(held.iter().any(|held| handed.contains(held)), "{handed}");
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

/// `openssl s_server`: one connection, TLS `version_flag`, commands on its
/// stdin (`k`/`K`: a KeyUpdate, not asking / asking for the client's;
/// other lines: data to the client), and
/// what it receives on its stdout, among its own messages.
struct OpensslServer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: Lines,
}

impl OpensslServer {
    fn start(pki: &Pki, version_flag: &str) -> Option<(OpensslServer, u16)> {
        let Ok(openssl) = which("openssl") else {
            skip("openssl is not on PATH");
            return None;
        };
        // s_server takes a port, not a listener: find a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // s_server prints its own messages through stdio, which a pipe
        // would hold back until it exits: stdbuf makes them lines.
        let mut child = std::process::Command::new("stdbuf")
            .arg("-oL")
            .arg(openssl)
            .args(["s_server", "-naccept", "1", version_flag])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", &pki.path("cert.pem"), "-key", &pki.path("key.pem")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = Lines::spawn("s_server", child.stdout.take().unwrap(), Pids::default());
        let mut server = OpensslServer {
            child,
            stdin,
            stdout,
        };
        server.stdout.expect("ACCEPT");
        Some((server, port))
    }

    fn say(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn command(&mut self, line: &str, answer: &str) -> String {
        self.say(line);
        self.stdout.expect(answer)
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}

fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, so this test must run, but {reason}; .ci/run installs it");
    }
    eprintln!("skipped: {reason} (with CI=true this is a failure)");
}

#[test]
fn openssl_key_updates_around_a_handover_and_close_notify() {
    let pki = Pki::new();
    let Some((mut server, port)) = OpensslServer::start(&pki, "-tls1_3") else {
        return;
    };
    let mut run = client(port, &pki);
    let hello = server.stdout.expect("hello generation=1 ");
    assert_eq!(field(&hello, "version"), "TLSv1_3");
    // OpenSSL's KeyUpdate before a handover, and one asking for the
    // client's right after it: the new process follows both and answers.
    server.command("k", "SSL_do_handshake -> 1");
    assert_eq!(server.command("before", "echo "), "echo before");
    let ready = server.command("upgrade", "ready ");
    assert!(ready.starts_with("ready generation=2 "), "{ready}");
    server.command("K", "SSL_do_handshake -> 1");
    assert_eq!(server.command("after", "echo "), "echo after");
    // The program's own KeyUpdate, asking for OpenSSL's.
    assert_eq!(server.command("keyupdate", "updated"), "updated");
    assert_eq!(server.command("then", "echo "), "echo then");
    let ready = server.command("upgrade", "ready ");
    assert!(ready.starts_with("ready generation=3 "), "{ready}");
    // The program's close_notify, then OpenSSL's.
    server.command("close", "DONE");
    run.stdout.expect("closed cleanly");
    assert_eq!(run.wait_first().code(), Some(0));
}

#[test]
fn openssl_tls12_upgrades_and_close_notify() {
    let pki = Pki::new();
    let Some((mut server, port)) = OpensslServer::start(&pki, "-tls1_2") else {
        return;
    };
    let mut run = client(port, &pki);
    let hello = server.stdout.expect("hello generation=1 ");
    assert_eq!(field(&hello, "version"), "TLSv1_2");
    let ready = server.command("upgrade", "ready ");
    assert!(ready.starts_with("ready generation=2 "), "{ready}");
    assert_eq!(server.command("still here", "echo "), "echo still here");
    let ready = server.command("upgrade", "ready ");
    assert!(ready.starts_with("ready generation=3 "), "{ready}");
    server.command("close", "DONE");
    run.stdout.expect("closed cleanly");
    assert_eq!(run.wait_first().code(), Some(0));
}
