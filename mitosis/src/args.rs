//! The `--mitosis=<port>:<signals>:<fd channel>` flag: finding it, and
//! hiding it from the program's own argument parser.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::Error;

/// The flag's name on the command line.
pub(crate) const FLAG: &str = "--mitosis";

/// Where the flag sits in an argument list, and what it says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) port: u16,
    /// What a new process needs besides the port, when the old process
    /// put it in the flag (`--mitosis=PORT:SIGNALS:PATH`, PROTOCOL.md,
    /// step 1) rather than in the environment, where builds before it put
    /// it: `None` for the bare `--mitosis=PORT`.
    pub(crate) rest: Option<Rest>,
    /// The index of the flag, and how many arguments it spans (1 for
    /// `--mitosis=N`, 2 for `--mitosis N`).
    pub(crate) at: usize,
    pub(crate) span: usize,
}

/// The rest of the flag: the signals that start upgrades in the old
/// process, and the fd channel's path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rest {
    pub(crate) trigger_signals: Vec<i32>,
    pub(crate) fd_socket: PathBuf,
}

/// Finds the flag in `args` (without the program name). Arguments after a
/// bare `--` belong to the program and are never read as the flag.
pub(crate) fn find(args: &[OsString]) -> Result<Option<Found>, Error> {
    for (at, arg) in args.iter().enumerate() {
        if arg == "--" {
            break;
        }
        let bytes = arg.as_encoded_bytes();
        if arg == FLAG {
            let value = args.get(at + 1).ok_or(Error::BadFlag {
                arg: FLAG.into(),
                reason: "the port is missing",
            })?;
            let (port, rest) =
                parse_value(value, || format!("{FLAG} {}", value.to_string_lossy()))?;
            return Ok(Some(Found {
                port,
                rest,
                at,
                span: 2,
            }));
        }
        if let Some(value) = bytes.strip_prefix(b"--mitosis=") {
            let value = OsStr::from_bytes(value);
            let (port, rest) = parse_value(value, || arg.to_string_lossy().into_owned())?;
            return Ok(Some(Found {
                port,
                rest,
                at,
                span: 1,
            }));
        }
    }
    Ok(None)
}

/// The flag's value: `PORT`, or `PORT:SIGNALS:PATH` with SIGNALS a
/// comma-separated list of signal numbers (maybe empty) and PATH the rest,
/// whatever bytes it holds.
fn parse_value(value: &OsStr, arg: impl Fn() -> String) -> Result<(u16, Option<Rest>), Error> {
    let bytes = value.as_bytes();
    let Some(colon) = bytes.iter().position(|&b| b == b':') else {
        return Ok((parse_port(value, arg)?, None));
    };
    let port = parse_port(OsStr::from_bytes(&bytes[..colon]), &arg)?;
    let rest = &bytes[colon + 1..];
    let bad = |reason| Error::BadFlag { arg: arg(), reason };
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| bad("the fd channel's path is missing"))?;
    let signals = std::str::from_utf8(&rest[..colon])
        .ok()
        .and_then(|list| {
            list.split(',')
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<i32>>>()
        })
        .ok_or_else(|| bad("the signals are not numbers"))?;
    let path = &rest[colon + 1..];
    if path.is_empty() {
        return Err(bad("the fd channel's path is missing"));
    }
    Ok((
        port,
        Some(Rest {
            trigger_signals: signals,
            fd_socket: PathBuf::from(OsStr::from_bytes(path)),
        }),
    ))
}

/// The flag's value as the old process writes it.
pub(crate) fn value(port: u16, trigger_signals: &[i32], fd_socket: &std::path::Path) -> OsString {
    let signals: Vec<String> = trigger_signals.iter().map(i32::to_string).collect();
    let mut value = OsString::from(format!("{FLAG}={port}:{}:", signals.join(",")));
    value.push(fd_socket);
    value
}

fn parse_port(value: &OsStr, arg: impl Fn() -> String) -> Result<u16, Error> {
    let text = value.to_str().ok_or_else(|| Error::BadFlag {
        arg: arg(),
        reason: "the port is not a number",
    })?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadFlag {
            arg: arg(),
            reason: "the port is not a number",
        });
    }
    match text.parse::<u32>() {
        Ok(0) => Err(Error::BadFlag {
            arg: arg(),
            reason: "port 0 is not a port the old process can listen on",
        }),
        Ok(port) => u16::try_from(port).map_err(|_| Error::BadFlag {
            arg: arg(),
            reason: "the port is above 65535",
        }),
        Err(_) => Err(Error::BadFlag {
            arg: arg(),
            reason: "the port is above 65535",
        }),
    }
}

/// `args` without the mitosis flag.
pub(crate) fn without_flag(mut args: Vec<OsString>) -> Vec<OsString> {
    if let Ok(Some(found)) = find(&args) {
        args.drain(found.at..found.at + found.span);
    }
    args
}

/// This process's arguments, program name first, without the `--mitosis`
/// flag, ready for the program's own argument parser.
///
/// A program started by [`split`](crate::split) gets `--mitosis=<port>`
/// added to its arguments; parse `mitosis::args()` instead of
/// `std::env::args_os()` and it sees exactly what the first generation saw.
///
/// ```
/// let args: Vec<std::ffi::OsString> = mitosis::args().collect();
/// assert!(!args.iter().any(|arg| arg.to_string_lossy().starts_with("--mitosis")));
/// ```
///
/// With clap, use `Parser::parse_from(mitosis::args())`, or flatten
/// `mitosis::Flag` into the parser (with the `clap` feature, on by default).
pub fn args() -> impl Iterator<Item = OsString> {
    let mut all: Vec<OsString> = std::env::args_os().collect();
    let rest = all.split_off(all.len().min(1));
    all.extend(without_flag(rest));
    all.into_iter()
}

