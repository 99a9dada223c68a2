//! The program with `testdata::shape::spelled`'s state: `base`'s, with the
//! listener's type written `std::net::TcpListener`. Reports version
//! "spelled".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::spelled::State>("spelled")
}
