//! `Handover` for tokio-util's framed streams, with their read and write
//! buffers, and for tokio-util's `BytesCodec` and `LinesCodec`.
//!
//! The codec crosses with the stream, so it must be `Handover` itself: a
//! codec with settings hands them over, and one without any hands over
//! nothing. A program's own codec derives it like any state type:
//!
//! ```
//! use bytes::BytesMut;
//! use tokio_util::codec::Decoder;
//!
//! #[derive(mitosis::Handover)]
//! struct Frames {
//!     max_frame: usize,
//! }
//!
//! impl Decoder for Frames {
//!     type Item = BytesMut;
//!     type Error = std::io::Error;
//!     fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
//!         let Some(end) = buf.iter().take(self.max_frame).position(|&b| b == 0) else {
//!             return Ok(None);
//!         };
//!         let frame = buf.split_to(end + 1);
//!         Ok(Some(frame))
//!     }
//! }
//!
//! fn needs_handover<T: mitosis::Handover>() {}
//! needs_handover::<tokio_util::codec::FramedRead<tokio::net::TcpStream, Frames>>();
//! ```
//!
//! A codec whose state cannot be derived (one holding a closure, say) gets
//! a hand-written `Handover` impl that rebuilds it in the new process, or
//! `#[handover(skip)]` fields rebuilt with `Default`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;

use bytes::BytesMut;
use futures_core::Stream;
use tokio::io::AsyncRead;
use tokio_util::codec::{BytesCodec, Framed, FramedRead, FramedWrite, LinesCodec};

use super::StandIn;
use super::io::feed;
use super::reactor;
use crate::error::Error;
use crate::handover::{Decoder, Encoder, Handover, Shapes};
use crate::schema::{Schema, Shape};

