//! A state's [`Shape`] on the wire: the description that OFFER and REJECT
//! carry, so that each process can name what differs from the other's
//! state (PROTOCOL.md, "Frames").
//!
//! Each node is a tag byte, then its contents; names are strings (u16
//! length, UTF-8), counts are u16. A description is bounded three ways, and
//! one that does not fit is left out rather than cut: at most
//! [`MAX_DESCRIPTION`] bytes, [`MAX_DEPTH`] levels, and [`MAX_NODES`] nodes.

use super::{Fields, Payload};
use crate::error::Error;
use crate::schema::Shape;

/// The most bytes a description takes in a frame.
pub(crate) const MAX_DESCRIPTION: usize = 32 * 1024;

/// The deepest nesting a description may have.
const MAX_DEPTH: u32 = 64;

/// The most nodes a description may have.
const MAX_NODES: u32 = 8192;

/// The longest name in a description, in bytes.
const MAX_NAME: usize = 255;

impl Shape {
    /// How many bytes this shape's description takes in the handshake
    /// (PROTOCOL.md, "Frames"), which lets the other process name what
    /// differs on a mismatch; `None` when it is past the description's
    /// bounds (32 KiB, 64 levels, 8,192 nodes), and so left out.
    ///
    /// ```
    /// use mitosis::{Handover, Shapes};
    /// let shape = Vec::<String>::shape(&mut Shapes::new())?;
    /// assert_eq!(shape.description_len(), Some(2));
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn description_len(&self) -> Option<usize> {
        describe(self).map(|bytes| bytes.len())
    }
}

/// `shape` as a description, if it fits the bounds.
pub(crate) fn describe(shape: &Shape) -> Option<Vec<u8>> {
    let mut out = Payload::default();
    let mut nodes = 0;
    write(shape, &mut out, 0, &mut nodes)?;
    (out.0.len() <= MAX_DESCRIPTION).then_some(out.0)
}

fn write(shape: &Shape, out: &mut Payload, depth: u32, nodes: &mut u32) -> Option<()> {
    *nodes += 1;
    if depth > MAX_DEPTH || *nodes > MAX_NODES || out.0.len() > MAX_DESCRIPTION {
        return None;
    }
    let name = |out: &mut Payload, name: &str| -> Option<()> {
        (name.len() <= MAX_NAME).then(|| {
            out.str(name);
        })
    };
    let count = |out: &mut Payload, n: usize| -> Option<()> {
        out.u16(u16::try_from(n).ok()?);
        Some(())
    };
    let deeper = depth + 1;
    match shape {
        Shape::Unit => out.u8(1),
        Shape::Bool => out.u8(2),
        Shape::I8 => out.u8(3),
        Shape::I16 => out.u8(4),
        Shape::I32 => out.u8(5),
        Shape::I64 => out.u8(6),
        Shape::I128 => out.u8(7),
        Shape::U8 => out.u8(8),
        Shape::U16 => out.u8(9),
        Shape::U32 => out.u8(10),
        Shape::U64 => out.u8(11),
        Shape::U128 => out.u8(12),
        Shape::F32 => out.u8(13),
        Shape::F64 => out.u8(14),
        Shape::Char => out.u8(15),
        Shape::Str => out.u8(16),
        Shape::Bytes => out.u8(17),
        Shape::Option(inner) => {
            out.u8(18);
            return write(inner, out, deeper, nodes);
        }
        Shape::Seq(inner) => {
            out.u8(19);
            return write(inner, out, deeper, nodes);
        }
        Shape::Map(key, value) => {
            out.u8(20);
            write(key, out, deeper, nodes)?;
            return write(value, out, deeper, nodes);
        }
        Shape::Tuple(items) => {
            out.u8(21);
            count(out, items.len())?;
            for item in items {
                write(item, out, deeper, nodes)?;
            }
            return Some(());
        }
        Shape::Array(item, len) => {
            out.u8(22).u64(*len);
            return write(item, out, deeper, nodes);
        }
        Shape::Struct {
            name: type_name,
            fields: named,
        }
        | Shape::Enum {
            name: type_name,
            variants: named,
        } => {
            out.u8(if matches!(shape, Shape::Struct { .. }) {
                23
            } else {
                24
            });
            name(out, type_name)?;
            count(out, named.len())?;
            for (field, shape) in named {
                name(out, field)?;
                write(shape, out, deeper, nodes)?;
            }
            return Some(());
        }
        Shape::Fd(kind) => {
            out.u8(25);
            return name(out, kind);
        }
        Shape::Opaque {
            name: opaque,
            version,
        } => {
            out.u8(26);
            name(out, opaque)?;
            out.u32(*version)
        }
        Shape::Recursive {
            name: recursive,
            depth,
        } => {
            out.u8(27);
            name(out, recursive)?;
            out.u32(*depth)
        }
    };
    Some(())
}

