//! Errors, and the protocol steps they happen in.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::schema::Schema;

/// The numbered steps of a handover, as PROTOCOL.md describes them.
///
/// Every error that happens during a handover names the step it happened in,
/// so that a log line says how far the handover got.
///
/// ```
/// assert_eq!(mitosis::Step::State.to_string(), "step 6 (state transfer)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Step 1: the old process starts the new binary.
    Spawn,
    /// Step 2: the new process connects back over loopback TCP.
    Connect,
    /// Step 3: both sides prove the secret and agree on a protocol version.
    Hello,
    /// Step 4: the new process says which schemas it accepts; the old one
    /// answers with the schema it will send, or a rejection.
    Offer,
    /// Step 5: the new process sets itself up, while the old one still
    /// serves, and says READY; the old process's program then hands over.
    Ready,
    /// Step 6: the encoded state streams over TCP.
    State,
    /// Step 7: the file descriptors travel over the Unix fd channel.
    Fds,
    /// Step 8: the new process decodes the state, checks it and commits
    /// (or aborts).
    Commit,
    /// Step 9: the old process acknowledges the commit; ownership passes.
    Ack,
}

impl Step {
    /// The step's number in PROTOCOL.md.
    ///
    /// ```
    /// assert_eq!(mitosis::Step::Spawn.number(), 1);
    /// ```
    pub fn number(self) -> u8 {
        match self {
            Step::Spawn => 1,
            Step::Connect => 2,
            Step::Hello => 3,
            Step::Offer => 4,
            Step::Ready => 5,
            Step::State => 6,
            Step::Fds => 7,
            Step::Commit => 8,
            Step::Ack => 9,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Step::Spawn => "spawn",
            Step::Connect => "connect",
            Step::Hello => "hello",
            Step::Offer => "schema offer",
            Step::Ready => "set-up",
            Step::State => "state transfer",
            Step::Fds => "fd transfer",
            Step::Commit => "commit",
            Step::Ack => "commit acknowledgement",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} ({})", self.number(), self.title())
    }
}

