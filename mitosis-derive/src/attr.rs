//! Parsing `#[handover(...)]`. Every error is spanned on the offending token
//! and recorded in the [`Ctxt`]; parsing goes on with the next attribute, so
//! that all of them are reported at once.

use proc_macro2::{Span, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, ExprPath, LitInt, LitStr, Path, Result, Type, parenthesized};

use crate::ctxt::Ctxt;

/// `#[handover(...)]` on the type.
#[derive(Default)]
pub struct ContainerAttrs {
    /// `version = N`.
    pub version: Option<u32>,
    /// `name = "..."`: the schema name, in place of the type's path.
    pub name: Option<LitStr>,
    /// `migrate_from(Type)`.
    pub migrate_from: Option<Type>,
    /// `crate = "path"`: where mitosis is, for a crate that re-exports it.
    pub krate: Option<Path>,
    /// `removed(name = "...", ty = "Type", since = N, after = "field")`, in
    /// order: fields that older versions had.
    pub removed: Vec<Removed>,
}

/// A field removed in version `since`: older states still carry it, as a
/// `ty` after the field `after` (or first).
pub struct Removed {
    pub span: Span,
    pub name: String,
    pub ty: Type,
    pub since: (Span, u32),
    pub after: Option<(Span, String)>,
}

impl ContainerAttrs {
    /// The path the expansion reaches mitosis through: `crate = "..."`, or
    /// `::mitosis`.
    pub fn krate(&self) -> Path {
        match &self.krate {
            Some(path) => path.clone(),
            None => syn::parse_quote!(::mitosis),
        }
    }
}

/// `#[handover(...)]` on a field.
#[derive(Default)]
pub struct FieldAttrs {
    /// `skip`: not sent; rebuilt with `Default` or `default`.
    pub skip: Option<Span>,
    /// `default` or `default = "path"`, with `skip` or `since`.
    pub default: Option<(Span, Option<ExprPath>)>,
    /// `since = N`: the field was added in version N; older states lack it.
    pub since: Option<(Span, u32)>,
    /// `with = "module"`: `module::encode` and `module::decode`.
    pub with: Option<(Span, Path)>,
    /// `fd`: a type that is `AsFd + From<OwnedFd>` but not `Handover`.
    pub fd: Option<Span>,
}

const CONTAINER: &str = "the type attributes are `version = N`, `name = \"...\"`, \
                         `migrate_from(Type)`, `removed(name = \"...\", ty = \"Type\", \
                         since = N, after = \"field\")` and `crate = \"path\"`";
const FIELD: &str = "the field attributes are `skip`, `default`, `default = \"path\"`, \
                     `since = N`, `with = \"module\"` and `fd`";
const REMOVED: &str = "`removed` takes `name = \"...\"`, `ty = \"Type\"`, `since = N` \
                       and `after = \"field\"`";

