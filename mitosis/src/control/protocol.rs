//! The control socket's wire form (PROTOCOL.md, "The control socket"):
//! one request line from the client, one answer from the program.
//!
//! A request is one line of at most [`MAX_REQUEST`] bytes: `upgrade`,
//! `upgrade <path>`, `previous` or `status`. An answer is a verdict line
//! (`done`, `failed`, `status` or `error`), then `key: value` lines, then
//! an empty line. Values never hold a line break.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The longest request line, with its newline.
pub(crate) const MAX_REQUEST: usize = 4096;

/// What a client asks the program to do.
///
/// With the `clap` feature it is also a clap subcommand, so that a program
/// can mount `upgrade`, `previous` and `status` in its own command line,
/// as `mitosisctl` does.
///
/// ```
/// use mitosis::control::Command;
/// assert_eq!(Command::Upgrade.to_string(), "upgrade");
/// assert_eq!(Command::UpgradeTo("/opt/bot/v2".into()).to_string(), "upgrade /opt/bot/v2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Upgrade to the binary at the path the program upgrades from (the
    /// one it was started from): the new build on disk.
    Upgrade,
    /// Upgrade to the binary at this path.
    UpgradeTo(PathBuf),
    /// Go back to the previous build, even if its file has been replaced.
    Previous,
    /// Report the pid, the generation, the binary, and the last upgrade.
    Status,
}

impl Command {
    /// The request line, without its newline.
    pub(crate) fn line(&self) -> Vec<u8> {
        match self {
            Command::Upgrade => b"upgrade".to_vec(),
            Command::UpgradeTo(path) => [b"upgrade ", path.as_os_str().as_bytes()].concat(),
            Command::Previous => b"previous".to_vec(),
            Command::Status => b"status".to_vec(),
        }
    }

    /// What it asks, worded to complete "could not ask the program to ...".
    pub(crate) fn action(&self) -> String {
        match self {
            Command::Upgrade => "upgrade".into(),
            Command::UpgradeTo(path) => format!("upgrade to {}", path.display()),
            Command::Previous => "go back to its previous build".into(),
            Command::Status => "report its status".into(),
        }
    }

    /// Reads a request line (without its newline). The error says what is
    /// wrong, for the client.
    pub(crate) fn parse(line: &[u8]) -> Result<Command, String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line {
            b"upgrade" => Ok(Command::Upgrade),
            b"previous" | b"rollback" => Ok(Command::Previous),
            b"status" => Ok(Command::Status),
            _ => match line.strip_prefix(b"upgrade ") {
                Some(path) if path.first() == Some(&b'/') => {
                    Ok(Command::UpgradeTo(OsStr::from_bytes(path).into()))
                }
                Some(_) => Err("the binary path must be absolute".into()),
                None => Err(format!(
                    "unknown request {:?}; the requests are: upgrade, upgrade <absolute path>, \
                     previous, status",
                    String::from_utf8_lossy(&line[..line.len().min(64)])
                )),
            },
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.line()))
    }
}

/// How the program answered.
///
/// ```
/// use mitosis::control::Verdict;
/// assert!(Verdict::Done.succeeded());
/// assert!(!Verdict::Failed.succeeded());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upgrade is done: a new process has taken over.
    Done,
    /// The upgrade failed, and the program carries on as it was.
    Failed,
    /// The answer to `status`.
    Status,
    /// The request was refused: not allowed, malformed, or an upgrade is
    /// already running.
    Error,
}

impl Verdict {
    /// Whether the request did what it asked: `Done` or `Status`.
    ///
    /// ```
    /// assert!(mitosis::control::Verdict::Status.succeeded());
    /// ```
    pub fn succeeded(self) -> bool {
        matches!(self, Verdict::Done | Verdict::Status)
    }

    fn word(self) -> &'static str {
        match self {
            Verdict::Done => "done",
            Verdict::Failed => "failed",
            Verdict::Status => "status",
            Verdict::Error => "error",
        }
    }
}

