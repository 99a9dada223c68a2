//! Borrowed views of the derive input, keeping every span for errors.

use proc_macro2::Span;
use syn::{DeriveInput, Generics, Ident, Index, Member, Type};

use crate::attr::{self, ContainerAttrs, FieldAttrs};
use crate::ctxt::Ctxt;

pub enum Input<'a> {
    Struct(Struct<'a>),
    Enum(Enum<'a>),
}

pub struct Struct<'a> {
    pub attrs: ContainerAttrs,
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub fields: Vec<Field<'a>>,
}

pub struct Enum<'a> {
    pub attrs: ContainerAttrs,
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub variants: Vec<Variant<'a>>,
}

pub struct Variant<'a> {
    pub ident: &'a Ident,
    pub fields: Vec<Field<'a>>,
}

pub struct Field<'a> {
    pub attrs: FieldAttrs,
    /// `name` for a named field, `0`, `1`, … for a tuple field.
    pub member: Member,
    pub ty: &'a Type,
}

impl<'a> Input<'a> {
    /// The input, with the container attributes parsed beforehand (so that
    /// the crate path is known even when the input is refused). Errors are
    /// recorded in `cx`; `None` for a union.
    pub fn from_syn(cx: &Ctxt, node: &'a DeriveInput, attrs: ContainerAttrs) -> Option<Self> {
        match &node.data {
            syn::Data::Struct(data) => Some(Input::Struct(Struct {
                attrs,
                ident: &node.ident,
                generics: &node.generics,
                fields: Field::multiple_from_syn(cx, &data.fields),
            })),
            syn::Data::Enum(data) => Some(Input::Enum(Enum {
                attrs,
                ident: &node.ident,
                generics: &node.generics,
                variants: data
                    .variants
                    .iter()
                    .map(|variant| Variant::from_syn(cx, variant))
                    .collect(),
            })),
            syn::Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "Handover cannot be derived for a union: which field is live is not known, \
                     so it cannot be encoded; use an enum",
                );
                None
            }
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(cx: &Ctxt, node: &'a syn::Variant) -> Self {
        attr::variant(cx, &node.attrs);
        Variant {
            ident: &node.ident,
            fields: Field::multiple_from_syn(cx, &node.fields),
        }
    }
}

impl<'a> Field<'a> {
    fn multiple_from_syn(cx: &Ctxt, fields: &'a syn::Fields) -> Vec<Self> {
        fields
            .iter()
            .enumerate()
            .map(|(i, field)| Field {
                attrs: attr::field(cx, &field.attrs),
                member: match &field.ident {
                    Some(ident) => Member::Named(ident.clone()),
                    None => Member::Unnamed(Index {
                        index: i as u32,
                        span: Span::call_site(),
                    }),
                },
                ty: &field.ty,
            })
            .collect()
    }

    /// The field's name in the schema: its identifier, or its position.
    pub fn schema_name(&self) -> String {
        match &self.member {
            Member::Named(ident) => ident.to_string(),
            Member::Unnamed(index) => index.index.to_string(),
        }
    }
}
