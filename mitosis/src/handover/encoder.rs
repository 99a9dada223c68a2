//! [`Encoder`]: where a state is written, streaming into a sink.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::Serialize;

use super::Handover;
use crate::error::Error;

/// Where [`Handover::encode`] writes a value.
///
/// It streams: plain data passes through a 64 KiB buffer to the connection,
/// and large byte buffers go straight to the socket, so the old process never
/// holds a second full copy of its state.
///
/// ```
/// use mitosis::{Encoder, Error, Handover, Schema, Decoder};
/// struct Counter(u64);
/// impl Handover for Counter {
///     const SCHEMA: Schema = Schema::new("Counter", 1);
///     fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
///         out.value(&self.0)
///     }
///     fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
///         input.value().map(Counter)
///     }
/// }
/// ```
pub struct Encoder<'a> {
    pub(crate) serializer: postcard::Serializer<StreamFlavor<'a>>,
    pub(crate) fds: Vec<SideFd<'a>>,
    /// The pipe that takes the next [`secret`](Encoder::secret).
    secrets: Option<SecretsPipe>,
    /// Only the fds are wanted: plain data and bytes are skipped, unread.
    fds_only: bool,
}

/// The bytes an [`Encoder`] buffers before writing them out.
pub(crate) const ENCODE_BUFFER: usize = 64 * 1024;

/// Byte buffers of this size or more travel out of line: in frames of their
/// own, or from 1 MiB on through a pipe, read by the new process straight
/// into their final `Vec` (PROTOCOL.md, step 6).
pub(crate) const OUT_OF_LINE_BYTES: usize = 64 * 1024;

/// Where an encoded state goes: the stream of plain bytes, and the byte
/// buffers that travel out of line.
pub(crate) trait StateSink {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error>;
    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error>;
}

/// A sink in memory, for handovers without the processes.
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Default)]
pub(crate) struct InMemory {
    pub(crate) stream: Vec<u8>,
    pub(crate) out_of_line: Vec<Vec<u8>>,
}

#[cfg(any(test, feature = "test-hooks"))]
impl StateSink for InMemory {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.extend_from_slice(bytes);
        Ok(())
    }

    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out_of_line.push(bytes.to_vec());
        Ok(())
    }
}

/// A sink for encoders that write nothing.
struct Discard;

impl StateSink for Discard {
    fn data(&mut self, _: &[u8]) -> Result<(), Error> {
        Ok(())
    }

    fn out_of_line(&mut self, _: &[u8]) -> Result<(), Error> {
        Ok(())
    }
}

/// A postcard flavor that streams into a sink through a bounded buffer.
pub(crate) struct StreamFlavor<'a> {
    buffer: Vec<u8>,
    sink: &'a mut dyn StateSink,
    written: u64,
    out_of_line: u64,
    /// postcard's flavor errors carry no payload, so the error that stopped
    /// the stream waits here until the encoder reports it.
    failure: Option<Error>,
}

impl StreamFlavor<'_> {
    pub(crate) fn flush_buffer(&mut self) -> postcard::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self.sink.data(&self.buffer);
        self.buffer.clear();
        self.record(result)
    }

    fn record(&mut self, result: Result<(), Error>) -> postcard::Result<()> {
        result.map_err(|error| {
            self.failure = Some(error);
            postcard::Error::SerializeBufferFull
        })
    }
}

impl postcard::ser_flavors::Flavor for StreamFlavor<'_> {
    type Output = u64;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.buffer.len() == ENCODE_BUFFER {
            self.flush_buffer()?;
        }
        self.buffer.push(byte);
        self.written += 1;
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.written += data.len() as u64;
        if data.len() <= ENCODE_BUFFER - self.buffer.len() {
            self.buffer.extend_from_slice(data);
            return Ok(());
        }
        self.flush_buffer()?;
        if data.len() < ENCODE_BUFFER {
            self.buffer.extend_from_slice(data);
            Ok(())
        } else {
            let result = self.sink.data(data);
            self.record(result)
        }
    }

    fn finalize(mut self) -> postcard::Result<u64> {
        self.flush_buffer()?;
        Ok(self.written)
    }
}

/// What an encoding produced besides the bytes it streamed.
pub(crate) struct Encoded<'a> {
    /// Bytes in the stream.
    pub(crate) total_bytes: u64,
    /// Bytes sent out of line.
    pub(crate) out_of_line_bytes: u64,
    pub(crate) fds: Vec<SideFd<'a>>,
}

/// An entry of the side table: an fd of the state, which the old process
/// keeps until the new one has taken over, or one the encoding made for the
/// crossing alone (the pipe of a [`secret`](Encoder::secret)).
pub(crate) enum SideFd<'a> {
    State(BorrowedFd<'a>),
    Made(OwnedFd),
}

