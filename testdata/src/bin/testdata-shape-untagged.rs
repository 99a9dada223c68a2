//! The program with `testdata::shape::untagged`'s state: `base`'s plus a
//! `#[serde(untagged)]` enum, whose shape cannot be traced. Reports version
//! "untagged".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::untagged::State>("untagged")
}
