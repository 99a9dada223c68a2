//! The old process's side of step 6: where the encoder streams the state.

use crate::conn::Conn;
use crate::error::{Error, Step};
use crate::handover::StateSink;
use crate::pipe::{PIPE_BYTES, PipeSender};
use crate::wire::{BytesStart, Kind, MAX_DATA_PAYLOAD};

/// Where the encoder streams the state (step 6): plain bytes as DATA
/// frames, and each out-of-line byte buffer as BYTES_START and BYTES frames,
/// written straight from the state's memory; or, from [`PIPE_BYTES`] on and
/// when the protocol version has it, through the pipe.
pub(crate) struct DataFrames<'c, 'p> {
    pub(crate) conn: &'c Conn,
    pub(crate) pipe: Option<&'c mut PipeSender<'p>>,
}

impl DataFrames<'_, '_> {
    fn chunks(&self, kind: Kind, bytes: &[u8]) -> Result<(), Error> {
        bytes
            .chunks(MAX_DATA_PAYLOAD as usize)
            .try_for_each(|chunk| self.conn.write_frame(Step::State, kind, chunk))
    }
}

impl StateSink for DataFrames<'_, '_> {
    fn data(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.chunks(Kind::Data, bytes)
    }

    fn out_of_line(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() >= PIPE_BYTES
            && let Some(pipe) = self.pipe.as_deref_mut()
            && pipe.send(self.conn, bytes)?
        {
            return Ok(());
        }
        let start = BytesStart {
            size: bytes.len() as u64,
        };
        self.conn.send(Step::State, &start)?;
        self.chunks(Kind::Bytes, bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::conn::Deadline;
    use crate::fault::Side;

    #[test]
    fn frames_round_trip_and_data_is_chunked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let raw = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let mut conn = Conn::new(accepted, Deadline::after(Duration::from_secs(5)), Side::New);
        let sender = Conn::new(raw, Deadline::after(Duration::from_secs(5)), Side::Old);
        let big = vec![9u8; MAX_DATA_PAYLOAD as usize + 10];
        let writer = std::thread::spawn(move || {
            DataFrames {
                conn: &sender,
                pipe: None,
            }
            .data(&big)
            .unwrap();
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
}
