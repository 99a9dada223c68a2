//! [`Decoder`]: where a state is read from, in the new process.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;

use super::Handover;
use super::Shapes;
use super::buffered::MAX_BUFFER_CAPACITIES;
use super::encoder::OUT_OF_LINE_BYTES;
use crate::error::Error;

/// Where [`Handover::decode`] reads a value from.
///
/// It reads the received state bytes in order and hands out the received fds
/// by index; each fd can be taken once.
///
/// ```
/// # use mitosis::{Decoder, Error};
/// fn read_count(input: &mut Decoder<'_>) -> Result<u64, Error> {
///     input.value()
/// }
/// ```
pub struct Decoder<'de> {
    /// The stream bytes not read yet.
    rest: &'de [u8],
    out_of_line: VecDeque<Vec<u8>>,
    fds: Vec<Option<OwnedFd>>,
    /// The capacities of the buffered readers and writers decoded so far,
    /// and what they may add up to.
    pub(super) buffer_capacities: u64,
    pub(super) buffer_capacity_limit: u64,
    /// The handover's shapes, worked out before the state arrived, so that
    /// [`fingerprint_of`](Decoder::fingerprint_of) traces nothing again.
    pub(crate) shapes: Shapes,
}

impl<'de> Decoder<'de> {
    pub(crate) fn new(
        stream: &'de [u8],
        out_of_line: Vec<Vec<u8>>,
        fds: Vec<OwnedFd>,
    ) -> Decoder<'de> {
        Decoder {
            rest: stream,
            out_of_line: out_of_line.into(),
            fds: fds.into_iter().map(Some).collect(),
            buffer_capacities: 0,
            buffer_capacity_limit: MAX_BUFFER_CAPACITIES,
            shapes: Shapes::new(),
        }
    }

    /// Hands the shapes the handover worked out to this decoder.
    pub(crate) fn with_shapes(mut self, shapes: Shapes) -> Self {
        self.shapes = shapes;
        self
    }

    /// The fingerprint of `S`'s schema ([`Schema::of`](crate::Schema::of)),
    /// for a [`Handover::decode_from`] that picks a migration by it.
    ///
    /// ```
    /// # use mitosis::{Decoder, Error, Handover};
    /// fn is_own<S: Handover>(fingerprint: u64, input: &mut Decoder<'_>) -> Result<bool, Error> {
    ///     Ok(fingerprint == input.fingerprint_of::<S>()?)
    /// }
    /// ```
    pub fn fingerprint_of<S: Handover>(&mut self) -> Result<u64, Error> {
        Ok(self.shapes.schema::<S>()?.fingerprint)
    }

    /// Decodes a value written with `fingerprint`'s schema, and checks that
    /// it used every byte, every out-of-line buffer and every fd.
    pub(crate) fn decode_from<S: Handover>(mut self, fingerprint: u64) -> Result<S, Error> {
        let value = S::decode_from(fingerprint, &mut self)?;
        if !self.rest.is_empty() {
            return Err(Error::Decode {
                detail: format!("{} bytes left over after the state", self.rest.len()),
            });
        }
        if !self.out_of_line.is_empty() {
            return Err(Error::Decode {
                detail: format!(
                    "{} out-of-line byte buffers were not claimed by the state",
                    self.out_of_line.len()
                ),
            });
        }
        let unused = self.fds.iter().filter(|fd| fd.is_some()).count();
        if unused > 0 {
            return Err(Error::Decode {
                detail: format!("{unused} received fds were not claimed by the state"),
            });
        }
        Ok(value)
    }

    /// Reads a plain value written by [`Encoder::value`](super::Encoder::value).
    ///
    /// ```
    /// # use mitosis::{Decoder, Error};
    /// fn read_nick(input: &mut Decoder<'_>) -> Result<String, Error> {
    ///     input.value()
    /// }
    /// ```
    pub fn value<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let (value, rest) = postcard::take_from_bytes(self.rest).map_err(codec)?;
        self.rest = rest;
        Ok(value)
    }

    /// Reads a byte buffer written by [`Encoder::bytes`](super::Encoder::bytes).
    ///
    /// ```
    /// # use mitosis::{Decoder, Error};
    /// fn read_blob(input: &mut Decoder<'_>) -> Result<Vec<u8>, Error> {
    ///     input.bytes()
    /// }
    /// ```
    pub fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let len: usize = self.value()?;
        if len >= OUT_OF_LINE_BYTES {
            let buffer = self.out_of_line.pop_front().ok_or_else(|| Error::Decode {
                detail: format!("a byte buffer of {len} bytes was announced but did not arrive"),
            })?;
            if buffer.len() != len {
                return Err(Error::Decode {
                    detail: format!(
                        "a byte buffer of {len} bytes was announced and {} arrived",
                        buffer.len()
                    ),
                });
            }
            return Ok(buffer);
        }
        if self.rest.len() < len {
            return Err(Error::Decode {
                detail: format!("a byte buffer of {len} bytes is cut short"),
            });
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(bytes.to_vec())
    }

    /// Reads a secret written by [`Encoder::secret`](super::Encoder::secret),
    /// from the pipe it came through.
    ///
    /// ```
    /// # use mitosis::{Decoder, Error};
    /// fn read_token(input: &mut Decoder<'_>) -> Result<Vec<u8>, Error> {
    ///     input.secret()
    /// }
    /// ```
    pub fn secret(&mut self) -> Result<Vec<u8>, Error> {
        let len: usize = self.value()?;
        if len > super::encoder::MAX_SECRET_BYTES {
            return Err(Error::Decode {
                detail: format!("a secret of {len} bytes was announced; at most 4096 may be"),
            });
        }
        let pipe = self.fd()?;
        let failed = |detail: String| Error::Decode {
            detail: format!("could not read a secret: {detail}"),
        };
        let stat = rustix::fs::fstat(&pipe).map_err(|e| failed(e.to_string()))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
            return Err(failed("its fd is not a pipe".into()));
        }
        // The old process wrote it whole before sending the read end, and
        // its write end is closed: the bytes are all there, then EOF.
        rustix::io::ioctl_fionbio(&pipe, true).map_err(|e| failed(e.to_string()))?;
        let mut secret = vec![0; len + 1];
        let read = rustix::io::read(&pipe, &mut secret[..]).map_err(|e| failed(e.to_string()))?;
        if read != len {
            return Err(failed(format!(
                "{len} bytes were announced and {read} came"
            )));
        }
        secret.truncate(len);
        Ok(secret)
    }

    /// Reads an fd index written by [`Encoder::fd`](super::Encoder::fd) and takes that fd.
    ///
    /// ```
    /// # use mitosis::{Decoder, Error};
    /// fn read_file(input: &mut Decoder<'_>) -> Result<std::fs::File, Error> {
    ///     input.fd().map(std::fs::File::from)
    /// }
    /// ```
    pub fn fd(&mut self) -> Result<OwnedFd, Error> {
        let index: u32 = self.value()?;
        let received = self.fds.len();
        self.fds
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| Error::Decode {
                detail: format!(
                    "fd index {index} is out of range or used twice ({received} fds received)"
                ),
            })
    }

    /// The length prefix of a sequence or map.
    pub(super) fn len(&mut self) -> Result<usize, Error> {
        self.value::<usize>()
    }
}

