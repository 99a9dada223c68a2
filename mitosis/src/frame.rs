//! Framing on the TCP connection: the two preambles, then length-prefixed
//! frames (PROTOCOL.md, "Frames").
//!
//! Every blocking call goes through [`Conn`], which arms the socket's timeout
//! with what is left of the handover's deadline, so no read or write can
//! outlive it.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Step};
use crate::fault::{Side, Tripwire};
use crate::handover::{Schema, SchemaInfo, StateSink};

/// The first eight bytes each side sends.
pub(crate) const MAGIC: [u8; 8] = *b"mitosis\0";

/// The protocol versions this build speaks.
pub(crate) const VERSIONS: (u16, u16) = (1, 1);

/// Length of the token each side proves the secret with.
pub(crate) const TOKEN_LEN: usize = 32;

/// The new process's preamble: magic, lowest and highest version, token.
pub(crate) const HELLO_LEN: usize = 8 + 2 + 2 + TOKEN_LEN;

/// The old process's preamble: magic, chosen version (0: none in common),
/// its lowest and highest version, token.
pub(crate) const WELCOME_LEN: usize = 8 + 2 + 2 + 2 + TOKEN_LEN;

/// Frame header: kind (1 byte), payload length (u32, little-endian).
pub(crate) const HEADER_LEN: usize = 5;

/// Largest payload of any frame but DATA.
pub(crate) const MAX_CONTROL_PAYLOAD: u32 = 64 * 1024;

/// Largest payload of one DATA frame.
pub(crate) const MAX_DATA_PAYLOAD: u32 = 1024 * 1024;

/// Largest state the new process accepts.
pub(crate) const MAX_STATE_BYTES: u64 = 4 << 30;

/// Most fds the new process accepts in one handover.
pub(crate) const MAX_FDS: u32 = 1 << 20;

/// The frame kinds of protocol version 1. (`pub` only so that
/// `__private::wire` can hand it to tests and fuzz targets.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// new → old: the schemas the new process accepts.
    Offer = 1,
    /// old → new: the schema of the state that follows.
    State = 2,
    /// old → new: a chunk of the encoded state.
    Data = 3,
    /// old → new: the state's total length and fd count.
    End = 4,
    /// new → old: the state is decoded; the new process is ready.
    Commit = 5,
    /// old → new: ownership has passed.
    Ack = 6,
    /// old → new: the old process refuses to send its state.
    Reject = 7,
    /// new → old: the new process gives up.
    Abort = 8,
    /// old → new: an out-of-line byte buffer of this many bytes follows.
    BytesStart = 9,
    /// old → new: a chunk of an out-of-line byte buffer.
    Bytes = 10,
    /// new → old: the new process has the connections now.
    Taken = 11,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Offer,
            2 => Kind::State,
            3 => Kind::Data,
            4 => Kind::End,
            5 => Kind::Commit,
            6 => Kind::Ack,
            7 => Kind::Reject,
            8 => Kind::Abort,
            9 => Kind::BytesStart,
            10 => Kind::Bytes,
            11 => Kind::Taken,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Offer => "OFFER",
            Kind::State => "STATE",
            Kind::Data => "DATA",
            Kind::End => "END",
            Kind::Commit => "COMMIT",
            Kind::Ack => "ACK",
            Kind::Reject => "REJECT",
            Kind::Abort => "ABORT",
            Kind::BytesStart => "BYTES_START",
            Kind::Bytes => "BYTES",
            Kind::Taken => "TAKEN",
        }
    }

    fn max_payload(self) -> u32 {
        match self {
            Kind::Data | Kind::Bytes => MAX_DATA_PAYLOAD,
            _ => MAX_CONTROL_PAYLOAD,
        }
    }
}

/// Why a REJECT or ABORT was sent (its first payload byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    /// The offered and the held schema do not match.
    Schema = 1,
    /// A size or count limit was exceeded.
    Limit = 2,
    /// The state did not decode.
    Decode = 3,
    /// The other side broke the protocol.
    Protocol = 4,
    /// An I/O error.
    Io = 5,
}

