//! `testdata-tokio-state`: [`testdata::tokio_state`] on the multi-thread
//! runtime of `#[tokio::main]`, for `tests/tokio_state.rs`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    testdata::tokio_state::main("multi").await
}