impl SideFd<'_> {
    /// Whether this is one of the state's own fds, which the old process
    /// detaches once they have crossed.
    pub(crate) fn is_state(&self) -> bool {
        matches!(self, SideFd::State(_))
    }

    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn try_clone_to_owned(&self) -> std::io::Result<OwnedFd> {
        self.as_fd().try_clone_to_owned()
    }
}

impl AsFd for SideFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            SideFd::State(fd) => fd.as_fd(),
            SideFd::Made(fd) => fd.as_fd(),
        }
    }
}

/// The largest [`secret`](Encoder::secret): what a pipe takes in one write
/// that nothing else can interleave with (`PIPE_BUF`).
pub(crate) const MAX_SECRET_BYTES: usize = 4096;

/// The size asked for a pipe of secrets: `fs.pipe-max-size`'s default.
const SECRETS_PIPE_BYTES: usize = 1 << 20;

/// A pipe that secrets are written into, and its place in the side table.
struct SecretsPipe {
    write_end: OwnedFd,
    index: u32,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(sink: &'a mut dyn StateSink) -> Encoder<'a> {
        Encoder::build(sink, Vec::with_capacity(ENCODE_BUFFER), false)
    }

    fn build(sink: &'a mut dyn StateSink, buffer: Vec<u8>, fds_only: bool) -> Encoder<'a> {
        Encoder {
            serializer: postcard::Serializer {
                output: StreamFlavor {
                    buffer,
                    sink,
                    written: 0,
                    out_of_line: 0,
                    failure: None,
                },
            },
            fds: Vec::new(),
            secrets: None,
            fds_only,
        }
    }

    /// The fds in `value`, in the order `encode` puts them in the side
    /// table, found without encoding anything else: a walk that costs one
    /// call per `Handover` value, however much plain data there is.
    pub(crate) fn fds_of<S: Handover>(value: &'a S) -> Result<Vec<BorrowedFd<'a>>, Error> {
        // A zero-sized sink: leaking it allocates nothing, and lends it for
        // as long as the fds are borrowed.
        let nowhere: &'a mut Discard = Box::leak(Box::new(Discard));
        let mut encoder = Encoder::build(nowhere, Vec::new(), true);
        value.encode(&mut encoder)?;
        Ok(encoder
            .fds
            .into_iter()
            .filter_map(|fd| match fd {
                SideFd::State(fd) => Some(fd),
                SideFd::Made(_) => None,
            })
            .collect())
    }

    /// Encodes `value` into `sink` and flushes it.
    pub(crate) fn encode<S: Handover>(
        sink: &'a mut dyn StateSink,
        value: &'a S,
    ) -> Result<Encoded<'a>, Error> {
        let mut encoder = Encoder::new(sink);
        value.encode(&mut encoder)?;
        let fds = encoder.fds;
        let mut output = encoder.serializer.output;
        if output.flush_buffer().is_err() {
            return Err(stream_failure(output.failure));
        }
        Ok(Encoded {
            total_bytes: output.written,
            out_of_line_bytes: output.out_of_line,
            fds,
        })
    }

    /// The error that stopped the encoding of a `what`: the sink's, if the
    /// stream stopped, or else postcard's.
    fn fail(&mut self, error: postcard::Error, what: &str) -> Error {
        if let Some(failure) = self.serializer.output.failure.take() {
            return failure;
        }
        let detail = match error {
            // postcard keeps no message from a custom error.
            postcard::Error::SerdeSerCustom => {
                format!("the Serialize impl of {what} returned an error")
            }
            other => format!("{what}: {other}"),
        };
        Error::Encode { detail }
    }

    /// Writes a plain value with serde and postcard.
    ///
    /// ```
    /// # use mitosis::{Encoder, Error};
    /// fn write_nick<'a>(nick: &'a String, out: &mut Encoder<'a>) -> Result<(), Error> {
    ///     out.value(nick)
    /// }
    /// ```
    pub fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if self.fds_only {
            return Ok(());
        }
        value
            .serialize(&mut self.serializer)
            .map_err(|error| self.fail(error, std::any::type_name::<T>()))
    }

    /// Writes a byte buffer at copy speed. A short one goes into the stream
    /// as `serde_bytes` writes it (a length, then the bytes); one of 64 KiB
    /// or more leaves its length in the stream and travels out of line,
    /// straight from this memory into the new process's final `Vec`. From
    /// 1 MiB on it goes through a pipe that refers to this memory, so that
    /// it is copied only once, by the new process.
    ///
    /// ```
    /// # use mitosis::{Encoder, Error};
    /// fn write_blob<'a>(blob: &'a [u8], out: &mut Encoder<'a>) -> Result<(), Error> {
    ///     out.bytes(blob)
    /// }
    /// ```
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.fds_only {
            return Ok(());
        }
        if bytes.len() < OUT_OF_LINE_BYTES {
            return self.value(serde_bytes::Bytes::new(bytes));
        }
        self.value(&bytes.len())?;
        let output = &mut self.serializer.output;
        output.out_of_line += bytes.len() as u64;
        output.sink.out_of_line(bytes)
    }

