//! Parsing `#[handover(...)]`. Every error is spanned on the offending token.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, ExprPath, LitInt, LitStr, Path, Result, Type, parenthesized};

/// `#[handover(...)]` on the type.
#[derive(Default)]
pub struct ContainerAttrs {
    /// `version = N`.
    pub version: Option<u32>,
    /// `name = "..."`: the schema name, in place of the type's path.
    pub name: Option<LitStr>,
    /// `migrate_from(Type)`.
    pub migrate_from: Option<Type>,
}

/// `#[handover(...)]` on a field.
#[derive(Default)]
pub struct FieldAttrs {
    /// `skip`: not sent; rebuilt with `Default` or `default`.
    pub skip: Option<Span>,
    /// `default = "path"`, with `skip`.
    pub default: Option<(Span, ExprPath)>,
    /// `with = "module"`: `module::encode` and `module::decode`.
    pub with: Option<(Span, Path)>,
    /// `fd`: a type that is `AsFd + From<OwnedFd>` but not `Handover`.
    pub fd: Option<Span>,
}

const CONTAINER: &str = "the type attributes are `version = N`, `name = \"...\"` and \
                         `migrate_from(Type)`";
const FIELD: &str = "the field attributes are `skip`, `default = \"path\"`, \
                     `with = \"module\"` and `fd`";

pub fn container(attrs: &[Attribute]) -> Result<ContainerAttrs> {
    let mut parsed = ContainerAttrs::default();
    for_each_meta(attrs, |meta| {
        if meta.path.is_ident("version") {
            once(&meta, parsed.version.is_some())?;
            let lit: LitInt = meta.value()?.parse()?;
            parsed.version = Some(lit.base10_parse()?);
        } else if meta.path.is_ident("name") {
            once(&meta, parsed.name.is_some())?;
            parsed.name = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("migrate_from") {
            once(&meta, parsed.migrate_from.is_some())?;
            let content;
            parenthesized!(content in meta.input);
            parsed.migrate_from = Some(content.parse()?);
        } else {
            return Err(unknown(&meta, CONTAINER));
        }
        Ok(())
    })?;
    Ok(parsed)
}

pub fn field(attrs: &[Attribute]) -> Result<FieldAttrs> {
    let mut parsed = FieldAttrs::default();
    for_each_meta(attrs, |meta| {
        let span = syn::spanned::Spanned::span(&meta.path);
        if meta.path.is_ident("skip") {
            once(&meta, parsed.skip.is_some())?;
            parsed.skip = Some(span);
        } else if meta.path.is_ident("default") {
            once(&meta, parsed.default.is_some())?;
            let lit: LitStr = meta.value()?.parse()?;
            parsed.default = Some((span, lit.parse()?));
        } else if meta.path.is_ident("with") {
            once(&meta, parsed.with.is_some())?;
            let lit: LitStr = meta.value()?.parse()?;
            parsed.with = Some((span, lit.parse()?));
        } else if meta.path.is_ident("fd") {
            once(&meta, parsed.fd.is_some())?;
            parsed.fd = Some(span);
        } else {
            return Err(unknown(&meta, FIELD));
        }
        Ok(())
    })?;
    Ok(parsed)
}

pub fn variant(attrs: &[Attribute]) -> Result<()> {
    for_each_meta(attrs, |meta| {
        Err(unknown(
            &meta,
            "variants take no attributes; put them on the type or on a field",
        ))
    })
}

fn for_each_meta(
    attrs: &[Attribute],
    mut each: impl FnMut(ParseNestedMeta<'_>) -> Result<()>,
) -> Result<()> {
    for attr in attrs {
        if attr.path().is_ident("handover") {
            attr.parse_nested_meta(&mut each)?;
        }
    }
    Ok(())
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