/// Reads a description written by [`describe`], within the same bounds.
pub(crate) fn read(fields: &mut Fields<'_>) -> Result<Shape, Error> {
    let mut nodes = 0;
    read_node(fields, 0, &mut nodes)
}

fn read_node(fields: &mut Fields<'_>, depth: u32, nodes: &mut u32) -> Result<Shape, Error> {
    *nodes += 1;
    if depth > MAX_DEPTH || *nodes > MAX_NODES {
        return Err(Error::protocol(
            fields.step,
            format!(
                "{} frame has a state description deeper than {MAX_DEPTH} or larger than \
                 {MAX_NODES} nodes",
                fields.kind
            ),
        ));
    }
    let deeper = depth + 1;
    let boxed =
        |fields: &mut Fields<'_>, nodes: &mut u32| read_node(fields, deeper, nodes).map(Box::new);
    Ok(match fields.u8()? {
        1 => Shape::Unit,
        2 => Shape::Bool,
        3 => Shape::I8,
        4 => Shape::I16,
        5 => Shape::I32,
        6 => Shape::I64,
        7 => Shape::I128,
        8 => Shape::U8,
        9 => Shape::U16,
        10 => Shape::U32,
        11 => Shape::U64,
        12 => Shape::U128,
        13 => Shape::F32,
        14 => Shape::F64,
        15 => Shape::Char,
        16 => Shape::Str,
        17 => Shape::Bytes,
        18 => Shape::Option(boxed(fields, nodes)?),
        19 => Shape::Seq(boxed(fields, nodes)?),
        20 => Shape::Map(boxed(fields, nodes)?, boxed(fields, nodes)?),
        21 => {
            let count = fields.u16()?;
            Shape::Tuple(
                (0..count)
                    .map(|_| read_node(fields, deeper, nodes))
                    .collect::<Result<_, _>>()?,
            )
        }
        22 => {
            let len = fields.u64()?;
            Shape::Array(boxed(fields, nodes)?, len)
        }
        tag @ (23 | 24) => {
            let name = fields.str()?;
            let count = fields.u16()?;
            let named = (0..count)
                .map(|_| Ok((fields.str()?, read_node(fields, deeper, nodes)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            if tag == 23 {
                Shape::Struct {
                    name,
                    fields: named,
                }
            } else {
                Shape::Enum {
                    name,
                    variants: named,
                }
            }
        }
        25 => Shape::Fd(fields.str()?),
        26 => Shape::Opaque {
            name: fields.str()?,
            version: fields.u32()?,
        },
        27 => Shape::Recursive {
            name: fields.str()?,
            depth: fields.u32()?,
        },
        tag => {
            return Err(Error::protocol(
                fields.step,
                format!(
                    "{} frame has a state description with unknown node {tag}",
                    fields.kind
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Step;

    fn round_trip(shape: &Shape) -> Shape {
        let bytes = describe(shape).expect("fits");
        let mut fields = Fields::new(Step::Offer, "OFFER", &bytes);
        let back = read(&mut fields).unwrap();
        fields.end().unwrap();
        back
    }

    #[test]
    fn every_node_round_trips() {
        let shape = Shape::Struct {
            name: "State".into(),
            fields: vec![
                ("a".into(), Shape::Option(Box::new(Shape::U32))),
                (
                    "b".into(),
                    Shape::Map(
                        Box::new(Shape::Str),
                        Box::new(Shape::Seq(Box::new(Shape::Bytes))),
                    ),
                ),
                ("c".into(), Shape::Array(Box::new(Shape::I8), 4)),
                (
                    "d".into(),
                    Shape::Enum {
                        name: "Mode".into(),
                        variants: vec![
                            ("Off".into(), Shape::Tuple(Vec::new())),
                            (
                                "On".into(),
                                Shape::Recursive {
                                    name: "Mode".into(),
                                    depth: 0,
                                },
                            ),
                        ],
                    },
                ),
                ("e".into(), Shape::Fd("TcpStream".into())),
                (
                    "f".into(),
                    Shape::Opaque {
                        name: "x".into(),
                        version: 3,
                    },
                ),
            ],
        };
        assert_eq!(round_trip(&shape), shape);
    }

    #[test]
    fn a_description_past_its_bounds_is_left_out() {
        let mut deep = Shape::U8;
        for _ in 0..=MAX_DEPTH + 1 {
            deep = Shape::Option(Box::new(deep));
        }
        assert_eq!(describe(&deep), None);
        // A hostile one is refused while reading, before it goes deeper.
        let bytes = vec![18u8; 10_000];
        let mut fields = Fields::new(Step::Offer, "OFFER", &bytes);
        let error = read(&mut fields).unwrap_err();
        assert!(error.to_string().contains("deeper than 64"), "{error}");
    }
}
