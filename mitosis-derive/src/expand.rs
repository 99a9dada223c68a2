//! Writing the `Handover` impl.
//!
//! Generated code uses fully qualified paths only, rooted at the crate path
//! (`::mitosis`, or `#[handover(crate = "...")]`), and goes through its
//! `__private` module. Each field's path (bytes, `Handover`, or serde) is
//! picked by method resolution on its type; see that module.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Generics, Ident, LitStr, Path, Type};

use crate::ast::{Enum, Field, Input, Struct, Variant};
use crate::attr::{self, ContainerAttrs, Removed};
use crate::ctxt::Ctxt;

pub fn derive(node: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let attrs = attr::container(&cx, &node.attrs);
    let krate = attrs.krate();
    let input = Input::from_syn(&cx, node, attrs);
    if let Some(input) = &input {
        input.validate(&cx);
    }
    match (cx.check(), input) {
        (Ok(()), Some(Input::Struct(input))) => impl_struct(input),
        (Ok(()), Some(Input::Enum(input))) => impl_enum(input),
        // Every error, plus an impl, so that uses of the type do not pile
        // more errors on top of the ones that matter.
        (Err(error), _) => fallback(node, &krate, error),
        (Ok(()), None) => unreachable!("a refused input records an error"),
    }
}

fn fallback(input: &DeriveInput, krate: &Path, error: syn::Error) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let error = error.into_compile_error();
    quote! {
        #error
        #[automatically_derived]
        impl #impl_generics #krate::Handover for #ident #ty_generics #where_clause {
            const SCHEMA: #krate::Schema = #krate::Schema::new("", 0);
            fn encode<'__a>(
                &'__a self,
                _: &mut #krate::Encoder<'__a>,
            ) -> ::core::result::Result<(), #krate::Error> {
                ::core::unreachable!()
            }
            fn decode(
                _: &mut #krate::Decoder<'_>,
            ) -> ::core::result::Result<Self, #krate::Error> {
                ::core::unreachable!()
            }
        }
    }
}

