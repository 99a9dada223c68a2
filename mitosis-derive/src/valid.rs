//! The rules that parsing alone cannot check.
//!
//! Three rules are left to the type checker, with the generated code
//! spanned on the offending token so that its error points there: a `skip`
//! field whose type has no `Default` (and no `default = "..."`), a
//! `migrate_from` type that is not `Handover` or has no `From` into this
//! one, and a sent field whose type is neither `Handover` nor serde (see
//! `check` in `expand`).

use proc_macro2::Span;

use crate::ast::{Field, Input};
use crate::ctxt::Ctxt;

impl Input<'_> {
    /// Records every broken rule in `cx`.
    pub fn validate(&self, cx: &Ctxt) {
        let fields: Box<dyn Iterator<Item = &Field<'_>>> = match self {
            Input::Struct(data) => Box::new(data.fields.iter()),
            Input::Enum(data) => Box::new(data.variants.iter().flat_map(|v| &v.fields)),
        };
        for field in fields {
            field.validate(cx);
        }
    }
}

impl Field<'_> {
    fn validate(&self, cx: &Ctxt) {
        let attrs = &self.attrs;
        if let (Some((span, _)), None) = (&attrs.default, attrs.skip) {
            cx.syn_error(syn::Error::new(
                *span,
                "`default` only applies to a `skip` field: add `skip`, or drop `default`",
            ));
        }
        // A field is sent one way: not at all, with a module, or as an fd.
        let roles: [Option<(Span, &str)>; 3] = [
            attrs.skip.map(|span| (span, "skip")),
            attrs.with.as_ref().map(|(span, _)| (*span, "with")),
            attrs.fd.map(|span| (span, "fd")),
        ];
        let mut given = roles.into_iter().flatten();
        if let (Some((_, first)), Some((span, second))) = (given.next(), given.next()) {
            cx.syn_error(syn::Error::new(
                span,
                format!(
                    "conflicting handover attributes `{first}` and `{second}`: a field is \
                     either skipped, sent with a module, or sent as an fd"
                ),
            ));
        }
    }
}
