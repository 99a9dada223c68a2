//! TLS in the examples, against real peers and real re-exec'd processes.
//! Each test makes its own CA and a server certificate for `localhost` and
//! `127.0.0.1` (rcgen), and trusts only that CA.
//!
//! - The IRC bot over TLS to ngircd (Debian's, built with GnuTLS), once
//!   with TLS 1.3 and once with 1.2 forced by a GnuTLS priority string: an
//!   observer and a flooder join over plain TCP on the same server, the bot
//!   upgrades five times during a flood of 1,000 lines, then a broken build
//!   rolls back on the same TLS session and the next upgrade succeeds. The
//!   bot logs the session's protocol and suite at connect and in every new
//!   generation; they must be the ones asked for, every time.
//! - The echo server over TLS under loadgen's 64 TLS clients: 20 upgrades,
//!   0 failures.
//!
//! Without ngircd the bot's tests skip with a reason, except under
//! `CI=true`, where they fail: `.ci/run` installs it.

mod env_support;
mod irc_support;

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;

use env_support::{
    ECHO_SERVER, KillOnDrop, Process, Survivors, chain_of, clean_command, lines_of, listening_port,
    relay, run_loadgen_with, scratch_dir,
};
use irc_support::{
    ADMIN, Binaries, Bot, Client, Ngircd, NgircdTls, a_broken_build_rolls_back,
    five_upgrades_during_a_flood,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

#[test]
fn the_bot_over_tls_1_3_upgrades_under_a_flood_and_rolls_back() {
    bot_over_tls("tls13", None, "TLSv1_3 TLS13_");
}

#[test]
fn the_bot_over_tls_1_2_upgrades_under_a_flood_and_rolls_back() {
    bot_over_tls("tls12", Some("NORMAL:-VERS-TLS1.3"), "TLSv1_2 TLS_ECDHE_");
}

/// The scenario of the two tests above: ngircd's TLS port with the GnuTLS
/// `priority` (ngircd's default if `None`); the session the bot logs must
/// start with `expected` ("TLSv1_3 TLS13_") and stay the same throughout.
fn bot_over_tls(name: &str, priority: Option<&'static str>, expected: &str) {
    let pki = TestPki::new();
    let Some(server) = Ngircd::start_with(Some(&NgircdTls {
        cert_pem: pki.cert_pem.clone(),
        key_pem: pki.key_pem.clone(),
        priority,
    })) else {
        return;
    };
    let tls_port = server.tls_port.expect("ngircd's TLS port");
    let binaries = Binaries::new(name);
    let ca = binaries.dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let mut observer = Client::join(&server, ADMIN);
    let flooder = Client::join(&server, "flooder");
    let mut bot = Bot::start_with(
        &binaries.installed,
        &[
            "--server",
            &format!("127.0.0.1:{tls_port}"),
            "--tls",
            "--tls-ca",
            ca.to_str().unwrap(),
        ],
    );
    observer.expect_bot_join();

    let connected = bot.log_line(bot.first_pid(), "connected to ");
    let (_, session) = connected
        .split_once(" with TLS: ")
        .unwrap_or_else(|| panic!("the bot connected without TLS: {connected:?}"));
    let session = session.to_owned();
    assert!(
        session.starts_with(expected),
        "{name}: the bot negotiated {session:?}, not {expected}…"
    );
    eprintln!("{name}: the bot connected to ngircd's TLS port with {session}");
    let goes_on = format!("the TLS session goes on: {session}");
    let same_session = |bot: &mut Bot, pid: u32| {
        assert_eq!(
            bot.log_line(pid, "the TLS session goes on: "),
            goes_on,
            "{name}: generation {pid}"
        );
    };

    let (status, mut pids) =
        five_upgrades_during_a_flood(name, &mut observer, flooder, &mut bot, |bot, report| {
            same_session(bot, report.new_pid)
        });
    let report = a_broken_build_rolls_back(name, &mut observer, &mut bot, &binaries, &status);
    same_session(&mut bot, report.new_pid);
    pids.push(report.new_pid);

    observer.assert_bot_never_left_or_rejoined();
    eprintln!("{name}: generations {pids:?} on one {session} session, a rollback included");
}

#[test]
fn the_echo_server_over_tls_upgrades_20_times_under_64_tls_clients() {
    const UPGRADES: u64 = 20;
    let pki = TestPki::new();
    let dir = scratch_dir("tls-echo");
    let [ca, cert, key] = [
        ("ca.pem", &pki.ca_pem),
        ("cert.pem", &pki.cert_pem),
        ("key.pem", &pki.key_pem),
    ]
    .map(|(file, pem)| {
        let path = dir.join(file);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    });
    let mut first = clean_command(ECHO_SERVER)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("start echo-server");
    relay(first.0.stderr.take().unwrap(), "echo-server: ");
    let port = listening_port(&lines_of(first.0.stdout.take().unwrap()));

    let run = run_loadgen_with(port, UPGRADES, &["--tls", "--tls-ca", &ca]);
    assert_eq!(run.upgrades.len() as u64, UPGRADES, "{}", run.summary);
    let pids = chain_of(first.0.id(), 1, &run.upgrades);
    // Every handover carried a TLS request cut in two and replies the
    // server could not write yet.
    assert_eq!(run.result["held_partial"], UPGRADES, "{}", run.summary);
    assert!(run.result["held_backlog"] > 0, "{}", run.summary);

    let mut survivors = Survivors::default();
    let last = *pids.last().unwrap();
    survivors.adopt(last).expect("the last generation serves");
    let status = first.expect_exit("the first generation");
    assert!(status.success(), "the first generation: {status}");
    for &pid in &pids[1..pids.len() - 1] {
        if let Some(old) = Process::open(pid) {
            old.expect_exit("an old generation");
        }
    }

    // The last generation answers a TLS client of the test's own.
    let reply = echo_over_tls(port, Path::new(&ca), "last 1\n");
    assert_eq!(reply, "last 1\n");
    eprintln!(
        "{UPGRADES} upgrades of the TLS echo server, generations {pids:?}\n{}",
        run.summary
    );
}

/// Sends one request over a TLS connection of its own and returns the
/// reply.
fn echo_over_tls(port: u16, ca: &Path, request: &str) -> String {
    mitosis_examples::tls::install_crypto_provider();
    let config = mitosis_examples::tls::client_config(Some(ca)).unwrap();
    let name = "localhost".try_into().unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(env_support::PATIENCE))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    stream.write_all(request.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut reply = String::new();
    stream.read_line(&mut reply).unwrap();
    reply
}

/// A CA of the test's own, and a server certificate it signed for
/// `localhost` and `127.0.0.1`, in PEM.
struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestPki {
    fn new() -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "mitosis test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
