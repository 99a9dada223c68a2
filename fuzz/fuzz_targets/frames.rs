//! Frame headers (checked against the frame table before anything is
//! allocated) and the state stream of a representative derived state, with
//! fds and out-of-line buffers, decoded as the new process does in step 7.
//!
//! The first input byte picks the mode: a header, or a state stream used as
//! is or XORed onto a valid encoding made by the real encoder. Its other
//! bits choose how many fds and out-of-line buffers arrive with the stream.
#![no_main]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mitosis::testing::wire::{
    self, HEADER_LEN, Kind, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD, OUT_OF_LINE_BYTES,
};
use mitosis::testing::{self as hooks, EncodedState};
use mitosis::{Handover, Step};

#[derive(Handover)]
#[handover(version = 1)]
enum Link {
    Down,
    Up { conn: UnixStream, since: u64 },
    Backoff(u32),
}

/// What a server hands over: a listener, clients with half-read lines, maps,
/// byte buffers inline and out of line, an enum, optional fds.
#[derive(Handover)]
#[handover(name = "fuzz::State", version = 3)]
struct State {
    generation: u64,
    nick: String,
    listener: TcpListener,
    clients: Vec<BufReader<TcpStream>>,
    channels: HashMap<String, Vec<String>>,
    seen: Vec<u8>,
    blob: Vec<u8>,
    link: Link,
    log: Option<BufWriter<File>>,
    spare: Option<OwnedFd>,
    uptime: Duration,
}

/// A valid state, encoded once; the value is kept so that its fds stay open.
/// Every fd in it is `/dev/null`, opened for writing: a decoded
/// `BufWriter` flushes into whichever fd a mutated stream gives it, and
/// that must neither block nor raise SIGPIPE.
fn valid() -> &'static (State, EncodedState) {
    static VALID: OnceLock<(State, EncodedState)> = OnceLock::new();
    VALID.get_or_init(|| {
        // A client with half a line read: the buffer keeps it when the
        // socket behind it is swapped for /dev/null.
        let (socket, mut far) = UnixStream::pair().unwrap();
        far.write_all(b"NICK bot\r\nPRIVMSG #a :hal").unwrap();
        let mut client = BufReader::new(TcpStream::from(OwnedFd::from(socket)));
        let mut line = String::new();
        client.read_line(&mut line).unwrap();
        assert_eq!(client.buffer(), b"PRIVMSG #a :hal");
        *client.get_mut() = TcpStream::from(null_fd());
        let state = State {
            generation: 7,
            nick: "bot".into(),
            listener: TcpListener::from(null_fd()),
            clients: vec![client, BufReader::new(TcpStream::from(null_fd()))],
            channels: [("#a".to_string(), vec!["alice".to_string()])].into(),
            seen: b"PING".to_vec(),
            blob: vec![0x5a; OUT_OF_LINE_BYTES],
            link: Link::Up {
                conn: UnixStream::from(null_fd()),
                since: 9,
            },
            log: Some(BufWriter::with_capacity(64, null())),
            spare: Some(null_fd()),
            uptime: Duration::from_millis(1500),
        };
        let encoded = hooks::encode_state(&state).unwrap();
        assert_eq!(encoded.fds.len(), 6);
        (state, encoded)
    })
}

fn null() -> File {
    File::options().write(true).open("/dev/null").unwrap()
}

fn null_fd() -> OwnedFd {
    null().into()
}

/// `valid` with `input` XORed onto it, and any input past its end appended.
fn xor_onto(valid: &[u8], input: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = valid
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ input.get(i).copied().unwrap_or(0))
        .collect();
    bytes.extend(input.iter().skip(valid.len()));
    bytes
}

const KINDS: [Kind; 14] = [
    Kind::Offer,
    Kind::State,
    Kind::Data,
    Kind::End,
    Kind::Commit,
    Kind::Ack,
    Kind::Reject,
    Kind::Abort,
    Kind::BytesStart,
    Kind::Bytes,
    Kind::Taken,
    Kind::Ready,
    Kind::BytesPiped,
    Kind::Lineage,
];

fn header(input: &[u8]) {
    let mut header = [0; HEADER_LEN];
    let len = input.len().min(HEADER_LEN);
    header[..len].copy_from_slice(&input[..len]);
    let mask = input
        .get(HEADER_LEN..HEADER_LEN + 2)
        .map_or(1, |m| u16::from_le_bytes([m[0], m[1]]));
    let expected: Vec<Kind> = (0..KINDS.len())
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| KINDS[bit])
        .collect();
    if let Ok((kind, len)) = wire::decode_header(Step::State, header, &expected) {
        assert!(expected.contains(&kind));
        assert_eq!(kind as u8, header[0]);
        let max = match kind {
            Kind::Data | Kind::Bytes => MAX_DATA_PAYLOAD,
            _ => MAX_CONTROL_PAYLOAD,
        };
        assert!(len <= max, "{kind:?} of {len} bytes");
    }
}

fn state(stream: &[u8], out_of_line: Vec<Vec<u8>>, fds: Vec<OwnedFd>) {
    if let Err(error) = hooks::decode_state::<State>(stream, out_of_line, fds) {
        assert!(!error.to_string().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    // Bits 0-1: the mode; bits 2-4: fds; bits 5-6: out-of-line buffers.
    let fd_choice = usize::from(mode >> 2 & 7);
    let buffer_choice = usize::from(mode >> 5 & 3);
    match mode & 3 {
        0 => header(input),
        1 => {
            let (_, valid) = valid();
            // As sent, one fd short, or one too many.
            let mut fds: Vec<OwnedFd> =
                valid.fds.iter().map(|fd| fd.try_clone().unwrap()).collect();
            match fd_choice {
                1 => drop(fds.pop()),
                2 => fds.push(null_fd()),
                _ => {}
            }
            // As sent, missing, cut short, or one too many.
            let mut out_of_line = valid.out_of_line.clone();
            match buffer_choice {
                1 => out_of_line.clear(),
                2 => out_of_line.iter_mut().for_each(|buffer| {
                    buffer.pop();
                }),
                3 => out_of_line.push(vec![0; OUT_OF_LINE_BYTES]),
                _ => {}
            }
            state(&xor_onto(&valid.stream, input), out_of_line, fds);
        }
        _ => {
            let fds = (0..fd_choice).map(|_| null_fd()).collect();
            let out_of_line = vec![vec![0; OUT_OF_LINE_BYTES]; buffer_choice];
            state(input, out_of_line, fds);
        }
    }
});
