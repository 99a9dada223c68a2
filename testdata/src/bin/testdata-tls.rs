//! `testdata-tls`: a TLS client whose connection crosses upgrades, for
//! `tests/tls.rs`, whose TLS server (rustls, driven record by record) is
//! the peer.
//!
//! `testdata-tls --connect <port> --ca <pem>` connects to
//! `127.0.0.1:<port>`, verifies the server as `localhost` against the CA
//! file, and writes `hello generation=1 pid=<pid> version=<v> suite=<s>`.
//! A new generation writes `ready generation=<n> pid=<pid> suite=<s>` as
//! its first line. Then every generation answers the peer's lines:
//!
//! - `upgrade` → splits into its own binary; the new process says `ready`.
//!   On a failure the old one answers `failed: <error>`.
//! - `upgrade-broken` → splits with `MITOSIS_FAULT=new:commit:kill`, so the
//!   new process dies after decoding the state, before it commits: the old
//!   one answers `rolled back: <error>` and carries on with the session.
//! - `upgrade-no-provider` → splits with `TESTDATA_NO_PROVIDER=1`, which
//!   makes the new process skip installing rustls's crypto provider, so it
//!   cannot resume the session: the old one answers `failed: <error>`.
//! - `keyupdate` → sends a KeyUpdate (asking for the peer's), answers
//!   `updated`.
//! - `status` → `status generation=<n> pid=<pid>`.
//! - `close` → sends close_notify, reads until the peer's own, prints
//!   `closed cleanly` on stdout and exits 0.
//! - anything else → `echo <line>`.
//!
//! When the peer sends close_notify, the program answers `closed by peer`
//! (TLS 1.3 and 1.2 both let the other side finish), sends its own
//! close_notify, prints `closed` on stdout and exits 0. Any error goes to
//! stderr, with exit status 1, and so do mitosis's log records.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mitosis::tls::{TlsStream, rustls};
use mitosis::{Handover, Outcome};

#[derive(Parser)]
struct Options {
    #[arg(long)]
    connect: u16,
    #[arg(long)]
    ca: PathBuf,
}

#[derive(Handover)]
struct State {
    conn: TlsStream<TcpStream>,
    generation: u64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("testdata-tls: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    testdata::mitosis_log_to_stderr();
    if std::env::var_os("TESTDATA_NO_PROVIDER").is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut state = match mitosis::init::<State>()? {
        Some(mut state) => {
            state.generation += 1;
            let ready = format!(
                "ready generation={} pid={} suite={:?}\n",
                state.generation,
                std::process::id(),
                state.conn.cipher_suite()
            );
            state.conn.write_all(ready.as_bytes())?;
            state
        }
        None => connect(&Options::parse_from(mitosis::args()))?,
    };
    let mut line = String::new();
    loop {
        line.clear();
        if state.conn.read_line(&mut line)? == 0 {
            state.conn.write_all(b"closed by peer\n")?;
            state.conn.close()?;
            println!("closed");
            return Ok(());
        }
        let command = line.trim_end();
        let answer = match command {
            "upgrade" | "upgrade-broken" | "upgrade-no-provider" => {
                let mut options = mitosis::SplitOptions::new();
                if command == "upgrade-broken" {
                    options.env("MITOSIS_FAULT", "new:commit:kill");
                }
                if command == "upgrade-no-provider" {
                    options.env("TESTDATA_NO_PROVIDER", "1");
                }
                match options.split(state).wait() {
                    Outcome::Done { .. } => return Ok(()),
                    Outcome::Failed { state: kept, error } => {
                        state = kept;
                        match command {
                            "upgrade-broken" => format!("rolled back: {error}"),
                            _ => format!("failed: {error}"),
                        }
                    }
                }
            }
            "close" => {
                state.conn.close()?;
                let mut rest = Vec::new();
                state.conn.read_to_end(&mut rest)?;
                println!("closed cleanly");
                return Ok(());
            }
            "keyupdate" => {
                state.conn.update_keys()?;
                "updated".into()
            }
            "status" => format!(
                "status generation={} pid={}",
                state.generation,
                std::process::id()
            ),
            other => format!("echo {other}"),
        };
        state.conn.write_all(format!("{answer}\n").as_bytes())?;
    }
}

fn connect(options: &Options) -> Result<State, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&options.ca)
        .map_err(|error| format!("could not read {}: {error}", options.ca.display()))?;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let socket = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, options.connect))?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut conn = TlsStream::connect(Arc::new(config), name, socket)?;
    let hello = format!(
        "hello generation=1 pid={} version={:?} suite={:?}\n",
        std::process::id(),
        conn.protocol_version(),
        conn.cipher_suite()
    );
    conn.write_all(hello.as_bytes())?;
    Ok(State {
        conn,
        generation: 1,
    })
}
