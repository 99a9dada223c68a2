//! `#[derive(Handover)]` for [mitosis](https://docs.rs/mitosis-handover).
//!
//! Use it through `mitosis::Handover`; the attributes are documented there.
//! The crate follows thiserror-impl's layout: `ast` borrows the input with
//! its spans, `attr` parses `#[handover(...)]`, `valid` checks the rules
//! that parsing alone cannot, and `expand` writes the impl. As in
//! serde_derive, `ctxt` collects the errors of the first three, so that all
//! of them are reported at once.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `mitosis::Handover`: plain fields through serde, fd-owning
/// fields over the fd channel, and a schema fingerprint computed at compile
/// time. The attributes (`version`, `name`, `migrate_from`, `crate` on the
/// type; `skip`, `default`, `with`, `fd` on fields) are documented, with
/// examples, on the `mitosis::Handover` trait.
#[proc_macro_derive(Handover, attributes(handover))]
pub fn derive_handover(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