/// A framed stream hands over its read buffer (bytes read but not yet
/// decoded into frames), its write buffer (frames encoded but not yet
/// written), its backpressure boundary, its codec and its stream. The
/// new `Framed` yields the frames already in its read buffer before it
/// reads again, and writes the unwritten bytes when it next flushes,
/// before anything sent after the handover. Decoding touches neither the
/// stream nor a reactor beyond registering the stream.
///
/// ```
/// use tokio::net::TcpStream;
/// use tokio_util::codec::{Framed, LinesCodec};
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<Framed<TcpStream, LinesCodec>>();
/// ```
impl<T: Handover, C: Handover> Handover for Framed<T, C> {
    const SCHEMA: Schema = Schema::nested("Framed", 0, [T::SCHEMA, C::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Struct {
            name: "Framed".into(),
            fields: vec![
                ("read_buffer".into(), Shape::Bytes),
                ("write_buffer".into(), Shape::Bytes),
                ("backpressure_boundary".into(), Shape::U64),
                ("codec".into(), C::shape(shapes)?),
                ("io".into(), T::shape(shapes)?),
            ],
        })
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.bytes(self.read_buffer())?;
        out.bytes(self.write_buffer())?;
        out.value(&(self.backpressure_boundary() as u64))?;
        self.codec().encode(out)?;
        self.get_ref().encode(out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let read = input.bytes()?;
        let write = input.bytes()?;
        let boundary = boundary(input)?;
        let codec = C::decode(input)?;
        let io = T::decode(input)?;
        // `from_parts`, unlike `read_buffer_mut`, marks a non-empty read
        // buffer as holding frames, so they come out before the next read.
        let mut parts = Framed::new(io, codec).into_parts();
        parts.read_buf = BytesMut::from(&read[..]);
        parts.write_buf = BytesMut::from(&write[..]);
        let mut framed = Framed::from_parts(parts);
        framed.set_backpressure_boundary(boundary);
        Ok(framed)
    }
}

/// A backpressure boundary, as [`Framed`] and [`FramedWrite`] hand it over.
fn boundary(input: &mut Decoder<'_>) -> Result<usize, Error> {
    let boundary: u64 = input.value()?;
    usize::try_from(boundary).map_err(|_| Error::Decode {
        detail: format!("a framed stream's backpressure boundary of {boundary} bytes"),
    })
}

/// A framed reader hands over its read buffer (bytes read but not yet
/// decoded into frames), its codec and its stream; the new `FramedRead`
/// yields the frames already in its buffer before it reads again.
///
/// tokio-util offers no way to build a `FramedRead` that knows its buffer
/// holds frames, so decoding one with unread bytes puts its last byte in a
/// local socket and lets the new `FramedRead` read it, once, on mitosis's
/// background reactor, before the real stream is swapped in. Hence `T` is
/// tokio's `TcpStream` or `UnixStream` (or a `BufWriter` over one).
///
/// ```
/// use tokio::net::UnixStream;
/// use tokio_util::codec::{BytesCodec, FramedRead};
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<FramedRead<UnixStream, BytesCodec>>();
/// ```
impl<T, C> Handover for FramedRead<T, C>
where
    T: StandIn + AsyncRead,
    C: Handover,
{
    const SCHEMA: Schema = Schema::nested("FramedRead", 0, [T::SCHEMA, C::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Struct {
            name: "FramedRead".into(),
            fields: vec![
                ("read_buffer".into(), Shape::Bytes),
                ("codec".into(), C::shape(shapes)?),
                ("io".into(), T::shape(shapes)?),
            ],
        })
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.bytes(self.read_buffer())?;
        self.decoder().encode(out)?;
        self.get_ref().encode(out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let mut unread = input.bytes()?;
        let codec = C::decode(input)?;
        let io = T::decode(input)?;
        let Some(last) = unread.pop() else {
            return Ok(FramedRead::new(io, codec));
        };
        let expected = unread.len() + 1;
        let source = feed("FramedRead", &[last])?;
        let background = reactor::background()?;
        let stand_in = reactor::register_with(&background, "stand-in socket", || {
            T::stand_in(source.into())
        })?;
        let filled = reactor::run_in_background("FramedRead", async move {
            // With every byte but the last in its buffer, the reader reads
            // that one byte, marks its buffer readable and asks `Stall`,
            // which yields a frame without taking a byte.
            let mut framed = FramedRead::with_capacity(stand_in, Stall, expected);
            framed.read_buffer_mut().extend_from_slice(&unread);
            match poll_fn(|cx| Pin::new(&mut framed).poll_next(cx)).await {
                Some(Ok(())) if framed.read_buffer().len() == expected => Ok(framed),
                Some(Ok(())) => Err(io::Error::other(format!(
                    "{} of {expected} bytes came back",
                    framed.read_buffer().len()
                ))),
                Some(Err(error)) => Err(error),
                None => Err(io::Error::other("the stand-in socket ended early")),
            }
        })?;
        let mut framed = filled.map_decoder(|Stall| codec);
        // The buffer keeps the bytes; the stand-in socket is dropped.
        *framed.get_mut() = io;
        Ok(framed)
    }
}

/// A decoder that yields an empty frame for any buffer, taking nothing
/// from it: what leaves a `FramedRead` marked as holding frames.
struct Stall;

impl tokio_util::codec::Decoder for Stall {
    type Item = ();
    type Error = io::Error;

    fn decode(&mut self, _: &mut BytesMut) -> io::Result<Option<()>> {
        Ok(Some(()))
    }
}

/// A framed writer hands over its write buffer (frames encoded but not yet
/// written), its backpressure boundary, its codec and its stream; the new
/// `FramedWrite` writes the unwritten bytes when it next flushes, before
/// anything sent after the handover. Decoding writes nothing.
///
/// ```
/// use tokio::net::TcpStream;
/// use tokio_util::codec::{FramedWrite, LinesCodec};
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<FramedWrite<TcpStream, LinesCodec>>();
/// ```
impl<T: Handover, C: Handover> Handover for FramedWrite<T, C> {
    const SCHEMA: Schema = Schema::nested("FramedWrite", 0, [T::SCHEMA, C::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Struct {
            name: "FramedWrite".into(),
            fields: vec![
                ("write_buffer".into(), Shape::Bytes),
                ("backpressure_boundary".into(), Shape::U64),
                ("codec".into(), C::shape(shapes)?),
                ("io".into(), T::shape(shapes)?),
            ],
        })
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.bytes(self.write_buffer())?;
        out.value(&(self.backpressure_boundary() as u64))?;
        self.encoder().encode(out)?;
        self.get_ref().encode(out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let unwritten = input.bytes()?;
        let boundary = boundary(input)?;
        let codec = C::decode(input)?;
        let io = T::decode(input)?;
        let mut framed = FramedWrite::new(io, codec);
        framed.write_buffer_mut().extend_from_slice(&unwritten);
        framed.set_backpressure_boundary(boundary);
        Ok(framed)
    }
}

/// `BytesCodec` has no settings and no state: nothing crosses.
///
/// ```
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<tokio_util::codec::BytesCodec>();
/// ```
impl Handover for BytesCodec {
    const SCHEMA: Schema = Schema::new("BytesCodec", 0);

    fn shape(_: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Struct {
            name: "BytesCodec".into(),
            fields: Vec::new(),
        })
    }

    fn encode<'a>(&'a self, _: &mut Encoder<'a>) -> Result<(), Error> {
        Ok(())
    }

    fn decode(_: &mut Decoder<'_>) -> Result<Self, Error> {
        Ok(BytesCodec::new())
    }
}

/// `LinesCodec` hands over its maximum line length.
///
/// Its two other fields are private and cannot be read, so they start
/// afresh. One is where to resume the search for a newline; starting at 0
/// means the new codec scans the buffered partial line once more, which
/// finds the same newline. The other says that it is discarding the rest
/// of a line over the maximum length, which it does only after it has
/// returned `MaxLineLengthExceeded`; a program that keeps reading after
/// that error and upgrades before the end of the over-long line sees that
/// line's tail as a line in the new process.
///
/// ```
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<tokio_util::codec::LinesCodec>();
/// ```
impl Handover for LinesCodec {
    const SCHEMA: Schema = Schema::new("LinesCodec", 0);

    fn shape(_: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Struct {
            name: "LinesCodec".into(),
            fields: vec![("max_length".into(), Shape::U64)],
        })
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        out.value(&(self.max_length() as u64))
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let max_length: u64 = input.value()?;
        // `usize::MAX`, no limit, is `u64::MAX` on the 64-bit targets
        // mitosis runs on.
        let max_length = usize::try_from(max_length).unwrap_or(usize::MAX);
        Ok(LinesCodec::new_with_max_length(max_length))
    }
}