fn codec(error: postcard::Error) -> Error {
    Error::Decode {
        detail: error.to_string(),
    }
}

/// Capacity to reserve for a decoded sequence of `len` elements of `T`: all
/// of it for an honest length, so a large map is not rehashed as it grows.
/// A corrupt length is bounded twice over: every element takes at least one
/// byte of what is left in the stream, and no more than 64 MiB is reserved
/// up front.
pub(super) fn bounded_capacity<T>(len: usize, input: &Decoder<'_>) -> usize {
    const RESERVE_BUDGET: usize = 64 << 20;
    len.min(input.rest.len())
        .min(RESERVE_BUDGET / std::mem::size_of::<T>().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::tests::stream_of;
    use crate::handover::{Encoder, InMemory};
    use crate::schema::Schema;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn out_of_line_buffers_must_match_their_announcement() {
        /// A value written with `Encoder::bytes`.
        struct Bytes(Vec<u8>);
        impl Handover for Bytes {
            const SCHEMA: Schema = Schema::new("Bytes", 1);
            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.bytes(&self.0)
            }
            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                input.bytes().map(Bytes)
            }
        }
        let stream = postcard::to_stdvec(&OUT_OF_LINE_BYTES).unwrap();
        let error = |out_of_line: Vec<Vec<u8>>, stream: &[u8]| {
            Decoder::new(stream, out_of_line, Vec::new())
                .decode::<Bytes>()
                .err()
                .unwrap()
                .to_string()
        };
        assert!(error(Vec::new(), &stream).contains("did not arrive"));
        let short = vec![0; OUT_OF_LINE_BYTES - 1];
        assert!(error(vec![short], &stream).contains("65535 arrived"));
        assert!(error(vec![vec![1]], &[0]).contains("not claimed"));
        assert!(error(Vec::new(), &[5, 1]).contains("cut short"));
    }
    #[test]
    fn decoding_refuses_leftovers_and_reused_fds() {
        let file = File::open("/proc/self/exe").unwrap();
        let bytes = {
            let mut sink = InMemory::default();
            Encoder::encode(&mut sink, &file).unwrap();
            sink.stream
        };
        let dup = |n: usize| {
            (0..n)
                .map(|_| file.as_fd().try_clone_to_owned().unwrap())
                .collect::<Vec<_>>()
        };
        // An fd nobody claims.
        let err = Decoder::new(&bytes, Vec::new(), dup(2))
            .decode::<File>()
            .unwrap_err();
        assert!(
            err.to_string().contains("1 received fds were not claimed"),
            "{err}"
        );
        // An index past the table.
        let err = Decoder::new(&bytes, Vec::new(), dup(0))
            .decode::<File>()
            .unwrap_err();
        assert!(
            err.to_string().contains("fd index 0 is out of range"),
            "{err}"
        );
        // The same index twice.
        let twice = [bytes.clone(), bytes.clone()].concat();
        let err = Decoder::new(&twice, Vec::new(), dup(1))
            .decode::<(File, File)>()
            .unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
        // Bytes left over.
        let err = Decoder::new(&twice, Vec::new(), dup(1))
            .decode::<File>()
            .unwrap_err();
        assert!(err.to_string().contains("1 bytes left over"), "{err}");
    }
    #[test]
    fn a_corrupt_length_does_not_allocate_it() {
        // A Vec<u64> claiming u64::MAX / 2 elements, followed by nothing.
        let bytes = stream_of(&(usize::MAX / 2));
        let err = Decoder::new(&bytes, Vec::new(), Vec::new())
            .decode::<Vec<u64>>()
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }
}
