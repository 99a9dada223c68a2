//! Misuse of `#[derive(Handover)]` fails to compile with an error spanned on
//! the offending token. The expected output is pinned to the toolchain in
//! use; regenerate it with `TRYBUILD=overwrite cargo test --test compile_errors`
//! after a compiler upgrade, and read the diff.

#[test]
fn compile_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
