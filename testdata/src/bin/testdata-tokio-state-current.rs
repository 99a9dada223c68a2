//! `testdata-tokio-state-current`: [`testdata::tokio_state`] on the
//! current-thread runtime of `#[tokio::main(flavor = "current_thread")]`,
//! for `tests/tokio_state.rs`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    testdata::tokio_state::main("current").await
}