impl Reason {
    pub(crate) fn of(error: &Error) -> Reason {
        match error {
            Error::SchemaMismatch { .. } => Reason::Schema,
            Error::FrameTooLarge { .. } | Error::LimitExceeded { .. } => Reason::Limit,
            Error::Codec { .. } => Reason::Decode,
            Error::Io { .. } | Error::PeerGone { .. } | Error::Timeout { .. } => Reason::Io,
            _ => Reason::Protocol,
        }
    }
}

/// A point in time after which the handover has failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// What is left, or a timeout error naming `step`.
    pub(crate) fn remaining(&self, step: Step) -> Result<Duration, Error> {
        match self.at.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(self.expired(step)),
        }
    }

    pub(crate) fn expired(&self, step: Step) -> Error {
        Error::Timeout {
            step,
            after: self.timeout,
        }
    }

    /// Maps an I/O error, reading an expired socket timeout as the deadline.
    pub(crate) fn io_error(&self, step: Step) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.expired(step),
            _ => Error::io(step)(source),
        }
    }
}

/// The TCP connection between the two processes, after the preambles.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    deadline: Deadline,
    /// Set while a read may wait for as long as the other process lives.
    unbounded: bool,
    /// Counts step 5's bytes for the tests' `state@N` faults; nothing
    /// without the `fault-injection` feature.
    tripwire: Tripwire,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, deadline: Deadline, side: Side) -> Conn {
        Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
            deadline,
            unbounded: false,
            tripwire: Tripwire::new(side),
        }
    }

    fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Holds back partly filled segments (`TCP_CORK`) until the returned
    /// guard is dropped. With `TCP_NODELAY` every frame is a segment of its
    /// own, and the other process may wake for each; a burst written
    /// corked leaves in as few segments as its size allows, and the other
    /// process wakes once. Without cork (it cannot fail on a TCP socket),
    /// the frames still go out, one segment each.
    pub(crate) fn cork(&self) -> Corked {
        let fd = self.stream().as_fd().try_clone_to_owned().ok();
        let fd = fd.filter(|fd| set_cork(fd, true));
        Corked { fd }
    }

    fn arm_read(&self, step: Step) -> Result<(), Error> {
        if self.unbounded {
            return Ok(());
        }
        let left = self.deadline.remaining(step)?;
        self.stream()
            .set_read_timeout(Some(left))
            .map_err(Error::io(step))
    }

    fn arm_write(&self, step: Step) -> Result<(), Error> {
        if self.unbounded {
            return Ok(());
        }
        let left = self.deadline.remaining(step)?;
        self.stream()
            .set_write_timeout(Some(left))
            .map_err(Error::io(step))
    }

    pub(crate) fn read_exact(&mut self, step: Step, buf: &mut [u8]) -> Result<(), Error> {
        let allowed = self.allow(step, buf.len());
        let (first, rest) = buf.split_at_mut(allowed);
        self.read_exact_unchecked(step, first)?;
        self.passed(step, allowed);
        if !rest.is_empty() {
            self.read_exact_unchecked(step, rest)?;
            self.passed(step, rest.len());
        }
        Ok(())
    }

    fn read_exact_unchecked(&mut self, step: Step, buf: &mut [u8]) -> Result<(), Error> {
        self.arm_read(step)?;
        self.reader
            .read_exact(buf)
            .map_err(self.deadline.io_error(step))
    }

    pub(crate) fn write_all(&self, step: Step, bytes: &[u8]) -> Result<(), Error> {
        self.write_all_vectored(step, &mut [IoSlice::new(bytes)])
    }

    /// Writes several buffers as one, with as few syscalls as the socket
    /// allows.
    fn write_all_vectored(&self, step: Step, parts: &mut [IoSlice<'_>]) -> Result<(), Error> {
        let len = parts.iter().map(|part| part.len()).sum();
        let allowed = self.allow(step, len);
        if allowed < len {
            // Only with a `state@N` fault armed: stop at exactly byte N.
            let flat: Vec<u8> = parts.iter().flat_map(|part| part.iter().copied()).collect();
            let (first, rest) = flat.split_at(allowed);
            for part in [first, rest] {
                if !part.is_empty() {
                    self.write_all_vectored_unchecked(step, &mut [IoSlice::new(part)])?;
                }
                self.passed(step, part.len());
            }
            return Ok(());
        }
        self.write_all_vectored_unchecked(step, parts)?;
        self.passed(step, len);
        Ok(())
    }

    fn write_all_vectored_unchecked(
        &self,
        step: Step,
        mut parts: &mut [IoSlice<'_>],
    ) -> Result<(), Error> {
        let mut stream = self.stream();
        while !parts.is_empty() {
            self.arm_write(step)?;
            match stream.write_vectored(parts) {
                Ok(0) => return Err(Error::PeerGone { step }),
                Ok(n) => IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.deadline.io_error(step)(e)),
            }
        }
        Ok(())
    }

    /// How many of the next `len` bytes may move before a test fault
    /// strikes: all of them but in step 5 under `fault-injection`.
    fn allow(&self, step: Step, len: usize) -> usize {
        if step == Step::State {
            self.tripwire.allow(len)
        } else {
            len
        }
    }

    fn passed(&self, step: Step, len: usize) {
        if step == Step::State {
            self.tripwire.passed(len);
        }
    }

    pub(crate) fn write_frame(&self, step: Step, kind: Kind, payload: &[u8]) -> Result<(), Error> {
        debug_assert!(payload.len() <= kind.max_payload() as usize);
        let header = header(kind, payload.len() as u32);
        self.write_all_vectored(step, &mut [IoSlice::new(&header), IoSlice::new(payload)])
    }

    /// Reads a frame header, checking the kind against `expected` and the
    /// length against the kind's limit before anything is allocated.
    pub(crate) fn read_header(
        &mut self,
        step: Step,
        expected: &[Kind],
    ) -> Result<(Kind, u32), Error> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(step, &mut header)?;
        decode_header(step, header, expected)
    }

    /// Reads a whole frame of one of the `expected` kinds.
    pub(crate) fn read_frame(
        &mut self,
        step: Step,
        expected: &[Kind],
    ) -> Result<(Kind, Vec<u8>), Error> {
        let (kind, len) = self.read_header(step, expected)?;
        let mut payload = vec![0; len as usize];
        self.read_exact(step, &mut payload)?;
        Ok((kind, payload))
    }

    /// From here on, reads and writes have no time limit: for step 8,
    /// where only the other process's decision or its death may end a wait.
    pub(crate) fn drop_deadline(&mut self, step: Step) -> Result<(), Error> {
        self.unbounded = true;
        self.stream()
            .set_read_timeout(None)
            .and_then(|()| self.stream().set_write_timeout(None))
            .map_err(Error::io(step))
    }

    /// Appends `len` bytes from the stream to `buf`, reading into its spare
    /// capacity without filling it with zeros first.
    pub(crate) fn read_append(
        &mut self,
        step: Step,
        buf: &mut Vec<u8>,
        len: u32,
    ) -> Result<(), Error> {
        let allowed = self.allow(step, len as usize) as u32;
        self.read_append_unchecked(step, buf, allowed)?;
        self.passed(step, allowed as usize);
        if allowed < len {
            self.read_append_unchecked(step, buf, len - allowed)?;
            self.passed(step, (len - allowed) as usize);
        }
        Ok(())
    }

    fn read_append_unchecked(
        &mut self,
        step: Step,
        buf: &mut Vec<u8>,
        len: u32,
    ) -> Result<(), Error> {
        self.arm_read(step)?;
        let got = (&mut self.reader)
            .take(len.into())
            .read_to_end(buf)
            .map_err(self.deadline.io_error(step))?;
        if got < len as usize {
            return Err(Error::PeerGone { step });
        }
        Ok(())
    }
}

