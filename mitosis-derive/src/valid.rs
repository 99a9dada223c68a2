//! The rules that parsing alone cannot check.
//!
//! Two rules are left to the type checker, with the generated code spanned
//! on the offending token so that its error points there: a `skip` field
//! whose type has no `Default` (and no `default = "..."`), and a
//! `migrate_from` type that is not `Handover` or has no `From` into this one.

use syn::{Error, Result};

use crate::ast::{Field, Input};

impl Input<'_> {
    pub fn validate(&self) -> Result<()> {
        let fields: Box<dyn Iterator<Item = &Field<'_>>> = match self {
            Input::Struct(data) => Box::new(data.fields.iter()),
            Input::Enum(data) => Box::new(data.variants.iter().flat_map(|v| &v.fields)),
        };
        fields.into_iter().try_for_each(Field::validate)
    }
}

impl Field<'_> {
    fn validate(&self) -> Result<()> {
        let attrs = &self.attrs;
        if let (Some((span, _)), None) = (&attrs.default, attrs.skip) {
            return Err(Error::new(
                *span,
                "`default` only applies to a `skip` field: add `skip`, or drop `default`",
            ));
        }
        // A field is sent one way: not at all, with a module, or as an fd.
        let roles = [
            attrs.skip.map(|span| (span, "skip")),
            attrs.with.as_ref().map(|(span, _)| (*span, "with")),
            attrs.fd.map(|span| (span, "fd")),
        ];
        let mut given = roles.into_iter().flatten();
        if let (Some((_, first)), Some((span, second))) = (given.next(), given.next()) {
            return Err(Error::new(
                span,
                format!(
                    "conflicting handover attributes `{first}` and `{second}`: a field is \
                     either skipped, sent with a module, or sent as an fd"
                ),
            ));
        }
        Ok(())
    }
}