/// The hidden `--mitosis` flag, for programs that parse `std::env::args`
/// with clap (the `clap` feature, on by default).
///
/// Flatten it into the parser so that clap accepts the flag that
/// [`split`](crate::split) adds; it is hidden from `--help`. The handover
/// itself is [`init`](crate::init)'s job, which reads the flag on its own.
///
/// ```
/// use clap::{Args, FromArgMatches};
///
/// let cmd = mitosis::Flag::augment_args(clap::Command::new("bot"));
/// let matches = cmd.try_get_matches_from(["bot", "--mitosis=4000"]).unwrap();
/// let flag = mitosis::Flag::from_arg_matches(&matches).unwrap();
/// assert_eq!(flag.port, Some(4000));
/// ```
///
/// In a derived parser:
///
/// ```
/// use clap::Parser;
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     mitosis: mitosis::Flag,
///     #[arg(long)]
///     server: String,
/// }
///
/// // The same parser works for the first generation and for later ones.
/// let first = Cli::parse_from(["bot", "--server", "irc:6667"]);
/// let later = Cli::parse_from(["bot", "--mitosis=4000", "--server", "irc:6667"]);
/// assert_eq!((first.server, first.mitosis.port), ("irc:6667".into(), None));
/// assert_eq!((later.server, later.mitosis.port), ("irc:6667".into(), Some(4000)));
/// ```
#[cfg(feature = "clap")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flag {
    /// The port the old process listens on, when started by `split`.
    pub port: Option<u16>,
}

#[cfg(feature = "clap")]
const FLAG_ID: &str = "mitosis";

#[cfg(feature = "clap")]
impl clap::FromArgMatches for Flag {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Flag {
            port: matches.get_one::<u16>(FLAG_ID).copied(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Flag::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The port in the flag's value, for clap: mitosis reads the rest itself.
#[cfg(feature = "clap")]
fn flag_port(value: &str) -> Result<u16, String> {
    parse_value(OsStr::new(value), || format!("{FLAG}={value}"))
        .map(|(port, _)| port)
        .map_err(|error| error.to_string())
}

#[cfg(feature = "clap")]
impl clap::Args for Flag {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new(FLAG_ID)
                .long(FLAG_ID)
                .value_name("PORT")
                .value_parser(flag_port)
                .num_args(1)
                .hide(true)
                .help("Set by mitosis::split: the port of the process handing over"),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Flag::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_both_spellings() {
        assert_eq!(
            find(&os(&["-v", "--mitosis=4000"])).unwrap(),
            Some(Found {
                port: 4000,
                rest: None,
                at: 1,
                span: 1
            })
        );
        assert_eq!(
            find(&os(&["--mitosis", "65535", "x"])).unwrap(),
            Some(Found {
                port: 65535,
                rest: None,
                at: 0,
                span: 2
            })
        );
        assert_eq!(find(&os(&["a", "b"])).unwrap(), None);
    }

    #[test]
    fn reads_the_signals_and_the_fd_channel_from_the_flag() {
        let value = value(
            4000,
            &[12, 10],
            std::path::Path::new("/run/user/1/a:b,c/fd"),
        );
        let found = find(&[value]).unwrap().unwrap();
        assert_eq!(found.port, 4000);
        assert_eq!(
            found.rest,
            Some(Rest {
                trigger_signals: vec![12, 10],
                fd_socket: PathBuf::from("/run/user/1/a:b,c/fd"),
            })
        );
        let found = find(&os(&["--mitosis=7:::x"])).unwrap().unwrap();
        assert_eq!(found.rest.unwrap().fd_socket, PathBuf::from(":x"));
        for bad in [
            "--mitosis=7:",
            "--mitosis=7:1,2",
            "--mitosis=7:x:/p",
            "--mitosis=7::",
        ] {
            let err = find(&os(&[bad])).unwrap_err();
            assert!(matches!(err, Error::BadFlag { .. }), "{bad:?} gave {err:?}");
        }
    }

    #[test]
    fn ignores_the_flag_after_a_double_dash() {
        assert_eq!(find(&os(&["--", "--mitosis=4000"])).unwrap(), None);
    }

    #[test]
    fn refuses_malformed_ports() {
        for bad in [
            &["--mitosis=abc"][..],
            &["--mitosis=0"],
            &["--mitosis=65536"],
            &["--mitosis=99999999999999999999"],
            &["--mitosis="],
            &["--mitosis=-1"],
            &["--mitosis"],
            &["--mitosis", "x"],
        ] {
            let err = find(&os(bad)).unwrap_err();
            assert!(matches!(err, Error::BadFlag { .. }), "{bad:?} gave {err:?}");
            assert!(err.to_string().contains("--mitosis=<port>"), "{err}");
        }
    }

    #[test]
    fn removes_only_the_flag() {
        assert_eq!(
            without_flag(os(&["a", "--mitosis", "5", "b"])),
            os(&["a", "b"])
        );
        assert_eq!(without_flag(os(&["--mitosis=5", "b"])), os(&["b"]));
        assert_eq!(
            without_flag(os(&["--", "--mitosis=5"])),
            os(&["--", "--mitosis=5"])
        );
    }
}
