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
use crate::attr::ContainerAttrs;
use crate::ctxt::Ctxt;

impl Input<'_> {
    /// Records every broken rule in `cx`.
    pub fn validate(&self, cx: &Ctxt) {
        let (attrs, fields): (_, Box<dyn Iterator<Item = &Field<'_>>>) = match self {
            Input::Struct(data) => (&data.attrs, Box::new(data.fields.iter())),
            Input::Enum(data) => (
                &data.attrs,
                Box::new(data.variants.iter().flat_map(|v| &v.fields)),
            ),
        };
        let version = attrs.version.unwrap_or(0);
        for field in fields {
            field.validate(cx, version);
        }
        self.validate_evolution(cx, attrs, version);
    }

    /// `since` and `removed` describe the fields of a struct with named
    /// fields across versions: each names a version this one follows, and
    /// each removed field sits after one that older versions had.
    fn validate_evolution(&self, cx: &Ctxt, attrs: &ContainerAttrs, version: u32) {
        let named = match self {
            Input::Struct(data) => data
                .fields
                .iter()
                .all(|field| matches!(field.member, syn::Member::Named(_))),
            Input::Enum(_) => false,
        };
        if !named {
            let fields: Vec<&Field<'_>> = match self {
                Input::Struct(data) => data.fields.iter().collect(),
                Input::Enum(data) => data.variants.iter().flat_map(|v| &v.fields).collect(),
            };
            let since = fields.iter().filter_map(|field| field.attrs.since);
            let removed = attrs.removed.iter().map(|removed| (removed.span, 0));
            for (span, _) in since.chain(removed) {
                cx.syn_error(syn::Error::new(
                    span,
                    "`since` and `removed` apply to the named fields of a struct; for an enum \
                     or a tuple struct, use `migrate_from`",
                ));
            }
            return;
        }
        let Input::Struct(data) = self else { return };
        let mut known: Vec<String> = data
            .fields
            .iter()
            .filter(|field| field.attrs.skip.is_none())
            .map(Field::schema_name)
            .collect();
        for removed in &attrs.removed {
            since_in_range(cx, removed.since, version);
            if known.contains(&removed.name) {
                cx.syn_error(syn::Error::new(
                    removed.span,
                    format!(
                        "`removed` names `{}`, a field this type still sends: drop it from \
                         `removed`, or rename the field",
                        removed.name
                    ),
                ));
            }
            if let Some((span, after)) = &removed.after
                && !known.contains(after)
            {
                cx.syn_error(syn::Error::new(
                    *span,
                    format!(
                        "`after = \"{after}\"` names no sent field, nor a field removed \
                         before this one; the fields are {}",
                        known.join(", ")
                    ),
                ));
            }
            known.push(removed.name.clone());
        }
    }
}

/// A `since` must name a version after 0 and no later than the type's own.
fn since_in_range(cx: &Ctxt, (span, since): (Span, u32), version: u32) {
    if since == 0 || since > version {
        cx.syn_error(syn::Error::new(
            span,
            format!(
                "`since = {since}`, but this type is version {version}: a field is added or \
                 removed in a version from 1 up to the type's own (`version = N` on the type)"
            ),
        ));
    }
}

impl Field<'_> {
    fn validate(&self, cx: &Ctxt, version: u32) {
        let attrs = &self.attrs;
        if let (Some((span, _)), None, None) = (&attrs.default, attrs.skip, attrs.since) {
            cx.syn_error(syn::Error::new(
                *span,
                "`default` only applies to a `skip` field, or one added `since` a version: \
                 add `skip` or `since = N`, or drop `default`",
            ));
        }
        if let Some(since) = attrs.since {
            since_in_range(cx, since, version);
            if let Some(skip) = attrs.skip {
                cx.syn_error(syn::Error::new(
                    skip,
                    "a `skip` field is never sent, so it has no `since`: drop one of them",
                ));
            }
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