/// Sends what [`Conn::cork`] held back, when dropped, on every path out of
/// the burst, errors included.
pub(crate) struct Corked {
    fd: Option<OwnedFd>,
}

impl Drop for Corked {
    fn drop(&mut self) {
        if let Some(fd) = &self.fd {
            set_cork(fd, false);
        }
    }
}

fn set_cork(fd: &OwnedFd, on: bool) -> bool {
    rustix::net::sockopt::set_tcp_cork(fd, on)
        .inspect_err(|error| log::debug!("mitosis: TCP_CORK {on}: {error}"))
        .is_ok()
}

fn header(kind: Kind, len: u32) -> [u8; HEADER_LEN] {
    let len = len.to_le_bytes();
    [kind as u8, len[0], len[1], len[2], len[3]]
}

/// Reads a frame header: the kind must be one of `expected`, and the length
/// within that kind's maximum, so that the payload can be allocated. Only a
/// refused header allocates, for the error's text, and only when the kind
/// is the problem.
pub(crate) fn decode_header(
    step: Step,
    header: [u8; HEADER_LEN],
    expected: &[Kind],
) -> Result<(Kind, u32), Error> {
    let [kind, len @ ..] = header;
    let kind = Kind::from_byte(kind)
        .ok_or_else(|| Error::protocol(step, format!("unknown frame kind {kind:#04x}")))?;
    if !expected.contains(&kind) {
        let names: Vec<_> = expected.iter().map(|k| k.name()).collect();
        return Err(Error::protocol(
            step,
            format!("expected {}, got {}", names.join(" or "), kind.name()),
        ));
    }
    let len = u32::from_le_bytes(len);
    if len > kind.max_payload() {
        return Err(Error::FrameTooLarge {
            step,
            kind: kind.name(),
            len: len.into(),
            max: kind.max_payload().into(),
        });
    }
    Ok((kind, len))
}

