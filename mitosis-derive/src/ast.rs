//! Borrowed views of the derive input, keeping every span for errors.

use proc_macro2::Span;
use syn::{DeriveInput, Generics, Ident, Index, Member, Result, Type};

use crate::attr::{self, ContainerAttrs, FieldAttrs};

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
    pub fn from_syn(node: &'a DeriveInput) -> Result<Self> {
        match &node.data {
            syn::Data::Struct(data) => Ok(Input::Struct(Struct {
                attrs: attr::container(&node.attrs)?,
                ident: &node.ident,
                generics: &node.generics,
                fields: Field::multiple_from_syn(&data.fields)?,
            })),
            syn::Data::Enum(data) => Ok(Input::Enum(Enum {
                attrs: attr::container(&node.attrs)?,
                ident: &node.ident,
                generics: &node.generics,
                variants: data
                    .variants
                    .iter()
                    .map(Variant::from_syn)
                    .collect::<Result<_>>()?,
            })),
            syn::Data::Union(data) => Err(syn::Error::new_spanned(
                data.union_token,
                "Handover cannot be derived for a union: which field is live is not known, so \
                 it cannot be encoded; use an enum",
            )),
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(node: &'a syn::Variant) -> Result<Self> {
        attr::variant(&node.attrs)?;
        Ok(Variant {
            ident: &node.ident,
            fields: Field::multiple_from_syn(&node.fields)?,
        })
    }
}

impl<'a> Field<'a> {
    fn multiple_from_syn(fields: &'a syn::Fields) -> Result<Vec<Self>> {
        fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                Ok(Field {
                    attrs: attr::field(&field.attrs)?,
                    member: match &field.ident {
                        Some(ident) => Member::Named(ident.clone()),
                        None => Member::Unnamed(Index {
                            index: i as u32,
                            span: Span::call_site(),
                        }),
                    },
                    ty: &field.ty,
                })
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
