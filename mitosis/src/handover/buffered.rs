//! `Handover` for `BufReader` and `BufWriter`: the bytes in their buffers
//! cross with them.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::Shapes;
use super::{Decoder, Encoder, Handover};
use crate::error::{Error, Step};
use crate::schema::{Schema, Shape};

/// The most unread bytes [`BufReader`]'s `decode` puts back: they pass
/// through a socket buffer, which holds at least this much. The old
/// process refuses to hand over a reader holding more, before sending it.
pub(crate) const MAX_UNREAD_BYTES: usize = 64 * 1024;

/// A buffered reader hands over the bytes it has read but not yet returned,
/// so that a half-read line completes in the new process.
///
/// `R` must be an fd type that reads with `read` or `recv` (any socket or
/// file type). std's `BufReader` cannot be given bytes, so `decode` lets it
/// read them from a fresh Unix socket and then swaps the real reader in;
/// that works for up to 64 KiB of unread bytes. For a larger remainder,
/// the old process refuses to hand the state over
/// ([`Error::UnreadBytes`], in step 6): it keeps the state and the bytes,
/// and nothing is lost.
///
/// ```
/// # use std::io::BufReader;
/// # use std::net::TcpStream;
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<BufReader<TcpStream>>();
/// ```
impl<R> Handover for BufReader<R>
where
    R: Handover + Read + From<OwnedFd>,
{
    const SCHEMA: Schema = Schema::nested("BufReader", 0, [R::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        buffered_shape("BufReader", R::shape(shapes)?)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        check_unread(self.buffer().len(), Step::State)?;
        encode_buffered(self.capacity(), self.buffer(), self.get_ref(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let (capacity, unread, inner) = decode_buffered::<R>(input, "BufReader")?;
        if unread.is_empty() {
            return Ok(BufReader::with_capacity(capacity, inner));
        }
        // An old process of this build has checked already.
        check_unread(unread.len(), Step::Commit)?;
        let put_back = |error: io::Error| Error::Decode {
            detail: format!("could not put a BufReader's unread bytes back: {error}"),
        };
        let (feed, source) = UnixStream::pair().map_err(put_back)?;
        send_all(&feed, &unread).map_err(put_back)?;
        drop(feed);
        let mut reader = BufReader::with_capacity(capacity, R::from(OwnedFd::from(source)));
        let buffered = reader.fill_buf().map_err(put_back)?.len();
        if buffered != unread.len() {
            return Err(put_back(io::Error::other(format!(
                "{buffered} of {} bytes came back",
                unread.len()
            ))));
        }
        // The buffer keeps the bytes; the temporary socket is dropped.
        *reader.get_mut() = inner;
        Ok(reader)
    }
}

/// Refuses more unread bytes than [`BufReader`]'s `decode` can put back.
pub(crate) fn check_unread(unread: usize, step: Step) -> Result<(), Error> {
    if unread > MAX_UNREAD_BYTES {
        return Err(Error::UnreadBytes {
            step,
            unread: unread as u64,
            max: MAX_UNREAD_BYTES as u64,
        });
    }
    Ok(())
}

/// Writes all of `bytes` to the socket `fd` with `MSG_NOSIGNAL`, so that a
/// hung-up peer is an `EPIPE` error, never SIGPIPE.
pub(crate) fn send_all(fd: impl AsFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(fd.as_fd(), bytes, rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What a buffered reader or writer hands over: its capacity, the bytes in
/// its buffer, and what it wraps.
pub(crate) fn encode_buffered<'a, T: Handover>(
    capacity: usize,
    buffered: &[u8],
    inner: &'a T,
    out: &mut Encoder<'a>,
) -> Result<(), Error> {
    out.value(&capacity)?;
    out.bytes(buffered)?;
    inner.encode(out)
}

/// What [`encode_buffered`] writes: the capacity, the buffered bytes, and
/// the inner value.
pub(crate) fn buffered_shape(name: &str, inner: Shape) -> Result<Shape, Error> {
    Ok(Shape::Struct {
        name: name.into(),
        fields: vec![
            ("capacity".into(), Shape::U64),
            ("buffer".into(), Shape::Bytes),
            ("inner".into(), inner),
        ],
    })
}

/// The largest capacity of one decoded buffered reader or writer.
const MAX_BUFFER_CAPACITY: usize = 1 << 30;

/// What the capacities of all the buffered readers and writers in one state
/// may add up to: 4 GiB, the default limit on a whole state (PROTOCOL.md,
/// "Limits"). Each capacity is allocated in full when its buffer is built,
/// so without this a few bytes per buffer could claim 1 GiB each, past what
/// the address space holds.
pub(super) const MAX_BUFFER_CAPACITIES: u64 = crate::env::MAX_STATE_BYTES;

/// Reads what [`encode_buffered`] wrote, refusing a capacity that cannot
/// hold the buffered bytes, is beyond any sensible buffer (1 GiB), or would
/// bring the state's buffers together past `MAX_BUFFER_CAPACITIES`.
pub(crate) fn decode_buffered<T: Handover>(
    input: &mut Decoder<'_>,
    what: &str,
) -> Result<(usize, Vec<u8>, T), Error> {
    let capacity: usize = input.value()?;
    let buffered = input.bytes()?;
    let inner = T::decode(input)?;
    if capacity < buffered.len() || capacity > MAX_BUFFER_CAPACITY {
        return Err(Error::Decode {
            detail: format!(
                "{what} of capacity {capacity} cannot hold its {} buffered bytes",
                buffered.len()
            ),
        });
    }
    let total = input.buffer_capacities + capacity as u64;
    if total > input.buffer_capacity_limit {
        return Err(Error::Decode {
            detail: format!(
                "{what} of capacity {capacity} would bring the state's buffers to {total} bytes \
                 in all, past the limit of {}",
                input.buffer_capacity_limit
            ),
        });
    }
    input.buffer_capacities = total;
    Ok((capacity, buffered, inner))
}

/// A buffered writer hands over the bytes it has not written yet; the new
/// writer holds them, unwritten, and writes them when it next flushes, so
/// they reach the fd once, before anything written after the handover.
///
/// Decoding writes nothing to the fd, so that a handover that rolls back
/// after it leaves the bytes to the old process alone. A writer whose
/// buffer was exactly full comes back with a capacity one byte larger:
/// std's `BufWriter` cannot be given bytes, and it buffers a write only
/// when the write is smaller than its capacity.
///
/// ```
/// # use std::io::BufWriter;
/// # use std::net::TcpStream;
/// fn needs_handover<T: mitosis::Handover>() {}
/// needs_handover::<BufWriter<TcpStream>>();
/// ```
impl<W> Handover for BufWriter<W>
where
    W: Handover + Write,
{
    const SCHEMA: Schema = Schema::nested("BufWriter", 0, [W::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        buffered_shape("BufWriter", W::shape(shapes)?)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        encode_buffered(self.capacity(), self.buffer(), self.get_ref(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let (capacity, unwritten, inner) = decode_buffered::<W>(input, "BufWriter")?;
        if unwritten.is_empty() {
            return Ok(BufWriter::with_capacity(capacity, inner));
        }
        // The new process must not touch the fd before it has taken over
        // (PROTOCOL.md, step 9): if the handover rolls back, the old process
        // writes these bytes itself. `write_all` into an empty BufWriter
        // buffers them only if they are fewer than its capacity; as many
        // would go straight to the fd. So a buffer that was exactly full
        // gets one byte more room.
        let room = capacity.max(unwritten.len() + 1);
        let mut writer = BufWriter::with_capacity(room, inner);
        writer
            .write_all(&unwritten)
            .map_err(|error| Error::Decode {
                detail: format!("could not restore a BufWriter's unwritten bytes: {error}"),
            })?;
        debug_assert_eq!(writer.buffer(), &unwritten[..], "buffered, not written");
        Ok(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::tests::round_trip;
    use crate::handover::{Encoder, InMemory};
    use std::fs::File;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::OwnedFd;

    #[test]
    fn buffered_readers_and_writers_keep_their_bytes() {
        use std::io::{BufRead, Read};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        far.write_all(b"PRIVMSG #a :one\r\nPRIVMSG #a :tw").unwrap();
        let mut reader = BufReader::new(near.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "PRIVMSG #a :one\r\n");
        assert_eq!(reader.buffer(), b"PRIVMSG #a :tw");

        let mut writer = BufWriter::with_capacity(100, near);
        writer.write_all(b"PONG :x\r\n").unwrap();
        let mut back = round_trip(&(reader, writer)).unwrap();
        // The half line completes with what arrives later.
        far.write_all(b"o\r\n").unwrap();
        line.clear();
        back.0.read_line(&mut line).unwrap();
        assert_eq!(line, "PRIVMSG #a :two\r\n");
        assert_eq!(back.0.capacity(), 8192);
        // The unwritten bytes are written by the new writer, once.
        assert_eq!(
            (back.1.capacity(), back.1.buffer()),
            (100, &b"PONG :x\r\n"[..])
        );
        back.1.flush().unwrap();
        let mut pong = [0; 9];
        far.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"PONG :x\r\n");
    }
    #[test]
    fn decoding_a_full_bufwriter_writes_nothing() {
        // Found by review: at exactly its capacity, the unwritten bytes went
        // straight to the socket while decoding, before COMMIT; after a
        // rollback the old process wrote them again.
        use std::io::{ErrorKind, Read};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        for size in [2, 16, 4096] {
            let unwritten: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            let mut writer = BufWriter::with_capacity(size, near.try_clone().unwrap());
            // One byte short, then the last: buffered, not written.
            writer.write_all(&unwritten[..size - 1]).unwrap();
            writer.write_all(&unwritten[size - 1..]).unwrap();
            assert_eq!(writer.buffer(), &unwritten[..], "a full buffer to start");
            let mut back = round_trip(&writer).unwrap();
            // Nothing reached the socket.
            far.set_nonblocking(true).unwrap();
            let mut byte = [0; 1];
            let read = far.read(&mut byte);
            assert!(
                matches!(&read, Err(e) if e.kind() == ErrorKind::WouldBlock),
                "{size} bytes: decoding wrote to the socket: {read:?}"
            );
            far.set_nonblocking(false).unwrap();
            assert_eq!(back.buffer(), writer.buffer(), "{size} bytes");
            assert_eq!(back.capacity(), size + 1, "one byte more room");
            // They are written when the new writer flushes, once.
            back.flush().unwrap();
            let mut got = vec![0; writer.buffer().len()];
            far.read_exact(&mut got).unwrap();
            assert_eq!(got, writer.buffer(), "{size} bytes");
            // The old writer's bytes are not its business any more.
            let _ = writer.into_parts();
        }
    }
    #[test]
    fn the_old_process_refuses_a_bufreader_it_cannot_hand_over() {
        // Found by review: only the new process noticed, after the whole
        // state had crossed, and its error advised a schema bump.
        let (mut feed, source) = UnixStream::pair().unwrap();
        let mut reader = BufReader::with_capacity(2 * MAX_UNREAD_BYTES, source);
        let unread = vec![7; MAX_UNREAD_BYTES + 1];
        feed.write_all(&unread).unwrap();
        assert_eq!(reader.fill_buf().unwrap(), &unread[..]);
        let mut sink = InMemory::default();
        let err = Encoder::encode(&mut sink, &(String::from("before"), reader))
            .err()
            .unwrap();
        assert_eq!(err.step(), Some(Step::State));
        assert_eq!(
            err.to_string(),
            "a BufReader in the state holds 65537 bytes it has read but not yet returned, more \
             than the 65536 a handover can put back, in step 6 (state transfer); the old \
             process keeps its state. Consume those bytes before splitting, or give the \
             BufReader a capacity of at most 65536 bytes"
        );
        assert!(sink.stream.is_empty() && sink.out_of_line.is_empty());
        // One byte fewer crosses.
        let (mut feed, source) = UnixStream::pair().unwrap();
        let mut reader = BufReader::with_capacity(2 * MAX_UNREAD_BYTES, source);
        feed.write_all(&unread[1..]).unwrap();
        reader.fill_buf().unwrap();
        let back = round_trip(&reader).unwrap();
        assert_eq!(back.buffer(), &unread[1..]);
    }
    #[test]
    fn buffer_capacities_are_bounded_in_all() {
        // Found by fuzzing (fuzz/, `frames`): a few bytes made one BufReader
        // reserve 630 MB. Each capacity is allocated up front, up to 1 GiB
        // each, and nothing bounded them in all. Three writers of 1000
        // bytes, against a limit of 2500.
        let writers: Vec<BufWriter<File>> = (0..3)
            .map(|_| BufWriter::with_capacity(1000, File::open("/dev/null").unwrap()))
            .collect();
        let mut sink = InMemory::default();
        let sent: Vec<OwnedFd> = Encoder::encode(&mut sink, &writers)
            .unwrap()
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        let limited = |limit| {
            let fds = sent.iter().map(|fd| fd.try_clone().unwrap()).collect();
            let mut decoder = Decoder::new(&sink.stream, Vec::new(), fds);
            decoder.buffer_capacity_limit = limit;
            decoder.decode::<Vec<BufWriter<File>>>()
        };
        let back = limited(3000).unwrap();
        assert_eq!(back.iter().map(BufWriter::capacity).sum::<usize>(), 3000);
        let err = limited(2500).unwrap_err();
        assert!(
            err.to_string().contains(
                "BufWriter of capacity 1000 would bring the state's buffers to 3000 bytes in all, \
                 past the limit of 2500"
            ),
            "{err}"
        );
        assert_eq!(MAX_BUFFER_CAPACITIES, 4 << 30);
    }
}