/// Where the encoder streams the state (step 5): plain bytes as DATA
/// frames, and each out-of-line byte buffer as BYTES_START and BYTES frames,
/// written straight from the state's memory.
pub(crate) struct DataFrames<'c> {
    pub(crate) conn: &'c Conn,
}

impl DataFrames<'_> {
    fn chunks(&self, kind: Kind, bytes: &[u8]) -> Result<(), Error> {
        bytes
            .chunks(MAX_DATA_PAYLOAD as usize)
            .try_for_each(|chunk| self.conn.write_frame(Step::State, kind, chunk))
    }
}

impl StateSink for DataFrames<'_> {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.chunks(Kind::Data, bytes)
    }

    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let start = (bytes.len() as u64).to_le_bytes();
        self.conn
            .write_frame(Step::State, Kind::BytesStart, &start)?;
        self.chunks(Kind::Bytes, bytes)
    }
}

/// Builds a control frame's payload (little-endian, fixed layout).
#[derive(Default)]
pub(crate) struct Payload(Vec<u8>);

impl Payload {
    pub(crate) fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }

    pub(crate) fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A UTF-8 string: u16 length, then the bytes; cut to fit at a char
    /// boundary.
    pub(crate) fn str(self, value: &str) -> Self {
        let mut end = value.len().min(4096);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let mut this = self.u16(end as u16);
        this.0.extend_from_slice(&value.as_bytes()[..end]);
        this
    }

    /// A schema: version (u32), fingerprint (u64), name (string).
    pub(crate) fn schema(self, schema: &Schema) -> Self {
        self.u32(schema.version)
            .u64(schema.fingerprint)
            .str(schema.name)
    }

    pub(crate) fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a control frame's payload, refusing anything short or left over.
pub(crate) struct Fields<'p> {
    rest: &'p [u8],
    step: Step,
    kind: Kind,
}

