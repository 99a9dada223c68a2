//! The same program with an incompatible state: its schema is
//! `testdata::State` version 2, so a version 1 process cannot hand over to
//! it (and the handover must roll back).

fn main() -> std::process::ExitCode {
    testdata::run::<2>("schema2")
}