/// The program's answer to a [`Command`]: a [`Verdict`] and named fields.
/// It prints as it crossed the socket: the verdict, then `key: value`
/// lines.
///
/// ```
/// let answer: mitosis::control::Answer = "done\nnew-pid: 42\n".parse().unwrap();
/// assert!(answer.succeeded());
/// assert_eq!(answer.field("new-pid"), Some("42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    verdict: Verdict,
    fields: Vec<(String, String)>,
}

impl Answer {
    pub(crate) fn new(verdict: Verdict) -> Answer {
        Answer {
            verdict,
            fields: Vec::new(),
        }
    }

    pub(crate) fn error(message: impl fmt::Display) -> Answer {
        Answer::new(Verdict::Error).with("error", message)
    }

    /// Adds a field; line breaks in the value become spaces.
    pub(crate) fn with(mut self, key: &str, value: impl fmt::Display) -> Answer {
        let value = value.to_string().replace(['\r', '\n'], " ");
        self.fields.push((key.to_owned(), value));
        self
    }

    /// The verdict.
    ///
    /// ```
    /// let answer: mitosis::control::Answer = "failed\n".parse().unwrap();
    /// assert_eq!(answer.verdict(), mitosis::control::Verdict::Failed);
    /// ```
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Whether the request did what it asked (see [`Verdict::succeeded`]).
    ///
    /// ```
    /// let answer: mitosis::control::Answer = "error\nerror: busy\n".parse().unwrap();
    /// assert!(!answer.succeeded());
    /// ```
    pub fn succeeded(&self) -> bool {
        self.verdict.succeeded()
    }

    /// A field's value: for `done`, `old-pid`, `new-pid`, `generation`,
    /// `binary`, `start-ms` and `pause-ms`; for `failed`, `step` and
    /// `error` too; for `status`, see PROTOCOL.md.
    ///
    /// ```
    /// let answer: mitosis::control::Answer = "status\npid: 7\n".parse().unwrap();
    /// assert_eq!(answer.field("pid"), Some("7"));
    /// assert_eq!(answer.field("nothing"), None);
    /// ```
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The answer as it crosses the socket, with the closing empty line.
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{self}\n").into_bytes()
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.verdict.word())?;
        for (key, value) in &self.fields {
            writeln!(f, "{key}: {value}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Answer {
    type Err = String;

    /// Reads an answer up to its empty line (or the end of the text).
    fn from_str(text: &str) -> Result<Answer, String> {
        let mut lines = text.lines();
        let verdict = match lines.next().map(str::trim_end) {
            Some("done") => Verdict::Done,
            Some("failed") => Verdict::Failed,
            Some("status") => Verdict::Status,
            Some("error") => Verdict::Error,
            other => return Err(format!("the answer starts with {other:?}, not a verdict")),
        };
        let mut answer = Answer::new(verdict);
        for line in lines.take_while(|line| !line.is_empty()) {
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| format!("the answer's line {line:?} is not `key: value`"))?;
            answer.fields.push((key.to_owned(), value.to_owned()));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_as_written() {
        for command in [
            Command::Upgrade,
            Command::UpgradeTo("/opt/a b/\u{e9}".into()),
            Command::Previous,
            Command::Status,
        ] {
            assert_eq!(Command::parse(&command.line()), Ok(command));
        }
        assert_eq!(Command::parse(b"rollback"), Ok(Command::Previous));
        assert_eq!(Command::parse(b"status\r"), Ok(Command::Status));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let error = Command::parse(b"\x00\x01garbage").unwrap_err();
        assert!(error.contains("unknown request"), "{error}");
        assert!(error.contains("upgrade <absolute path>"), "{error}");
        let error = Command::parse(b"upgrade bin/bot").unwrap_err();
        assert_eq!(error, "the binary path must be absolute");
    }

    #[test]
    fn answers_read_back_as_written() {
        let answer = Answer::new(Verdict::Failed)
            .with("step", 5)
            .with("error", "line one\nline two");
        let text = String::from_utf8(answer.encode()).unwrap();
        assert_eq!(text, "failed\nstep: 5\nerror: line one line two\n\n");
        assert_eq!(text.parse::<Answer>(), Ok(answer));
        assert!("nonsense\n".parse::<Answer>().is_err());
    }
}
