//! `Handover` for tokio's `BufReader` and `BufWriter`: the bytes in their
//! buffers cross with them, as they do for std's.
//!
//! They encode exactly as std's `BufReader` and `BufWriter` do (capacity,
//! buffered bytes, inner value), so they have the same fingerprint, and a
//! state may move between std's and tokio's from one build to the next.
//!
//! tokio's buffered types do not tell their capacity, so the one handed
//! over is tokio's default (8 KiB), or the number of buffered bytes when
//! that is more; the new process's buffer has that capacity. A capacity
//! chosen with `with_capacity` is therefore not kept: set it again after
//! decoding if it matters.
//!
//! tokio's `BufStream` is not `Handover`: it shows neither its buffers nor
//! its capacities through `&self`, so its bytes could not cross. It is a
//! `BufReader<BufWriter<S>>` inside; use that type in the state (it reads
//! and writes the same way, and is `Handover`), and
//! `tokio::io::BufStream::from` where a `BufStream` is wanted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, BufWriter};

use super::StandIn;
use super::reactor;
use crate::error::{Error, Step};
use crate::handover::buffered::{
    buffered_shape, check_unread, decode_buffered, encode_buffered, send_all,
};
use crate::handover::{Decoder, Encoder, Handover, Shapes};
use crate::schema::{Schema, Shape};

/// tokio's default buffer capacity (`tokio::io::util::DEFAULT_BUF_SIZE`,
/// private), handed over as the capacity of a buffered reader or writer,
/// whose real capacity tokio does not tell.
const DEFAULT_CAPACITY: usize = 8 * 1024;

/// The capacity handed over for a tokio buffer holding `buffered` bytes.
fn capacity_for(buffered: usize) -> usize {
    DEFAULT_CAPACITY.max(buffered)
}

/// A tokio buffered reader hands over the bytes it has read but not yet
/// returned, so that a half-read line completes in the new process.
///
/// The limit is std's: at most 64 KiB of unread bytes, checked by the old
/// process before it sends anything ([`Error::UnreadBytes`], in step 6: it
/// keeps the state and the bytes). Decoding puts the bytes back by letting
/// a fresh `BufReader` read them from a local socket pair, registered with
/// mitosis's background reactor (this works inside a current-thread
/// runtime, whose only thread is the one decoding), then swaps the real
/// stream in. The new reader's capacity is tokio's default, or the number
/// of unread bytes when that is more: tokio's buffered types do not tell
/// their capacity, so one set with `with_capacity` is not kept.
///
/// `R` is tokio's `TcpStream` or `UnixStream`, or tokio's `BufWriter` over
/// one of them: `BufReader<BufWriter<S>>` stands for tokio's `BufStream`,
/// which cannot be handed over.
///
/// ```
/// use tokio::io::{BufReader, BufWriter};
/// use tokio::net::TcpStream;
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<BufReader<TcpStream>>();
/// needs_handover::<BufReader<BufWriter<TcpStream>>>();
/// ```
impl<R> Handover for BufReader<R>
where
    R: StandIn + AsyncRead,
{
    const SCHEMA: Schema = Schema::nested("BufReader", 0, [R::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        buffered_shape("BufReader", R::shape(shapes)?)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        check_unread(self.buffer().len(), Step::State)?;
        let capacity = capacity_for(self.buffer().len());
        encode_buffered(capacity, self.buffer(), self.get_ref(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let (capacity, unread, inner) = decode_buffered::<R>(input, "BufReader")?;
        // tokio panics on a capacity of 0, which std's BufReader allows.
        let capacity = capacity.max(1);
        if unread.is_empty() {
            return Ok(BufReader::with_capacity(capacity, inner));
        }
        // An old process of this build has checked already.
        check_unread(unread.len(), Step::Commit)?;
        let source = feed("BufReader", &unread)?;
        let background = reactor::background()?;
        let stand_in = reactor::register_with(&background, "stand-in socket", || {
            R::stand_in(source.into())
        })?;
        let expected = unread.len();
        let mut reader = reactor::run_in_background("BufReader", async move {
            let mut reader = BufReader::with_capacity(capacity, stand_in);
            let buffered = reader.fill_buf().await?.len();
            if buffered != expected {
                return Err(io::Error::other(format!(
                    "{buffered} of {expected} bytes came back"
                )));
            }
            Ok(reader)
        })?;
        // The buffer keeps the bytes; the stand-in socket is dropped.
        *reader.get_mut() = inner;
        Ok(reader)
    }
}

/// A Unix stream socket from which `bytes` can be read, then end of file.
/// `what` names the value for errors.
pub(super) fn feed(what: &str, bytes: &[u8]) -> Result<std::os::unix::net::UnixStream, Error> {
    let put_back = |error: io::Error| Error::Decode {
        detail: format!("could not put a {what}'s unread bytes back: {error}"),
    };
    let (feed, source) = std::os::unix::net::UnixStream::pair().map_err(put_back)?;
    send_all(&feed, bytes).map_err(put_back)?;
    Ok(source)
}

/// A tokio buffered writer hands over the bytes it has not written yet; the
/// new writer holds them, unwritten, and writes them when it next flushes,
/// so they reach the fd once, before anything written after the handover.
///
/// Decoding writes nothing to the fd, so that a handover that rolls back
/// after it leaves the bytes to the old process alone; it needs no reactor
/// either. As for std's, a writer whose buffer was exactly full comes back
/// with one byte more room, since tokio's `BufWriter` sends a write as
/// large as its capacity straight to the fd.
///
/// ```
/// use tokio::io::BufWriter;
/// use tokio::net::UnixStream;
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<BufWriter<UnixStream>>();
/// ```
impl<W> Handover for BufWriter<W>
where
    W: Handover + AsyncWrite + Unpin,
{
    const SCHEMA: Schema = Schema::nested("BufWriter", 0, [W::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        buffered_shape("BufWriter", W::shape(shapes)?)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        let capacity = capacity_for(self.buffer().len());
        encode_buffered(capacity, self.buffer(), self.get_ref(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let (capacity, unwritten, inner) = decode_buffered::<W>(input, "BufWriter")?;
        if unwritten.is_empty() {
            return Ok(BufWriter::with_capacity(capacity, inner));
        }
        // The new process must not touch the fd before it has taken over
        // (PROTOCOL.md, step 9). tokio's `poll_write` into an empty
        // BufWriter only copies into the buffer when the bytes fit and are
        // fewer than its capacity; otherwise it flushes or writes through.
        let room = capacity.max(unwritten.len() + 1);
        let mut writer = BufWriter::with_capacity(room, inner);
        let mut context = Context::from_waker(Waker::noop());
        let written = Pin::new(&mut writer).poll_write(&mut context, &unwritten);
        if !matches!(written, Poll::Ready(Ok(n)) if n == unwritten.len())
            || writer.buffer() != &unwritten[..]
        {
            return Err(Error::Decode {
                detail: format!(
                    "could not restore a tokio BufWriter's {} unwritten bytes: {written:?}",
                    unwritten.len()
                ),
            });
        }
        Ok(writer)
    }
}