    /// Puts `fd` into the side table and writes its index into the stream.
    /// The fd itself crosses in step 7; the old process keeps its own copy
    /// until the new process has committed.
    ///
    /// ```
    /// # use std::os::fd::AsFd;
    /// # use mitosis::{Encoder, Error};
    /// fn write_file<'a>(file: &'a std::fs::File, out: &mut Encoder<'a>) -> Result<(), Error> {
    ///     out.fd(file.as_fd())
    /// }
    /// ```
    pub fn fd(&mut self, fd: BorrowedFd<'a>) -> Result<(), Error> {
        self.side_table(SideFd::State(fd))
    }

    /// Writes bytes that must not travel with the rest of the state:
    /// keys, tokens, passwords. They go through a pipe, whose read end
    /// crosses over the fd channel (step 7), which only the new process can
    /// reach, never over the loopback TCP stream; PROTOCOL.md's threat
    /// model says why that matters. The stream carries only their length
    /// and the pipe's place in the side table. At most 4096 bytes each; the
    /// secrets of one state share as few pipes as hold them (1 MiB each,
    /// where the system allows), so that a state with thousands of them
    /// needs only a few fds more.
    ///
    /// ```
    /// # use mitosis::{Encoder, Error};
    /// fn write_token<'a>(token: &'a [u8], out: &mut Encoder<'a>) -> Result<(), Error> {
    ///     out.secret(token)
    /// }
    /// ```
    pub fn secret(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.fds_only {
            return Ok(());
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(Error::Encode {
                detail: format!(
                    "a secret of {} bytes is more than the {MAX_SECRET_BYTES} bytes one may be",
                    bytes.len()
                ),
            });
        }
        let failed = |error: rustix::io::Errno| Error::Encode {
            detail: format!("could not write a secret into a pipe: {error}"),
        };
        // Nobody reads the pipe before the state has crossed, so a full
        // one is left as it is and the secret goes into a new one.
        let written = match &self.secrets {
            Some(pipe) => match rustix::io::write(&pipe.write_end, bytes) {
                Err(rustix::io::Errno::AGAIN) => None,
                other => Some(other.map_err(failed)?),
            },
            None => None,
        };
        let written = match written {
            Some(written) => written,
            None => {
                let (read_end, write_end) = rustix::pipe::pipe_with(
                    rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
                )
                .map_err(failed)?;
                // The default 64 KiB holds a few hundred TLS sessions' keys.
                let _ = rustix::pipe::fcntl_setpipe_size(&write_end, SECRETS_PIPE_BYTES);
                let index = u32::try_from(self.fds.len()).map_err(|_| Error::Encode {
                    detail: "more than 4294967295 fds in one state".into(),
                })?;
                self.fds.push(SideFd::Made(read_end));
                let pipe = self.secrets.insert(SecretsPipe { write_end, index });
                // An empty pipe takes up to PIPE_BUF bytes whole.
                rustix::io::write(&pipe.write_end, bytes).map_err(failed)?
            }
        };
        if written != bytes.len() {
            return Err(Error::Encode {
                detail: format!("a pipe took {written} of a secret's {} bytes", bytes.len()),
            });
        }
        let index = self.secrets.as_ref().map_or(0, |pipe| pipe.index);
        self.value(&bytes.len())?;
        self.value(&index)
    }

    /// Whether this encoding writes the state, rather than only finding its
    /// fds (before the spawn), so that an impl logs what it hands over once.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn writes_state(&self) -> bool {
        !self.fds_only
    }

    /// Puts `fd` into the side table and writes its index into the stream.
    fn side_table(&mut self, fd: SideFd<'a>) -> Result<(), Error> {
        let index = u32::try_from(self.fds.len()).map_err(|_| Error::Encode {
            detail: "more than 4294967295 fds in one state".into(),
        })?;
        self.fds.push(fd);
        self.value(&index)
    }
}

