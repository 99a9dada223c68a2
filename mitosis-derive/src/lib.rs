//! `#[derive(Handover)]` for [mitosis](https://docs.rs/mitosis-handover).
//!
//! The derive itself lands with the derive issue; until then the `Handover`
//! trait is implemented by hand, as `mitosis`'s documentation shows.
