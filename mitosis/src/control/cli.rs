//! [`Command`] as a clap subcommand, for `mitosisctl` and for programs
//! that mount `upgrade`, `previous` and `status` in their own command
//! line.

use std::path::PathBuf;

use clap::{Arg, ArgMatches, FromArgMatches, Subcommand};

use super::Command;

impl FromArgMatches for Command {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        match matches.subcommand() {
            Some(("upgrade", upgrade)) => Ok(match upgrade.get_one::<PathBuf>("binary") {
                Some(binary) => Command::UpgradeTo(absolute(binary)),
                None => Command::Upgrade,
            }),
            Some(("previous", _)) => Ok(Command::Previous),
            Some(("status", _)) => Ok(Command::Status),
            _ => Err(clap::Error::raw(
                clap::error::ErrorKind::MissingSubcommand,
                "a command is required: upgrade, previous or status\n",
            )),
        }
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Command::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The program resolves nothing against the client's directory: a
/// relative path is made absolute here.
fn absolute(binary: &PathBuf) -> PathBuf {
    std::path::absolute(binary).unwrap_or_else(|_| binary.clone())
}

/// ```
/// use clap::{FromArgMatches, Subcommand};
/// let cli = mitosis::control::Command::augment_subcommands(clap::Command::new("myd"));
/// let matches = cli.try_get_matches_from(["myd", "previous"]).unwrap();
/// let command = mitosis::control::Command::from_arg_matches(&matches).unwrap();
/// assert_eq!(command, mitosis::control::Command::Previous);
/// ```
impl Subcommand for Command {
    fn augment_subcommands(cli: clap::Command) -> clap::Command {
        cli.subcommand(
            clap::Command::new("upgrade")
                .about(
                    "Upgrade to the binary on disk (or --binary), wait for the outcome, and \
                     exit with it",
                )
                .arg(
                    Arg::new("binary")
                        .long("binary")
                        .value_name("PATH")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("Run this binary instead of the one the program upgrades from"),
                ),
        )
        .subcommand(
            clap::Command::new("previous")
                .visible_alias("rollback")
                .about("Go back to the previous build, even if its file was replaced"),
        )
        .subcommand(
            clap::Command::new("status")
                .about("Print the pid, generation, binary and the last upgrade's outcome"),
        )
    }

    fn augment_subcommands_for_update(cli: clap::Command) -> clap::Command {
        Command::augment_subcommands(cli)
    }

    fn has_subcommand(name: &str) -> bool {
        matches!(name, "upgrade" | "previous" | "rollback" | "status")
    }
}
