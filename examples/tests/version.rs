//! `VERSION` names the build that answers it: `echo-server` and
//! `echo-server-next` run the same code and answer with their own versions,
//! in order with the requests around it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[test]
fn version_request_names_the_running_build() {
    let version = env!("CARGO_PKG_VERSION");
    let next = format!("{version}-next");
    for (binary, expected) in [
        (env!("CARGO_BIN_EXE_echo-server"), version),
        (env!("CARGO_BIN_EXE_echo-server-next"), next.as_str()),
    ] {
        let (_server, port) = start(binary);
        let mut connection = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        // Only a broken server makes the test wait this long.
        connection
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        connection
            .write_all(b"1 hello\nVERSION\n2 bye\n")
            .expect("send the requests");
        let mut replies = BufReader::new(connection);
        for want in [
            "1 hello".to_string(),
            format!("VERSION {expected}"),
            "2 bye".to_string(),
        ] {
            let mut line = String::new();
            replies.read_line(&mut line).expect("read a reply");
            assert_eq!(line, format!("{want}\n"), "{binary}");
        }
    }
}

/// Starts `binary` on a free port, and returns it (killed when dropped) with
/// the port it says it listens on.
fn start(binary: &str) -> (KillOnDrop, u16) {
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("start {binary}: {error}"));
    let stdout = child.stdout.take().unwrap();
    let server = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's first line");
    let port = line
        .trim_end()
        .strip_prefix("listening ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{binary} said {line:?}, not `listening <port>`"));
    (server, port)
}

/// A server, killed at the end of the test, or when it fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}