fn impl_struct(input: Struct<'_>) -> TokenStream {
    let krate = input.attrs.krate();
    let shape = fields_shape(&krate, &input.ident.to_string(), &input.fields);
    let bindings: Vec<TokenStream> = input
        .fields
        .iter()
        .map(|field| {
            let member = &field.member;
            quote!(&self.#member)
        })
        .collect();
    let encode = encode_fields(&krate, &input.fields, &bindings);
    let construct = construct(&krate, quote!(Self), &input.fields);
    let body = Body {
        shape,
        encode: quote!(#(#encode)*),
        decode: quote!(::core::result::Result::Ok(#construct)),
        versions: versions(&krate, &input),
    };
    let fields: Vec<&Field<'_>> = input.fields.iter().collect();
    body.into_impl(input.ident, input.generics, &fields, &input.attrs)
}

/// A field of an older version of a struct: one it still has, or one
/// `removed` since.
enum Item<'f, 'a> {
    Field(&'f Field<'a>),
    Removed(&'f Removed),
}

impl Item<'_, '_> {
    fn name(&self) -> String {
        match self {
            Item::Field(field) => field.schema_name(),
            Item::Removed(removed) => removed.name.clone(),
        }
    }
}

/// For each version older than this one that a `since` or `removed` names
/// (the one before each change), newest first: the version, its shape and
/// its decoding, from this definition alone.
fn versions(krate: &Path, input: &Struct<'_>) -> Vec<Version> {
    let mut olds: Vec<u32> = input
        .fields
        .iter()
        .filter_map(|field| field.attrs.since.map(|(_, since)| since))
        .chain(input.attrs.removed.iter().map(|removed| removed.since.1))
        .filter(|&since| since > 0)
        .map(|since| since - 1)
        .collect();
    olds.sort_unstable();
    olds.dedup();
    olds.reverse();
    let name = input.ident.to_string();
    olds.into_iter()
        .map(|version| {
            let items = as_of(input, version);
            let shapes = items.iter().map(|item| match item {
                Item::Field(field) => field_shape(krate, field),
                Item::Removed(removed) => {
                    let ty = &removed.ty;
                    quote!((&#krate::__private::Slot::<#ty>::new()).shape_field(__shapes)?)
                }
            });
            let names = items.iter().map(Item::name);
            let shape = quote! {
                #krate::Shape::Struct {
                    name: ::std::string::String::from(#name),
                    fields: ::std::vec![#((::std::string::String::from(#names), #shapes)),*],
                }
            };
            Version {
                version,
                shape,
                decode: decode_as_of(krate, input, &items),
            }
        })
        .collect()
}

/// The sent fields of version `version`, in its order: this one's fields
/// that existed then (`since` at most `version`), and the fields removed
/// after it, each after its `after` field (first without one; last when
/// that field did not exist then either).
fn as_of<'f, 'a>(input: &'f Struct<'a>, version: u32) -> Vec<Item<'f, 'a>> {
    let mut items: Vec<Item<'f, 'a>> = input
        .fields
        .iter()
        .filter(|field| field.attrs.skip.is_none())
        .filter(|field| field.attrs.since.is_none_or(|(_, since)| since <= version))
        .map(Item::Field)
        .collect();
    for removed in input
        .attrs
        .removed
        .iter()
        .filter(|removed| removed.since.1 > version)
    {
        let at = match &removed.after {
            None => 0,
            Some((_, after)) => items
                .iter()
                .position(|item| &item.name() == after)
                .map_or(items.len(), |i| i + 1),
        };
        items.insert(at, Item::Removed(removed));
    }
    items
}

/// Decodes a state of an older version: `items` in its order (a removed
/// field is decoded and dropped, closing any fd it holds), then the struct,
/// with each field that did not exist then at its default.
fn decode_as_of(krate: &Path, input: &Struct<'_>, items: &[Item<'_, '_>]) -> TokenStream {
    let binding = |name: &str| format_ident!("__v_{}", name);
    let reads = items.iter().map(|item| match item {
        Item::Field(field) => {
            let binding = binding(&field.schema_name());
            let value = decode_value(krate, field);
            quote!(let #binding = #value;)
        }
        Item::Removed(removed) => {
            let ty = &removed.ty;
            quote!(let _: #ty = (&#krate::__private::Slot::<#ty>::new()).decode_field(__input)?;)
        }
    });
    let present: Vec<String> = items.iter().map(Item::name).collect();
    let values = input.fields.iter().map(|field| {
        let member = &field.member;
        let value = match (field.attrs.skip, field.attrs.since) {
            (Some(skip), _) => default_value(field, skip),
            (None, Some((since, _))) if !present.contains(&field.schema_name()) => {
                default_value(field, since)
            }
            _ => binding(&field.schema_name()).to_token_stream(),
        };
        quote!(#member: #value)
    });
    quote! {{
        #(#reads)*
        ::core::result::Result::Ok(Self { #(#values,)* })
    }}
}

fn impl_enum(input: Enum<'_>) -> TokenStream {
    let krate = input.attrs.krate();
    let mut variants = Vec::new();
    let mut encode_arms = Vec::new();
    let mut decode_arms = Vec::new();
    for (index, variant) in input.variants.iter().enumerate() {
        let index = index as u32;
        let variant_name = variant.ident.to_string();
        let variant_shape = fields_shape(&krate, &input.ident.to_string(), &variant.fields);
        variants.push(quote!((::std::string::String::from(#variant_name), #variant_shape)));
        let Variant { ident, fields } = variant;
        let bindings: Vec<Ident> = (0..fields.len())
            .map(|i| format_ident!("__field{}", i))
            .collect();
        let members = fields.iter().map(|field| &field.member);
        let pattern = quote!(Self::#ident { #(#members: #bindings,)* .. });
        let bound: Vec<TokenStream> = bindings.iter().map(ToTokens::to_token_stream).collect();
        let encode = encode_fields(&krate, fields, &bound);
        encode_arms.push(quote! {
            #[allow(unused_variables)]
            #pattern => {
                __out.value(&#index)?;
                #(#encode)*
            }
        });
        let construct = construct(&krate, quote!(Self::#ident), fields);
        decode_arms.push(quote!(#index => ::core::result::Result::Ok(#construct),));
    }
    let name = input.ident.to_string();
    let shape = quote! {
        #krate::Shape::Enum {
            name: ::std::string::String::from(#name),
            variants: ::std::vec![#(#variants),*],
        }
    };
    let body = Body {
        shape,
        versions: Vec::new(),
        encode: quote! {
            match self {
                #(#encode_arms)*
            }
        },
        decode: quote! {
            match __input.value::<u32>()? {
                #(#decode_arms)*
                __index => ::core::result::Result::Err(
                    #krate::__private::unknown_variant(#name, __index),
                ),
            }
        },
    };
    let fields: Vec<&Field<'_>> = input.variants.iter().flat_map(|v| &v.fields).collect();
    body.into_impl(input.ident, input.generics, &fields, &input.attrs)
}

/// An older version a struct accepts states of, worked out from `since`
/// and `removed`.
struct Version {
    version: u32,
    /// An expression of type `Shape`, in a function with `__shapes`.
    shape: TokenStream,
    /// An expression of type `Result<Self, Error>`, in a function with
    /// `__input`.
    decode: TokenStream,
}

/// The parts of the generated impl that differ between structs and enums.
struct Body {
    /// The older versions of this definition (structs only).
    versions: Vec<Version>,
    /// An expression of type `Shape`, in a function with `__shapes`.
    shape: TokenStream,
    encode: TokenStream,
    decode: TokenStream,
}

impl Body {
    fn into_impl(
        self,
        ident: &Ident,
        generics: &Generics,
        fields: &[&Field<'_>],
        attrs: &ContainerAttrs,
    ) -> TokenStream {
        let Body {
            shape,
            encode,
            decode,
            versions,
        } = self;
        let schema = schema(&attrs.krate(), attrs, ident);
        let krate = attrs.krate();
        let generics = with_bounds(&krate, generics, fields);
        let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
        let migration = older(&krate, &versions, attrs.migrate_from.as_ref());
        let checks = fields.iter().filter_map(|field| check(&krate, field));
        quote! {
            #[automatically_derived]
            impl #impl_generics #krate::Handover for #ident #ty_generics #where_clause {
                const SCHEMA: #krate::Schema = #schema;

                fn shape(
                    __shapes: &mut #krate::Shapes,
                ) -> ::core::result::Result<#krate::Shape, #krate::Error> {
                    #[allow(unused_imports)]
                    use #krate::__private::{
                        ShapeHandover as _, ShapeSerde as _, ShapeUnsupported as _,
                    };
                    ::core::result::Result::Ok(#shape)
                }

                fn encode<'__a>(
                    &'__a self,
                    __out: &mut #krate::Encoder<'__a>,
                ) -> ::core::result::Result<(), #krate::Error> {
                    #[allow(unused_imports)]
                    use #krate::__private::{
                        CheckHandover as _, CheckSerde as _, CheckUnsupported as _,
                        EncodeHandover as _, EncodeSerde as _, EncodeUnsupported as _,
                    };
                    #(#checks)*
                    #encode
                    ::core::result::Result::Ok(())
                }

                fn decode(
                    __input: &mut #krate::Decoder<'_>,
                ) -> ::core::result::Result<Self, #krate::Error> {
                    #[allow(unused_imports)]
                    use #krate::__private::{
                        DecodeHandover as _, DecodeSerde as _, DecodeUnsupported as _,
                    };
                    #decode
                }

                #migration
            }
        }
    }
}

/// For a field sent through its type's `Handover` or serde impl, the
/// statement that fails to compile, with an error naming the type and
/// spanned on it, when the type has neither (see `__private::HandedOver`).
fn check(krate: &Path, field: &Field<'_>) -> Option<TokenStream> {
    let attrs = &field.attrs;
    if attrs.skip.is_some() || attrs.with.is_some() || attrs.fd.is_some() {
        return None;
    }
    // rustc reports a method's failed bound at the method's name, and a
    // proc macro on stable cannot make one span out of several tokens: the
    // call is spanned on the type's first token.
    let ty = field.ty;
    Some(quote_spanned!(ty.span()=> #krate::__private::Slot::<#ty>::new().check_field();))
}

/// `accepted` and `decode_from` for the older states this type accepts:
/// its own older versions (`since`, `removed`), then, through
/// `migrate_from(Old)`, whatever `Old` accepts. Nothing when there are none.
/// The calls on `Old` are spanned on it, so that a type that is not
/// `Handover`, or has no `From` into this one, is reported there.
fn older(krate: &Path, versions: &[Version], old: Option<&Type>) -> Option<TokenStream> {
    if versions.is_empty() && old.is_none() {
        return None;
    }
    let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
    let shapes: Vec<&TokenStream> = versions.iter().map(|v| &v.shape).collect();
    let decodes = versions.iter().map(|v| &v.decode);
    let accepted_old = old.map(|old| {
        let span = old.span();
        quote_spanned!(span=> __accepted.extend(<#old as #krate::Handover>::accepted(__shapes)?);)
    });
    let otherwise = match old {
        Some(old) => {
            let span = old.span();
            let decode_old = quote_spanned!(span=>
                <#old as #krate::Handover>::decode_from(__fingerprint, __input));
            let convert = quote_spanned!(span=> <Self as ::core::convert::From<#old>>::from);
            quote!(#decode_old.map(#convert))
        }
        None => quote!(::core::result::Result::Err(#krate::__private::no_migration(
            &<Self as #krate::Handover>::SCHEMA,
            __fingerprint,
        ))),
    };
    Some(quote! {
        fn accepted(
            __shapes: &mut #krate::Shapes,
        ) -> ::core::result::Result<::std::vec::Vec<#krate::Schema>, #krate::Error> {
            #[allow(unused_imports)]
            use #krate::__private::{ShapeHandover as _, ShapeSerde as _, ShapeUnsupported as _};
            let mut __accepted = ::std::vec![__shapes.schema::<Self>()?];
            #(
                __accepted.push(#krate::__private::schema_as_of(
                    &<Self as #krate::Handover>::SCHEMA,
                    #numbers,
                    &#shapes,
                ));
            )*
            #accepted_old
            ::core::result::Result::Ok(__accepted)
        }

        fn decode_from(
            __fingerprint: u64,
            __input: &mut #krate::Decoder<'_>,
        ) -> ::core::result::Result<Self, #krate::Error> {
            #[allow(unused_imports)]
            use #krate::__private::{
                DecodeHandover as _, DecodeSerde as _, DecodeUnsupported as _,
                ShapeHandover as _, ShapeSerde as _, ShapeUnsupported as _,
            };
            if __fingerprint == __input.fingerprint_of::<Self>()? {
                return <Self as #krate::Handover>::decode(__input);
            }
            #(
                {
                    let __shapes = #krate::__private::shapes(__input);
                    let __shape = #shapes;
                    let __schema = #krate::__private::schema_as_of(
                        &<Self as #krate::Handover>::SCHEMA,
                        #numbers,
                        &__shape,
                    );
                    if __fingerprint == __schema.fingerprint {
                        return #decodes;
                    }
                }
            )*
            #otherwise
        }
    })
}

/// The declared schema: the name (`name = "..."`, or the type's module path
/// and identifier) and the version. The fingerprint that is compared also
/// covers the shape, at run time (`Schema::of`).
fn schema(krate: &Path, attrs: &ContainerAttrs, ident: &Ident) -> TokenStream {
    let version = attrs.version.unwrap_or(0);
    let name = match &attrs.name {
        Some(name) => name.to_token_stream(),
        None => {
            let ident = LitStr::new(&ident.to_string(), Span::call_site());
            quote!(::core::concat!(::core::module_path!(), "::", #ident))
        }
    };
    quote!(#krate::Schema::new(#name, #version))
}

/// The shape of some fields, as an expression: a struct of the named ones,
/// a tuple of unnamed ones, each sent field with its own shape. Skipped
/// fields are left out: they do not change what crosses.
fn fields_shape(krate: &Path, name: &str, fields: &[Field<'_>]) -> TokenStream {
    let sent: Vec<&Field<'_>> = fields
        .iter()
        .filter(|field| field.attrs.skip.is_none())
        .collect();
    let shapes: Vec<TokenStream> = sent.iter().map(|field| field_shape(krate, field)).collect();
    if fields
        .iter()
        .any(|field| matches!(field.member, syn::Member::Named(_)))
    {
        let names = sent.iter().map(|field| field.schema_name());
        quote! {
            #krate::Shape::Struct {
                name: ::std::string::String::from(#name),
                fields: ::std::vec![#((::std::string::String::from(#names), #shapes)),*],
            }
        }
    } else {
        quote!(#krate::Shape::Tuple(::std::vec![#(#shapes),*]))
    }
}

/// One field's shape: its type's own, picked like its encoding (bytes,
/// `Handover`, or traced serde); an fd's; or, for a field handed over
/// `with` a module, only the type and module as written.
fn field_shape(krate: &Path, field: &Field<'_>) -> TokenStream {
    let ty = field.ty;
    if let Some((_, module)) = &field.attrs.with {
        let written = format!("{} with {}", ty.to_token_stream(), module.to_token_stream());
        quote! {
            #krate::Shape::Opaque {
                name: ::std::string::String::from(#written),
                version: 0,
            }
        }
    } else if field.attrs.fd.is_some() {
        quote!(#krate::Shape::Fd(::std::string::String::from("fd")))
    } else {
        quote!((&#krate::__private::Slot::<#ty>::new()).shape_field(__shapes)?)
    }
}

/// Statements that encode `fields`, each given as an expression of type
/// `&FieldType`.
fn encode_fields(krate: &Path, fields: &[Field<'_>], bindings: &[TokenStream]) -> Vec<TokenStream> {
    fields
        .iter()
        .zip(bindings)
        .filter(|(field, _)| field.attrs.skip.is_none())
        .map(|(field, binding)| {
            if let Some((_, module)) = &field.attrs.with {
                quote!(#module::encode(#binding, __out)?;)
            } else if field.attrs.fd.is_some() {
                // Spanned on the type, which is what a failed bound is about.
                let ty = field.ty;
                quote_spanned!(ty.span()=> #krate::__private::encode_fd::<#ty>(#binding, __out)?;)
            } else {
                quote!((&#krate::__private::Field(#binding)).encode_field(__out)?;)
            }
        })
        .collect()
}

/// The expression that builds `path` from decoded fields, in declaration
/// order (the order they were encoded in).
fn construct(krate: &Path, path: TokenStream, fields: &[Field<'_>]) -> TokenStream {
    let values = fields.iter().map(|field| {
        let member = &field.member;
        let value = match field.attrs.skip {
            Some(skip) => default_value(field, skip),
            None => decode_value(krate, field),
        };
        quote!(#member: #value)
    });
    quote!(#path { #(#values,)* })
}

/// A sent field's value, read from `__input`.
fn decode_value(krate: &Path, field: &Field<'_>) -> TokenStream {
    let ty = field.ty;
    if let Some((_, module)) = &field.attrs.with {
        quote!(#module::decode(__input)?)
    } else if field.attrs.fd.is_some() {
        quote_spanned!(ty.span()=> #krate::__private::decode_fd::<#ty>(__input)?)
    } else {
        quote!((&#krate::__private::Slot::<#ty>::new()).decode_field(__input)?)
    }
}

/// The value of a field that did not cross: `default = "path"`, or the
/// type's `Default` (spanned on `at`, the attribute that needs it, so that
/// a type without `Default` is reported there).
fn default_value(field: &Field<'_>, at: Span) -> TokenStream {
    let ty = field.ty;
    match &field.attrs.default {
        Some((_, Some(function))) => quote!(#function()),
        _ => quote_spanned!(at=> <#ty as ::core::default::Default>::default()),
    }
}

/// The generics with `T: Handover` for every type parameter that appears in
/// a field that is sent through its `Handover` impl, as serde infers its
/// bounds.
fn with_bounds(krate: &Path, generics: &Generics, fields: &[&Field<'_>]) -> Generics {
    let mut generics = generics.clone();
    let used: Vec<Ident> = generics
        .type_params()
        .map(|param| param.ident.clone())
        .filter(|param| {
            fields.iter().any(|field| {
                field.attrs.skip.is_none()
                    && field.attrs.with.is_none()
                    && field.attrs.fd.is_none()
                    && mentions(field.ty.to_token_stream(), param)
            })
        })
        .collect();
    let where_clause = generics.make_where_clause();
    for param in used {
        where_clause
            .predicates
            .push(syn::parse_quote!(#param: #krate::Handover));
    }
    generics
}

fn mentions(tokens: TokenStream, ident: &Ident) -> bool {
    tokens.into_iter().any(|token| match token {
        proc_macro2::TokenTree::Ident(found) => &found == ident,
        proc_macro2::TokenTree::Group(group) => mentions(group.stream(), ident),
        _ => false,
    })
}