impl<'p> Fields<'p> {
    pub(crate) fn new(step: Step, kind: Kind, payload: &'p [u8]) -> Self {
        Fields {
            rest: payload,
            step,
            kind,
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        if self.rest.len() < N {
            return Err(self.short());
        }
        let (head, rest) = self.rest.split_at(N);
        self.rest = rest;
        Ok(head.try_into().expect("split_at gave N bytes"))
    }

    fn short(&self) -> Error {
        Error::protocol(
            self.step,
            format!("{} frame is too short", self.kind.name()),
        )
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        self.take::<1>().map(|[b]| b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        self.take().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        self.take().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        self.take().map(u64::from_le_bytes)
    }

    pub(crate) fn str(&mut self) -> Result<String, Error> {
        let len = self.u16()? as usize;
        if self.rest.len() < len {
            return Err(self.short());
        }
        let (text, rest) = self.rest.split_at(len);
        self.rest = rest;
        String::from_utf8(text.to_vec()).map_err(|_| {
            Error::protocol(
                self.step,
                format!("{} frame holds invalid UTF-8", self.kind.name()),
            )
        })
    }

    pub(crate) fn schema(&mut self) -> Result<SchemaInfo, Error> {
        let version = self.u32()?;
        let fingerprint = self.u64()?;
        let name = self.str()?;
        Ok(SchemaInfo {
            name,
            version,
            fingerprint,
        })
    }

    /// Checks that the whole payload was read.
    pub(crate) fn end(self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::protocol(
                self.step,
                format!(
                    "{} frame has {} unexpected trailing bytes",
                    self.kind.name(),
                    self.rest.len()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair: the raw sending end and a `Conn` reading.
    fn pair() -> (TcpStream, Conn) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let raw = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (
            raw,
            Conn::new(accepted, Deadline::after(Duration::from_secs(5)), Side::New),
        )
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let (mut raw, mut conn) = pair();
        raw.write_all(&[Kind::Data as u8, 0xff, 0xff, 0xff, 0xff])
            .unwrap();
        let err = conn.read_frame(Step::State, &[Kind::Data]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::FrameTooLarge {
                    len: 4294967295,
                    max: 1048576,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_and_unexpected_kinds_are_refused() {
        let (mut raw, mut conn) = pair();
        raw.write_all(&[0x42, 0, 0, 0, 0]).unwrap();
        let err = conn.read_frame(Step::Offer, &[Kind::Offer]).unwrap_err();
        assert!(err.to_string().contains("unknown frame kind 0x42"), "{err}");
        let (mut raw, mut conn) = pair();
        raw.write_all(&[Kind::Ack as u8, 0, 0, 0, 0]).unwrap();
        let err = conn
            .read_frame(Step::Commit, &[Kind::Commit, Kind::Abort])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected COMMIT or ABORT, got ACK"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_frame_is_the_peer_gone() {
        let (mut raw, mut conn) = pair();
        raw.write_all(&[Kind::Offer as u8, 10, 0, 0, 0, 1, 2])
            .unwrap();
        drop(raw);
        let err = conn.read_frame(Step::Offer, &[Kind::Offer]).unwrap_err();
        assert!(
            matches!(err, Error::PeerGone { step: Step::Offer }),
            "{err:?}"
        );
    }

    #[test]
    fn frames_round_trip_and_data_is_chunked() {
        let (raw, mut conn) = pair();
        let sender = Conn::new(raw, Deadline::after(Duration::from_secs(5)), Side::Old);
        let big = vec![9u8; MAX_DATA_PAYLOAD as usize + 10];
        let writer = std::thread::spawn(move || {
            DataFrames { conn: &sender }.data(&big).unwrap();
            sender
                .write_frame(Step::State, Kind::End, &[1, 2, 3])
                .unwrap();
        });
        let (kind, first) = conn.read_frame(Step::State, &[Kind::Data]).unwrap();
        assert_eq!((kind, first.len()), (Kind::Data, MAX_DATA_PAYLOAD as usize));
        let (_, second) = conn.read_frame(Step::State, &[Kind::Data]).unwrap();
        assert_eq!(second.len(), 10);
        let (kind, end) = conn.read_frame(Step::State, &[Kind::End]).unwrap();
        assert_eq!((kind, end), (Kind::End, vec![1, 2, 3]));
        writer.join().unwrap();
    }

    #[test]
    fn fields_refuse_short_and_long_payloads() {
        let payload = Payload::default().u32(7).str("héllo").bytes();
        let mut fields = Fields::new(Step::Offer, Kind::Offer, &payload);
        assert_eq!(fields.u32().unwrap(), 7);
        assert_eq!(fields.str().unwrap(), "héllo");
        fields.end().unwrap();
        let mut short = Fields::new(Step::Offer, Kind::Offer, &payload[..6]);
        short.u32().unwrap();
        assert!(short.str().unwrap_err().to_string().contains("too short"));
        let mut long = Fields::new(Step::Offer, Kind::Offer, &payload);
        long.u32().unwrap();
        assert!(long.end().unwrap_err().to_string().contains("trailing"));
    }
}