pub fn container(cx: &Ctxt, attrs: &[Attribute]) -> ContainerAttrs {
    let mut parsed = ContainerAttrs::default();
    for_each_meta(cx, attrs, |meta| {
        if meta.path.is_ident("version") {
            once(meta, parsed.version.is_some())?;
            let lit: LitInt = meta.value()?.parse()?;
            parsed.version = Some(lit.base10_parse()?);
        } else if meta.path.is_ident("name") {
            once(meta, parsed.name.is_some())?;
            parsed.name = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("migrate_from") {
            once(meta, parsed.migrate_from.is_some())?;
            let content;
            parenthesized!(content in meta.input);
            parsed.migrate_from = Some(content.parse()?);
        } else if meta.path.is_ident("removed") {
            parsed.removed.push(removed(meta)?);
        } else if meta.path.is_ident("crate") {
            once(meta, parsed.krate.is_some())?;
            let lit: LitStr = meta.value()?.parse()?;
            let path = lit.parse_with(Path::parse_mod_style).map_err(|_| {
                syn::Error::new(
                    lit.span(),
                    format!(
                        "`crate = {:?}` is not a path: give the path mitosis is reachable \
                         at, such as `crate = \"my_crate::mitosis\"`",
                        lit.value()
                    ),
                )
            })?;
            parsed.krate = Some(path);
        } else {
            return Err(unknown(meta, CONTAINER));
        }
        Ok(())
    });
    parsed
}

pub fn field(cx: &Ctxt, attrs: &[Attribute]) -> FieldAttrs {
    let mut parsed = FieldAttrs::default();
    for_each_meta(cx, attrs, |meta| {
        let span = syn::spanned::Spanned::span(&meta.path);
        if meta.path.is_ident("skip") {
            once(meta, parsed.skip.is_some())?;
            parsed.skip = Some(span);
        } else if meta.path.is_ident("default") {
            once(meta, parsed.default.is_some())?;
            let function = if meta.input.peek(syn::Token![=]) {
                let lit: LitStr = meta.value()?.parse()?;
                Some(lit.parse()?)
            } else {
                None
            };
            parsed.default = Some((span, function));
        } else if meta.path.is_ident("since") {
            once(meta, parsed.since.is_some())?;
            let lit: LitInt = meta.value()?.parse()?;
            parsed.since = Some((lit.span(), lit.base10_parse()?));
        } else if meta.path.is_ident("with") {
            once(meta, parsed.with.is_some())?;
            let lit: LitStr = meta.value()?.parse()?;
            parsed.with = Some((span, lit.parse()?));
        } else if meta.path.is_ident("fd") {
            once(meta, parsed.fd.is_some())?;
            parsed.fd = Some(span);
        } else {
            return Err(unknown(meta, FIELD));
        }
        Ok(())
    });
    parsed
}

/// `removed(name = "...", ty = "Type", since = N, after = "field")`; all
/// but `after` are required.
fn removed(meta: &ParseNestedMeta<'_>) -> Result<Removed> {
    let span = syn::spanned::Spanned::span(&meta.path);
    let (mut name, mut ty, mut since, mut after) = (None, None, None, None);
    meta.parse_nested_meta(|item| {
        if item.path.is_ident("name") {
            once(&item, name.is_some())?;
            let lit: LitStr = item.value()?.parse()?;
            name = Some(lit.value());
        } else if item.path.is_ident("ty") {
            once(&item, ty.is_some())?;
            let lit: LitStr = item.value()?.parse()?;
            ty = Some(lit.parse::<Type>()?);
        } else if item.path.is_ident("since") {
            once(&item, since.is_some())?;
            let lit: LitInt = item.value()?.parse()?;
            since = Some((lit.span(), lit.base10_parse()?));
        } else if item.path.is_ident("after") {
            once(&item, after.is_some())?;
            let lit: LitStr = item.value()?.parse()?;
            after = Some((lit.span(), lit.value()));
        } else {
            return Err(unknown(&item, REMOVED));
        }
        Ok(())
    })?;
    let missing =
        |what: &str| syn::Error::new(span, format!("`removed` needs `{what}`; {REMOVED}"));
    Ok(Removed {
        span,
        name: name.ok_or_else(|| missing("name = \"...\""))?,
        ty: ty.ok_or_else(|| missing("ty = \"Type\""))?,
        since: since.ok_or_else(|| missing("since = N"))?,
        after,
    })
}

pub fn variant(cx: &Ctxt, attrs: &[Attribute]) {
    for_each_meta(cx, attrs, |meta| {
        Err(unknown(
            meta,
            "variants take no attributes; put them on the type or on a field",
        ))
    });
}

/// Calls `each` on every item of every `#[handover(...)]` in `attrs`. An
/// error from `each` is recorded, the rest of that item is skipped, and
/// parsing goes on with the next item.
fn for_each_meta(
    cx: &Ctxt,
    attrs: &[Attribute],
    mut each: impl FnMut(&ParseNestedMeta<'_>) -> Result<()>,
) {
    for attr in attrs {
        if attr.path().is_ident("handover") {
            let parsed = attr.parse_nested_meta(|meta| {
                if let Err(error) = each(&meta) {
                    cx.syn_error(error);
                    skip_item(meta.input)?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.syn_error(error);
            }
        }
    }
}

/// Skips what is left of a `#[handover(...)]` item, up to the comma that
/// ends it.
fn skip_item(input: ParseStream<'_>) -> Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((token, next)) = rest.token_tree() {
            if matches!(&token, TokenTree::Punct(punct) if punct.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

fn once(meta: &ParseNestedMeta<'_>, seen: bool) -> Result<()> {
    if seen {
        Err(meta.error(format!(
            "duplicate handover attribute `{}`",
            path_name(&meta.path)
        )))
    } else {
        Ok(())
    }
}

fn unknown(meta: &ParseNestedMeta<'_>, expected: &str) -> syn::Error {
    meta.error(format!(
        "unknown handover attribute `{}`; {expected}",
        path_name(&meta.path)
    ))
}

fn path_name(path: &Path) -> String {
    path.segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
