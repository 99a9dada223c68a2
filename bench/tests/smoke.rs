//! The harness end to end, as small as it goes: one round of a few cases,
//! real processes and real handovers (both the prepared and the `split`
//! one), the large case's old side in a process of its own with a 1 MiB
//! state, a TCP and a TLS connection that each new process uses, the
//! small state with tokio's sockets from a runtime to a runtime, and the
//! report. It checks that every figure was measured, never
//! what it came to.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn one_round_of_each_kind_of_case_writes_a_report() {
    let out: PathBuf =
        std::env::temp_dir().join(format!("mitosis-bench-smoke-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--rounds", "1", "--large-rounds", "1"])
        .args(["--large-bytes", "1048576"])
        .args(["--only", "floor", "--only", "shellflip", "--only", "small"])
        .args(["--only", "tokio"])
        .args(["--only", "tcp", "--only", "tls"])
        .args([
            "--only",
            "fds-16",
            "--only",
            "large",
            "--only",
            "memory-floor",
        ])
        .arg("--out")
        .arg(&out)
        // Under `cargo test`, CARGO is set; the harness would then build
        // shellflip-bench itself, which cargo has built already.
        .env_remove("CARGO")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bench runs");
    assert!(status.success(), "bench exited with {status}");

    let text = std::fs::read_to_string(out.join("bench.md")).expect("bench.md");
    for row in [
        "**mitosis: the pause, `hand_over` → `init` returns, 1 KiB + 3 fds**",
        "shellflip 2.1.3: restart → ready",
        "memory floor: a fresh 1 MiB",
        "old side: builds the state",
        "new process: reads its VmHWM",
        "| 16 | 1 |",
        "one `TcpStream`",
        "one `TlsStream<TcpStream>`, TLS 1.3",
        "TLS / TCP, p50",
        "1 KiB + 3 fds, tokio types (multi-thread runtime)",
        "tokio / sync",
    ] {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("| {row}")) || line.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in\n{text}"));
        assert!(
            !line.contains("| — | — |"),
            "{row:?} was not measured: {line}"
        );
    }
    // Met or not, each of these targets has a figure.
    for target in ["pause, 1 KiB + 3 fds", "1 MiB `Vec<u8>`", "peak resident"] {
        let line = text
            .lines()
            .find(|line| line.contains(target))
            .unwrap_or_else(|| panic!("no target {target:?}"));
        assert!(!line.contains("not measured"), "{line}");
    }
    assert!(out.join("bench-state.svg").exists());
    assert!(out.join("bench-fds.svg").exists());
    std::fs::remove_dir_all(&out).expect("cleaned up");
}