/// Everything that can go wrong in [`init`](crate::init) or
/// [`split`](crate::split).
///
/// The `Display` text says what happened and what to do about it.
///
/// ```
/// let err = mitosis::Error::SplitInFlight;
/// assert!(err.to_string().contains("already in progress"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The `--mitosis` flag on the command line is malformed.
    BadFlag {
        /// The offending argument(s), as given.
        arg: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The process was started with `--mitosis` but without the environment
    /// that [`split`](crate::split) passes along with it.
    MissingEnvironment {
        /// The variable that is missing or malformed.
        var: &'static str,
    },
    /// The old process could not start the new binary.
    Spawn {
        /// The binary it tried to run.
        binary: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Another split from this process has not produced its outcome yet.
    SplitInFlight,
    /// An upgrade to the previous build was asked for, and this process
    /// has none: it started fresh, or the build before it sent no handle
    /// to its executable.
    NoPreviousBinary,
    /// The control socket (`mitosis::control`) could not be set up or
    /// used.
    Control {
        /// What mitosis was doing, worded to complete "could not ...".
        action: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The [`Upgrade`](crate::Upgrade) failed before, and its error was
    /// returned then.
    AlreadyFailed,
    /// An I/O error on one of the handover's sockets.
    Io {
        /// Where in the handover it happened.
        step: Step,
        /// What the OS said.
        source: io::Error,
    },
    /// Something around the handover failed: telling the service manager,
    /// starting the keeper, or setting up a signal trigger.
    Supervisor {
        /// What mitosis was doing, worded to complete "could not ...".
        action: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The other process closed the connection or went away.
    PeerGone {
        /// Where in the handover it happened.
        step: Step,
    },
    /// The new process exited before taking over (before TAKEN).
    ChildExited {
        /// Where in the handover it happened.
        step: Step,
        /// How it exited; `None` when the kernel reaped it first, as it does
        /// when this process ignores SIGCHLD.
        status: Option<ExitStatus>,
    },
    /// The handover did not complete in time: in steps 1 to 5, the new
    /// process was not ready within the start timeout
    /// ([`SplitOptions::start_timeout`](crate::SplitOptions::start_timeout));
    /// from step 6 on, the transfer did not finish within the transfer
    /// timeout
    /// ([`SplitOptions::transfer_timeout`](crate::SplitOptions::transfer_timeout)).
    Timeout {
        /// Where in the handover the time ran out; it tells which timeout.
        step: Step,
        /// The timeout that ran out.
        after: Duration,
        /// Whether the new process ran out of time waiting for the old one
        /// (and gave up by itself), rather than the old process waiting for
        /// the new one (and killing it).
        in_new_process: bool,
    },
    /// The two sides speak no common protocol version.
    ProtocolVersion {
        /// The versions this process speaks, lowest and highest.
        ours: (u16, u16),
        /// The versions the other process speaks, lowest and highest.
        theirs: (u16, u16),
    },
    /// The old process's state type is not one the new process accepts.
    SchemaMismatch {
        /// The schema the old process has.
        sent: Schema,
        /// The schemas the new process accepts.
        accepted: Vec<Schema>,
        /// What differs between the old process's state and the new
        /// process's own state type, one line each (such as
        /// `field 'config.beta': was u32 at position 2, now position 1`);
        /// empty when the other process could not describe its state.
        differences: Vec<String>,
    },
    /// A type in the state cannot be traced, so its encoding cannot be
    /// fingerprinted: a handover never trusts a type's name alone.
    Untraceable {
        /// The type, as Rust names it.
        type_name: &'static str,
        /// What the tracer found.
        detail: String,
    },
    /// A frame exceeded its size limit.
    FrameTooLarge {
        /// Where in the handover it happened.
        step: Step,
        /// The frame's kind, as named in PROTOCOL.md.
        kind: &'static str,
        /// The size announced or reached.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The other side broke the protocol.
    Protocol {
        /// Where in the handover it happened.
        step: Step,
        /// What was wrong.
        detail: String,
    },
    /// The other side gave up, and said why.
    Aborted {
        /// Where in the handover it happened.
        step: Step,
        /// The reason it sent.
        reason: String,
    },
    /// The state is bigger, or holds more fds, than the handover allows
    /// ([`SplitOptions::max_state_bytes`](crate::SplitOptions::max_state_bytes),
    /// [`SplitOptions::max_fds`](crate::SplitOptions::max_fds)).
    LimitExceeded {
        /// Where in the handover it was found.
        step: Step,
        /// `"state bytes"` or `"fds"`.
        what: &'static str,
        /// How many there were when the limit was passed: at least this.
        found: u64,
        /// The limit.
        max: u64,
    },
    /// The new process could not decode the state it received.
    Decode {
        /// What went wrong, from postcard or from a `Handover` impl.
        detail: String,
    },
    /// The old process could not encode its state: a `Serialize` or
    /// `Handover` impl in it returned an error. Nothing was decoded, and
    /// the old process keeps its state.
    ///
    /// ```
    /// let err = mitosis::Error::Encode { detail: "a path is not UTF-8".into() };
    /// assert_eq!(err.step(), Some(mitosis::Step::State));
    /// assert!(err.to_string().contains("the old process keeps its state"));
    /// ```
    Encode {
        /// What went wrong, from postcard or from a `Handover` impl.
        detail: String,
    },
    /// A `BufReader` in the state holds more bytes it has read but not yet
    /// returned than a handover can put back into a new `BufReader`.
    ///
    /// The old process checks this while encoding, in step 6, and refuses
    /// to send the state; the new process checks it again while decoding.
    ///
    /// ```
    /// use mitosis::{Error, Step};
    /// let err = Error::UnreadBytes { step: Step::State, unread: 70_000, max: 65_536 };
    /// assert!(err.to_string().contains("capacity of at most 65536 bytes"));
    /// ```
    UnreadBytes {
        /// Where in the handover it was found.
        step: Step,
        /// How many unread bytes the `BufReader` holds.
        unread: u64,
        /// The most a handover puts back.
        max: u64,
    },
    /// The state's `Handover::encode` panicked; the state was kept.
    EncodePanicked {
        /// The panic message, if it was a string.
        message: String,
    },
    /// The new process decoded the state but could not bring a part of it
    /// back to life in its own process: a TLS session, say, whose cipher
    /// suite its crypto provider lacks, or that needs a provider and finds
    /// none installed. The encoding is fine; the new binary's set-up is
    /// not. The old process keeps its state.
    ///
    /// ```
    /// let err = mitosis::Error::Resume { detail: "no crypto provider".into() };
    /// assert_eq!(err.step(), Some(mitosis::Step::Commit));
    /// assert!(err.to_string().contains("fix the new binary"));
    /// ```
    Resume {
        /// What could not be resumed, and what the new binary lacks.
        detail: String,
    },
}

impl Error {
    /// The protocol step the error happened in, if it happened during a
    /// handover.
    ///
    /// ```
    /// use mitosis::{Error, Step};
    /// let err = Error::PeerGone { step: Step::Fds };
    /// assert_eq!(err.step(), Some(Step::Fds));
    /// ```
    pub fn step(&self) -> Option<Step> {
        match self {
            Error::Spawn { .. } => Some(Step::Spawn),
            Error::Io { step, .. }
            | Error::PeerGone { step }
            | Error::ChildExited { step, .. }
            | Error::Timeout { step, .. }
            | Error::FrameTooLarge { step, .. }
            | Error::Protocol { step, .. }
            | Error::Aborted { step, .. }
            | Error::LimitExceeded { step, .. }
            | Error::UnreadBytes { step, .. } => Some(*step),
            Error::ProtocolVersion { .. } => Some(Step::Hello),
            Error::SchemaMismatch { .. } => Some(Step::Offer),
            Error::Untraceable { .. } | Error::NoPreviousBinary => Some(Step::Spawn),
            Error::Decode { .. } | Error::Resume { .. } => Some(Step::Commit),
            Error::Encode { .. } | Error::EncodePanicked { .. } => Some(Step::State),
            Error::BadFlag { .. }
            | Error::MissingEnvironment { .. }
            | Error::SplitInFlight
            | Error::AlreadyFailed
            | Error::Supervisor { .. }
            | Error::Control { .. } => None,
        }
    }

    pub(crate) fn io(step: Step) -> impl FnOnce(io::Error) -> Error {
        move |source| match source.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => Error::PeerGone { step },
            _ => Error::Io { step, source },
        }
    }

    pub(crate) fn protocol(step: Step, detail: impl Into<String>) -> Error {
        Error::Protocol {
            step,
            detail: detail.into(),
        }
    }
}

fn list_schemas(f: &mut fmt::Formatter<'_>, schemas: &[Schema]) -> fmt::Result {
    for (i, schema) in schemas.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{schema}")?;
    }
    Ok(())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadFlag { arg, reason } => write!(
                f,
                "bad mitosis flag `{arg}`: {reason}; the flag is \
                 `--mitosis=<port>:<signals>:<fd channel>` (an older build passes \
                 `--mitosis=<port>` and the rest in the environment), with a port from 1 to \
                 65535, and only mitosis::split should pass it"
            ),
            Error::MissingEnvironment { var } => write!(
                f,
                "started with --mitosis but the environment variable {var} is missing or \
                 malformed; the flag only works for a process started by mitosis::split, so \
                 start the program without it"
            ),
            Error::Spawn { binary, source } => write!(
                f,
                "could not start the new binary {}: {source}; check that it exists and is \
                 executable (the build may have failed), or set SplitOptions::binary",
                binary.display()
            ),
            Error::Supervisor { action, source } => write!(f, "could not {action}: {source}"),
            Error::NoPreviousBinary => f.write_str(
                "there is no previous build to go back to: this process started fresh, or was \
                 started by a build whose mitosis keeps no handle to its executable; upgrade to \
                 a binary path instead",
            ),
            Error::Control { action, reason } => write!(f, "could not {action}: {reason}"),
            Error::SplitInFlight => f.write_str(
                "a split is already in progress in this process; wait for its outcome before \
                 splitting again",
            ),
            Error::AlreadyFailed => f.write_str(
                "this upgrade failed already, and its readiness check returned the error; drop \
                 it and prepare a new one",
            ),
            Error::Io { step, source } => write!(
                f,
                "I/O error in {step}: {source}{}",
                out_of_files_hint(source)
            ),
            Error::PeerGone { step } => write!(
                f,
                "the other process closed the connection in {step}; it probably exited or \
                 crashed, see its own error output"
            ),
            Error::ChildExited { step, status } => {
                f.write_str("the new process exited (")?;
                match status {
                    Some(status) => write!(f, "{status}")?,
                    None => f.write_str(
                        "its exit status is unknown: this process ignores SIGCHLD, so the kernel \
                         reaped it",
                    )?,
                }
                write!(
                    f,
                    ") in {step}, before taking over; see its error output, fix it and split \
                     again"
                )
            }
            Error::Timeout {
                step,
                after,
                in_new_process: false,
            } if step.number() <= Step::Ready.number() => write!(
                f,
                "the new process was not ready within the start timeout of {after:?} (stuck in \
                 {step}); it was killed, and this process keeps its state and went on serving. \
                 Raise SplitOptions::start_timeout if the new build needs longer to start, or \
                 check that it calls mitosis::init (or mitosis::arrive) early in main"
            ),
            Error::Timeout {
                step,
                after,
                in_new_process: false,
            } => write!(
                f,
                "the transfer did not complete within the transfer timeout of {after:?} (stuck \
                 in {step}); the new process was killed, and this process keeps its state. \
                 Raise SplitOptions::transfer_timeout if a state this large needs longer to \
                 cross and decode, or check that the new build commits promptly"
            ),
            Error::Timeout {
                step,
                after,
                in_new_process: true,
            } => write!(
                f,
                "the old process did not answer within the transfer timeout of {after:?} (stuck \
                 in {step}), so this process gives up and the old one keeps its state; see the \
                 old process's log. The old process's SplitOptions::transfer_timeout sets this \
                 limit"
            ),
            Error::ProtocolVersion { ours, theirs } => write!(
                f,
                "protocol version mismatch: this process speaks versions {}..={} and the other \
                 speaks {}..={}; build both with compatible versions of mitosis",
                ours.0, ours.1, theirs.0, theirs.1
            ),
            Error::SchemaMismatch {
                sent,
                accepted,
                differences,
            } => {
                write!(
                    f,
                    "state schema mismatch: the old process has {sent}, the new process accepts "
                )?;
                list_schemas(f, accepted)?;
                if !differences.is_empty() {
                    write!(
                        f,
                        "; from the old state to the new: {}",
                        differences.join("; ")
                    )?;
                }
                f.write_str(
                    "; nothing was decoded and the old process keeps its state. Make the new \
                     build accept the old state (`since`/`removed` for added and removed \
                     fields, or `migrate_from` for a real change), or keep the old definition",
                )
            }
            Error::Untraceable { type_name, detail } => write!(
                f,
                "the type {type_name} in the state cannot be traced ({detail}), so its encoding \
                 cannot be fingerprinted and it is not handed over. Give it a plain \
                 serde derive (no untagged enums, no deserialize_any), hand the field over \
                 with #[handover(with = \"...\")], or skip it"
            ),
            Error::FrameTooLarge {
                step,
                kind,
                len,
                max,
            } => write!(
                f,
                "{kind} frame of {len} bytes exceeds the limit of {max} bytes in {step}"
            ),
            Error::Protocol { step, detail } => {
                write!(f, "protocol error in {step}: {detail}")
            }
            Error::LimitExceeded {
                step,
                what,
                found,
                max,
            } => write!(
                f,
                "the state has {found} {what} or more, over the handover's limit of {max}, in \
                 {step}; the old process keeps its state. Raise SplitOptions::max_state_bytes \
                 or SplitOptions::max_fds in the old process, or hand over less"
            ),
            Error::Aborted { step, reason } => {
                write!(f, "the other process gave up in {step}: {reason}")
            }
            Error::Decode { detail } => write!(
                f,
                "could not decode the handed-over state: {detail}; the two binaries disagree on \
                 the state's encoding, so bump its schema version"
            ),
            Error::Resume { detail } => write!(
                f,
                "the new process could not resume the state it received: {detail}; the state \
                 is intact and the old process keeps it. fix the new binary's set-up and \
                 upgrade again"
            ),
            Error::Encode { detail } => write!(
                f,
                "could not encode the state in the old process: {detail}; the old process keeps \
                 its state and the new process was stopped. The fault is in the state's \
                 Serialize or Handover impl, or in a value it cannot encode, not in the new \
                 binary: fix the impl, or change the value, before splitting again"
            ),
            Error::UnreadBytes { step, unread, max } => write!(
                f,
                "a BufReader in the state holds {unread} bytes it has read but not yet \
                 returned, more than the {max} a handover can put back, in {step}; the old \
                 process keeps its state. Consume those bytes before splitting, or give the \
                 BufReader a capacity of at most {max} bytes"
            ),
            Error::EncodePanicked { message } => write!(
                f,
                "encoding the state panicked: {message}; the state was kept and the new process \
                 was stopped"
            ),
        }
    }
}

/// What to do when `source` says that fds ran out, which a bare "Too many
/// open files" does not say: the limit is the host's, not the handover's.
fn out_of_files_hint(source: &io::Error) -> &'static str {
    let errno = source.raw_os_error();
    if errno == Some(rustix::io::Errno::MFILE.raw_os_error()) {
        "; this process has as many files open as its limit allows: raise RLIMIT_NOFILE \
         (ulimit -n, LimitNOFILE= in systemd) or close files it no longer needs"
    } else if errno == Some(rustix::io::Errno::NFILE.raw_os_error()) {
        "; the system's file table is full: raise fs.file-max or close files"
    } else {
        ""
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. }
            | Error::Io { source, .. }
            | Error::Supervisor { source, .. } => Some(source),
            _ => None,
        }
    }
}
