//! The same program with an incompatible state: v1's fields declared as
//! `testdata::State` version 2, with no migration, so a version 1 process
//! cannot hand over to it (and the handover must roll back).

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::schema2::State>("schema2")
}
