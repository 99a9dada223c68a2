//! `mitosisctl`: asks a program through its mitosis control socket to
//! upgrade, to go back to its previous build, or for its status; prints
//! the answer, and exits 0 when it did what was asked, 1 when not (the
//! reason on stderr).
//!
//! ```text
//! mitosisctl --socket /run/user/1000/echo-server.control upgrade
//! mitosisctl --name echo-server upgrade --binary /opt/echo/v2/echo-server
//! mitosisctl --name echo-server previous
//! mitosisctl --name echo-server status
//! ```
//!
//! In a systemd unit, so that `systemctl reload` waits for the upgrade and
//! fails when it fails:
//! `ExecReload=mitosisctl --socket /run/echo-server.control upgrade`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgGroup, FromArgMatches, Subcommand};
use mitosis::control::{Answer, Command, Control, send};

fn main() -> ExitCode {
    let cli = Command::augment_subcommands(
        clap::Command::new("mitosisctl")
            .about(
                "Upgrade a running mitosis program, go back to its previous build, or show its \
                 status, through its control socket",
            )
            .version(env!("CARGO_PKG_VERSION"))
            .arg(
                Arg::new("socket")
                    .long("socket")
                    .short('s')
                    .value_name("PATH")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("The program's control socket"),
            )
            .arg(
                Arg::new("name")
                    .long("name")
                    .short('n')
                    .value_name("NAME")
                    .help("The program's name: its socket is at the default path for it"),
            )
            .group(
                ArgGroup::new("where")
                    .args(["socket", "name"])
                    .required(true),
            )
            .subcommand_required(true),
    );
    let matches = cli.get_matches();
    let command = match Command::from_arg_matches(&matches) {
        Ok(command) => command,
        Err(error) => error.exit(),
    };
    let socket = match (
        matches.get_one::<PathBuf>("socket"),
        matches.get_one::<String>("name"),
    ) {
        (Some(socket), _) => Ok(socket.clone()),
        (None, Some(name)) => Control::default_path(name),
        (None, None) => unreachable!("clap requires one of them"),
    };
    match socket.and_then(|socket| send(&socket, &command)) {
        Ok(answer) if answer.succeeded() => {
            print_whole(std::io::stdout(), &answer);
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            print_whole(std::io::stderr(), &answer);
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("mitosisctl: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the answer in one write: under ExecReload= it goes to the
/// service's log, which the service's own processes write to as well, and
/// `print!("{answer}")` would write it a piece at a time, between which
/// their lines could land.
fn print_whole(mut out: impl Write, answer: &Answer) {
    let _ = out.write_all(answer.to_string().as_bytes());
    let _ = out.flush();
}
