//! The handshake and every frame's payload: HELLO (as the old process reads
//! a connection's first bytes), WELCOME (as the new process reads it), and
//! OFFER, STATE, REJECT, BYTES_START, END, ABORT, COMMIT, ACK and TAKEN,
//! and KEY (the fd channel's first message), through the same typed messages
//! the handover uses.
//!
//! The first input byte picks the decoder and whether the rest is used as is
//! or XORed onto a valid encoding made by the real encoder, so that the
//! fuzzer also starts from messages that prove the secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mitosis::testing::wire::{self, Frame, HELLO_LEN, KEY_LEN, KINDS, SECRET_LEN, WELCOME_LEN};
use mitosis::{Schema, Shape};

const SECRET: [u8; SECRET_LEN] = {
    let mut secret = [0; SECRET_LEN];
    let mut i = 0;
    while i < SECRET_LEN {
        secret[i] = (i as u8).wrapping_mul(37) ^ 0x5a;
        i += 1;
    }
    secret
};

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

fn hello(received: &[u8]) {
    match wire::parse_hello(&SECRET, received) {
        Ok(Some(versions)) => {
            assert!(received.len() >= HELLO_LEN);
            assert_eq!(&received[..8], b"mitosis\0");
            assert_eq!(&received[12..HELLO_LEN], &SECRET[..32]);
            if let Some(chosen) = wire::choose_version(versions) {
                assert!(versions.0 <= chosen && chosen <= versions.1);
            }
        }
        Ok(None) => assert!(received.len() < HELLO_LEN),
        Err(why) => assert!(!why.is_empty()),
    }
}

fn welcome(bytes: &[u8]) {
    let mut welcome = [0; WELCOME_LEN];
    let len = bytes.len().min(WELCOME_LEN);
    welcome[..len].copy_from_slice(&bytes[..len]);
    match wire::parse_welcome(&SECRET, &welcome) {
        Ok(chosen) => {
            assert_eq!(chosen, 1);
            assert_eq!(&welcome[14..], &SECRET[32..]);
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// A valid frame of each kind in [`KINDS`], to mutate.
fn sample(index: usize) -> Frame {
    let schema = Schema::new("bot::State", 2);
    match index {
        0 => Frame::Offer {
            accepted: vec![schema, Schema::new("bot::State", 1)],
            description: Some(Shape::Struct {
                name: "State".into(),
                fields: vec![("generation".into(), Shape::U64)],
            }),
        },
        1 => Frame::State(schema),
        2 => Frame::Reject {
            reason: 1,
            schema,
            message: "schema mismatch".into(),
            description: None,
        },
        3 => Frame::BytesStart(1 << 20),
        4 => Frame::End {
            stream_bytes: 100,
            out_of_line_bytes: 1 << 20,
            fds: 3,
        },
        5 => Frame::Abort {
            reason: 3,
            message: "could not decode".into(),
        },
        6 => Frame::Commit,
        7 => Frame::Ack,
        _ => Frame::Taken,
    }
}

fn frame(index: usize, payload: &[u8]) {
    let kind = KINDS[index % KINDS.len()];
    if let Ok(frame) = wire::decode(kind, payload) {
        // A successful decode read exactly the payload.
        assert_eq!(wire::encode(&frame), (kind, payload.to_vec()));
    }
}

fn key(bytes: &[u8]) {
    if let Ok((secret, timeout, max_bytes, max_fds)) = wire::parse_key(bytes) {
        // A KEY is read only at its exact length, and then exactly.
        assert_eq!(bytes.len(), KEY_LEN);
        assert_eq!(wire::key(&secret, timeout, max_bytes, max_fds), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let onto_valid = mode & 0x80 != 0;
    let index = usize::from(mode >> 2 & 0x1f) % KINDS.len();
    if mode & 0x40 != 0 {
        let valid = wire::key(&SECRET, 10_000, 4 << 30, 1 << 20);
        return key(&if onto_valid { xor_onto(&valid, input) } else { input.to_vec() });
    }
    match mode % 3 {
        0 if onto_valid => hello(&xor_onto(&wire::hello(&SECRET), input)),
        0 => hello(input),
        1 if onto_valid => welcome(&xor_onto(&wire::welcome(&SECRET, 1), input)),
        1 => welcome(input),
        _ if onto_valid => frame(index, &xor_onto(&wire::encode(&sample(index)).1, input)),
        _ => frame(index, input),
    }
});
