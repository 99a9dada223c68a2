//! [`Shapes`]: working out a state's [`Shape`] and [`Schema`], tracing each
//! serde type through its `Deserialize` impl with serde-reflection, once
//! per type.

use std::any::TypeId;
use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_reflection::{
    ContainerFormat, Format, Named, Registry, Samples, Tracer, TracerConfig, VariantFormat,
};

use super::Handover;
use crate::error::Error;
use crate::schema::{Schema, Shape};

/// Works out the [`Shape`] of a state, for
/// [`Handover::shape`](crate::Handover::shape). Each serde type is traced
/// once, however often it occurs.
///
/// ```
/// use mitosis::{Handover, Shape, Shapes};
/// let mut shapes = Shapes::new();
/// assert_eq!(u32::shape(&mut shapes)?, Shape::U32);
/// # Ok::<(), mitosis::Error>(())
/// ```
#[derive(Default)]
pub struct Shapes {
    traced: HashMap<TypeId, Shape>,
    schemas: HashMap<TypeId, Schema>,
}

impl Shapes {
    /// A context that has traced nothing yet.
    ///
    /// ```
    /// let shapes = mitosis::Shapes::new();
    /// ```
    pub fn new() -> Shapes {
        Shapes::default()
    }

    /// `S`'s schema: its declared name and version, and a fingerprint of
    /// those and its whole shape.
    ///
    /// ```
    /// let schema = mitosis::Shapes::new().schema::<u64>()?;
    /// assert_eq!(schema, mitosis::Schema::of::<u64>()?);
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn schema<S: Handover>(&mut self) -> Result<Schema, Error> {
        if let Some(schema) = self.schemas.get(&TypeId::of::<S>()) {
            return Ok(schema.clone());
        }
        let shape = S::shape(self)?;
        Ok(self.schema_with::<S>(&shape))
    }

    /// `S`'s schema, for its shape worked out already.
    pub(crate) fn schema_with<S: Handover>(&mut self, shape: &Shape) -> Schema {
        let schema = Schema {
            name: S::SCHEMA.name,
            version: S::SCHEMA.version,
            fingerprint: shape.fingerprint(&S::SCHEMA.name, S::SCHEMA.version),
        };
        self.schemas.insert(TypeId::of::<S>(), schema.clone());
        schema
    }

    /// The shape postcard reads and writes for `T`, traced through its
    /// `Deserialize` impl.
    ///
    /// A type that cannot be traced (one whose `Deserialize` asks for
    /// `deserialize_any`, as untagged enums and self-describing values do,
    /// or that refuses every value the tracer offers it) is an error that
    /// names it: a handover never falls back to its name.
    ///
    /// ```
    /// use mitosis::{Shape, Shapes};
    /// #[derive(serde::Deserialize)]
    /// struct Config {
    ///     alpha: u32,
    /// }
    /// let shape = Shapes::new().serde::<Config>()?;
    /// assert_eq!(
    ///     shape,
    ///     Shape::Struct { name: "Config".into(), fields: vec![("alpha".into(), Shape::U32)] }
    /// );
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn serde<T: DeserializeOwned + 'static>(&mut self) -> Result<Shape, Error> {
        if let Some(shape) = self.traced.get(&TypeId::of::<T>()) {
            return Ok(shape.clone());
        }
        let untraceable = |detail: String| Error::Untraceable {
            type_name: std::any::type_name::<T>(),
            detail,
        };
        let (format, registry) = trace::<T>().map_err(untraceable)?;
        let shape = convert(&format, &registry, &mut Vec::new()).map_err(untraceable)?;
        self.traced.insert(TypeId::of::<T>(), shape.clone());
        Ok(shape)
    }
}

impl Schema {
    /// The schema a handover compares for `S`: its declared name and
    /// version, with a fingerprint that covers its whole [`Shape`].
    ///
    /// ```
    /// #[derive(mitosis::Handover)]
    /// #[handover(version = 2)]
    /// struct State {
    ///     generation: u64,
    /// }
    /// let schema = mitosis::Schema::of::<State>()?;
    /// assert_eq!(schema.version, 2);
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn of<S: Handover>() -> Result<Schema, Error> {
        Shapes::new().schema::<S>()
    }
}

