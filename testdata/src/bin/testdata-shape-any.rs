//! The program with `testdata::shape::any`'s state: `base`'s plus a type
//! whose `Deserialize` calls `deserialize_any`, whose shape cannot be
//! traced. Reports version "any".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::any::State>("any")
}
