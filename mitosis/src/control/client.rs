//! The client's side: one request, and the program's answer.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::protocol::{Answer, Command};
use crate::error::Error;

/// The longest answer read; real ones are a few hundred bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// Sends `command` to the program whose control socket is at `socket`,
/// and waits for its answer: for an upgrade, until the upgrade has ended,
/// however long the program's timeouts let it take. An `Err` means no
/// answer came (nobody listens there, the user may not connect, the
/// program went away); an answer of any verdict is `Ok`.
///
/// ```no_run
/// use mitosis::control::{Command, send};
/// let answer = send("/run/user/1000/myd.control".as_ref(), &Command::Upgrade)?;
/// if !answer.succeeded() {
///     eprint!("{answer}");
/// }
/// # Ok::<(), mitosis::Error>(())
/// ```
pub fn send(socket: &Path, command: &Command) -> Result<Answer, Error> {
    let failed = |reason: String| Error::Control {
        action: format!(
            "ask the program at {} to {}",
            socket.display(),
            command.action()
        ),
        reason,
    };
    let stream = UnixStream::connect(socket).map_err(|error| {
        failed(match error.kind() {
            io::ErrorKind::NotFound => {
                "no such socket: is the program running, with its control socket at this path?"
                    .into()
            }
            io::ErrorKind::ConnectionRefused => {
                "nothing listens there: the program that made the socket is gone".into()
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied: the socket belongs to another user; run as the program's \
                 user or root"
                    .into()
            }
            _ => error.to_string(),
        })
    })?;
    let mut line = command.line();
    line.push(b'\n');
    // SIGPIPE cannot kill the caller: a Unix stream refuses to write to a
    // closed peer with EPIPE only under MSG_NOSIGNAL, which std's write
    // does not pass, so the bytes go through send. A program that refuses
    // the connection (another user's, say) answers and closes at once,
    // maybe before the request went: its answer is still there to read.
    let sent = rustix::net::send(&stream, &line, rustix::net::SendFlags::NOSIGNAL);
    let text = read_answer(&stream).map_err(|error| {
        failed(match sent {
            Err(refused) => format!("sending the request: {refused}"),
            Ok(_) => format!("reading the answer: {error}"),
        })
    })?;
    if text.is_empty() {
        return Err(failed(
            "the program closed the connection without answering: it exited, or an upgrade \
             took its place just then; ask for its status"
                .into(),
        ));
    }
    text.parse().map_err(failed)
}

/// Reads the answer up to its closing empty line (at most [`MAX_ANSWER`]
/// bytes), and no further: a program that closes the connection with the
/// request unread (it refused the connection before reading it) resets
/// it, and the reset comes after the answer.
fn read_answer(mut stream: &UnixStream) -> io::Result<String> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(b"\n\n") && (answer.len() as u64) < MAX_ANSWER {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    String::from_utf8(answer)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the answer is not UTF-8"))
}

/// Run-again: asks the running copy of this program, through its control
/// socket at `socket`, to upgrade to the binary this process was started
/// from, and returns the answer. A program calls it when started with its
/// own upgrade flag (`bot --upgrade`), instead of serving: the running one
/// becomes this build, with its state and connections.
///
/// ```no_run
/// # let upgrade_flag = true;
/// if upgrade_flag {
///     let socket = mitosis::control::Control::default_path("bot")?;
///     let answer = mitosis::control::upgrade_to_this_binary(&socket)?;
///     print!("{answer}");
///     std::process::exit(if answer.succeeded() { 0 } else { 1 });
/// }
/// # Ok::<(), mitosis::Error>(())
/// ```
pub fn upgrade_to_this_binary(socket: &Path) -> Result<Answer, Error> {
    send(
        socket,
        &Command::UpgradeTo(crate::lineage::binary().to_path_buf()),
    )
}