/// How many times a type is traced again to find the enums nested in it.
const MAX_ROUNDS: usize = 64;

/// `T`'s format and the containers it names, with every variant of every
/// enum in it. The tracer explores one more variant of each unfinished enum
/// per pass, and says which enums it left unfinished only when it is done;
/// so each round traces until no enum known to be nested is unfinished, and
/// a round that finds more starts again, knowing them.
fn trace<T: DeserializeOwned>() -> Result<(Format, Registry), String> {
    let samples = Samples::new();
    let mut enums: Vec<String> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let mut tracer = Tracer::new(TracerConfig::default());
        let mut format;
        let mut passes = 0;
        loop {
            passes += 1;
            format = tracer
                .trace_type_once::<T>(&samples)
                .map_err(|error| error.to_string())?
                .0;
            let mut unfinished = false;
            if let Format::TypeName(name) = &format {
                unfinished |= tracer.check_incomplete_enum(name).is_some();
            }
            for name in &enums {
                unfinished |= tracer.check_incomplete_enum(name).is_some();
            }
            if !unfinished || passes > 4096 {
                break;
            }
        }
        match tracer.registry() {
            Ok(registry) => return Ok((format, registry)),
            Err(serde_reflection::Error::MissingVariants(names)) => {
                let known = enums.len();
                enums.extend(
                    names
                        .into_iter()
                        .filter(|name| !enums.contains(name))
                        .collect::<Vec<_>>(),
                );
                if enums.len() == known {
                    return Err(format!(
                        "the variants of {} could not all be traced",
                        enums.join(", ")
                    ));
                }
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err(format!("its enums are nested more than {MAX_ROUNDS} deep"))
}

/// A format as a shape, with each named container resolved into its
/// structure (`stack` holds the ones being resolved, for recursive types).
fn convert(format: &Format, registry: &Registry, stack: &mut Vec<String>) -> Result<Shape, String> {
    let boxed =
        |format: &Format, stack: &mut Vec<String>| convert(format, registry, stack).map(Box::new);
    Ok(match format {
        Format::Variable(_) => return Err("its format was not fully traced".into()),
        Format::TypeName(name) => return container(name, registry, stack),
        Format::Unit => Shape::Unit,
        Format::Bool => Shape::Bool,
        Format::I8 => Shape::I8,
        Format::I16 => Shape::I16,
        Format::I32 => Shape::I32,
        Format::I64 => Shape::I64,
        Format::I128 => Shape::I128,
        Format::U8 => Shape::U8,
        Format::U16 => Shape::U16,
        Format::U32 => Shape::U32,
        Format::U64 => Shape::U64,
        Format::U128 => Shape::U128,
        Format::F32 => Shape::F32,
        Format::F64 => Shape::F64,
        Format::Char => Shape::Char,
        Format::Str => Shape::Str,
        Format::Bytes => Shape::Bytes,
        Format::Option(inner) => Shape::Option(boxed(inner, stack)?),
        Format::Seq(inner) => Shape::Seq(boxed(inner, stack)?),
        Format::Map { key, value } => Shape::Map(boxed(key, stack)?, boxed(value, stack)?),
        Format::Tuple(items) => Shape::Tuple(list(items, registry, stack)?),
        Format::TupleArray { content, size } => Shape::Array(boxed(content, stack)?, *size as u64),
    })
}

fn list(
    items: &[Format],
    registry: &Registry,
    stack: &mut Vec<String>,
) -> Result<Vec<Shape>, String> {
    items
        .iter()
        .map(|item| convert(item, registry, stack))
        .collect()
}

fn fields(
    fields: &[Named<Format>],
    registry: &Registry,
    stack: &mut Vec<String>,
) -> Result<Vec<(String, Shape)>, String> {
    fields
        .iter()
        .map(|field| Ok((field.name.clone(), convert(&field.value, registry, stack)?)))
        .collect()
}

/// A named container: a struct or an enum, or a reference back up to one
/// that is being resolved.
fn container(name: &str, registry: &Registry, stack: &mut Vec<String>) -> Result<Shape, String> {
    if let Some(up) = stack.iter().rev().position(|open| open == name) {
        return Ok(Shape::Recursive {
            name: name.to_owned(),
            depth: up as u32,
        });
    }
    let format = registry
        .get(name)
        .ok_or_else(|| format!("its container {name} was not traced"))?;
    stack.push(name.to_owned());
    let shape = match format {
        ContainerFormat::UnitStruct => Shape::Struct {
            name: name.to_owned(),
            fields: Vec::new(),
        },
        ContainerFormat::NewTypeStruct(inner) => {
            Shape::Tuple(vec![convert(inner, registry, stack)?])
        }
        ContainerFormat::TupleStruct(items) => Shape::Tuple(list(items, registry, stack)?),
        ContainerFormat::Struct(named) => Shape::Struct {
            name: name.to_owned(),
            fields: fields(named, registry, stack)?,
        },
        ContainerFormat::Enum(variants) => Shape::Enum {
            name: name.to_owned(),
            variants: variants
                .values()
                .map(|variant| {
                    Ok((
                        variant.name.clone(),
                        self::variant(name, &variant.value, registry, stack)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        },
    };
    stack.pop();
    Ok(shape)
}

fn variant(
    name: &str,
    variant: &VariantFormat,
    registry: &Registry,
    stack: &mut Vec<String>,
) -> Result<Shape, String> {
    Ok(match variant {
        VariantFormat::Variable(_) => {
            return Err(format!("a variant of {name} was not fully traced"));
        }
        VariantFormat::Unit => Shape::Tuple(Vec::new()),
        VariantFormat::NewType(inner) => Shape::Tuple(vec![convert(inner, registry, stack)?]),
        VariantFormat::Tuple(items) => Shape::Tuple(list(items, registry, stack)?),
        VariantFormat::Struct(named) => Shape::Struct {
            name: name.to_owned(),
            fields: fields(named, registry, stack)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Config {
        alpha: u32,
        beta: Option<Vec<u16>>,
        mode: Mode,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Mode {
        Red,
        Green(u8),
        Blue { depth: i64 },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum List {
        Nil,
        Cons(u32, Box<List>),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Loose {
        Number(u32),
        Text(String),
    }

    #[test]
    fn nested_structs_and_enums_resolve_to_their_structure() {
        let shape = Shapes::new().serde::<Config>().unwrap();
        let Shape::Struct { fields, .. } = &shape else {
            panic!("{shape:?}")
        };
        assert_eq!(fields[0], ("alpha".into(), Shape::U32));
        assert_eq!(
            fields[1],
            (
                "beta".into(),
                Shape::Option(Box::new(Shape::Seq(Box::new(Shape::U16))))
            )
        );
        let Shape::Enum { variants, .. } = &fields[2].1 else {
            panic!("{shape:?}")
        };
        let names: Vec<&str> = variants.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["Red", "Green", "Blue"]);
        assert_eq!(variants[1].1, Shape::Tuple(vec![Shape::U8]));
    }

    #[test]
    fn a_recursive_type_refers_back_to_itself() {
        let shape = Shapes::new().serde::<List>().unwrap();
        let Shape::Enum { variants, .. } = &shape else {
            panic!("{shape:?}")
        };
        assert_eq!(
            variants[1].1,
            Shape::Tuple(vec![
                Shape::U32,
                Shape::Recursive {
                    name: "List".into(),
                    depth: 0
                }
            ])
        );
    }

    #[test]
    fn an_untagged_enum_fails_closed_with_its_name() {
        let error = Shapes::new().serde::<Loose>().unwrap_err();
        assert!(
            error.to_string().contains("Loose") && error.to_string().contains("cannot be traced"),
            "{error}"
        );
    }

    #[test]
    fn each_type_is_traced_once() {
        let mut shapes = Shapes::new();
        shapes.serde::<Config>().unwrap();
        shapes.serde::<Config>().unwrap();
        assert_eq!(shapes.traced.len(), 1);
    }
}