fn stream_failure(failure: Option<Error>) -> Error {
    failure.unwrap_or_else(|| Error::Encode {
        detail: "the state stream stopped".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::Decoder;
    use crate::schema::Schema;

    #[test]
    fn a_failing_serialize_is_an_encoding_error() {
        // Found by review: it was reported as a decoding error, advising a
        // schema bump, from the old process.
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"\xff"));
        let mut sink = InMemory::default();
        let err = Encoder::encode(&mut sink, &(7u32, path)).err().unwrap();
        assert_eq!(err.step(), Some(crate::Step::State));
        let text = err.to_string();
        assert!(
            text.starts_with(
                "could not encode the state in the old process: the Serialize impl of \
                 std::path::PathBuf returned an error; the old process keeps its state"
            ),
            "{text}"
        );
        assert!(!text.contains("schema version"), "{text}");
    }
    #[test]
    fn large_bytes_travel_out_of_line_without_copies() {
        struct Blobs(Vec<u8>, Vec<u8>, Vec<u8>);
        impl Handover for Blobs {
            const SCHEMA: Schema = Schema::new("Blobs", 1);
            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.bytes(&self.0)?;
                out.bytes(&self.1)?;
                out.bytes(&self.2)
            }
            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                Ok(Blobs(input.bytes()?, input.bytes()?, input.bytes()?))
            }
        }
        /// Records every call it receives.
        #[derive(Default)]
        struct Calls(Vec<(&'static str, usize)>, InMemory);
        impl StateSink for Calls {
            fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
                self.0.push(("data", bytes.len()));
                self.1.data(bytes)
            }
            fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
                self.0.push(("out of line", bytes.len()));
                self.1.out_of_line(bytes)
            }
        }
        let big: Vec<u8> = (0..3 * OUT_OF_LINE_BYTES).map(|i| i as u8).collect();
        let blobs = Blobs(
            big.clone(),
            vec![1, 2, 3],
            big[..OUT_OF_LINE_BYTES].to_vec(),
        );
        let mut sink = Calls::default();
        Encoder::encode(&mut sink, &blobs).unwrap();
        // The two large buffers leave at once, whole, straight from the
        // value's memory; only their lengths and the small one are buffered.
        assert_eq!(
            sink.0,
            vec![
                ("out of line", 3 * OUT_OF_LINE_BYTES),
                ("out of line", OUT_OF_LINE_BYTES),
                // Two 3-byte lengths, and the small buffer inline.
                ("data", 3 + 4 + 3)
            ]
        );
        let Calls(_, memory) = sink;
        let back: Blobs = Decoder::new(&memory.stream, memory.out_of_line, Vec::new())
            .decode()
            .unwrap();
        assert!(back.0 == blobs.0 && back.2 == blobs.2);
        assert_eq!(back.1, [1, 2, 3]);
    }

    #[test]
    fn fds_of_finds_the_side_table_without_encoding() {
        use std::fs::File;
        use std::os::fd::AsRawFd;
        let files: Vec<File> = (0..3).map(|_| File::open("/dev/null").unwrap()).collect();
        let state = (files, vec![7u8; 3 * OUT_OF_LINE_BYTES], String::from("x"));
        let mut sink = crate::handover::InMemory::default();
        let encoded = Encoder::encode(&mut sink, &state).unwrap();
        let raw = |fds: &[BorrowedFd<'_>]| fds.iter().map(AsRawFd::as_raw_fd).collect::<Vec<_>>();
        let sent: Vec<BorrowedFd<'_>> = encoded.fds.iter().map(AsFd::as_fd).collect();
        assert_eq!(raw(&Encoder::fds_of(&state).unwrap()), raw(&sent));
    }

    /// Secrets, as many as a server with thousands of TLS connections has.
    struct Secrets(Vec<Vec<u8>>);

    impl Handover for Secrets {
        const SCHEMA: Schema = Schema::new("Secrets", 1);
        fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
            out.value(&self.0.len())?;
            self.0.iter().try_for_each(|secret| out.secret(secret))
        }
        fn decode(input: &mut crate::handover::Decoder<'_>) -> Result<Self, Error> {
            let len: usize = input.value()?;
            (0..len)
                .map(|_| input.secret())
                .collect::<Result<_, _>>()
                .map(Secrets)
        }
    }

    #[test]
    fn secrets_share_a_few_pipes_and_none_enters_the_stream() {
        let secrets = Secrets(
            (0..3000u32)
                .map(|i| (0..(i % 700)).map(|j| (i ^ j) as u8 | 0x80).collect())
                .collect(),
        );
        let mut sink = InMemory::default();
        let encoded = Encoder::encode(&mut sink, &secrets).unwrap();
        let total: usize = secrets.0.iter().map(Vec::len).sum();
        // 1 MiB pipes where the system allows them, 64 KiB ones at least.
        assert!(
            encoded.fds.len() >= total.div_ceil(1 << 20),
            "{}",
            encoded.fds.len()
        );
        assert!(
            encoded.fds.len() <= total.div_ceil(60 * 1024),
            "{}",
            encoded.fds.len()
        );
        assert!(encoded.fds.iter().all(|fd| !fd.is_state()));
        let fds = encoded
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        drop(encoded);
        assert!(
            sink.stream.len() < 3000 * 8,
            "{} bytes in the stream",
            sink.stream.len()
        );
        let decoded: Secrets = crate::handover::Decoder::new(&sink.stream, Vec::new(), fds)
            .decode()
            .unwrap();
        assert!(decoded.0 == secrets.0);
    }
}
