//! Step 3 and 4 decoders: HELLO (as the old process reads a connection's
//! first bytes), WELCOME (as the new process reads it) and the OFFER payload.
//!
//! The first input byte picks the decoder and whether the rest is used as is
//! or XORed onto a valid encoding made by the real encoder, so that the
//! fuzzer also starts from messages that prove the secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mitosis::__private::wire::{self, HELLO_LEN, SECRET_LEN, WELCOME_LEN};
use mitosis::Schema;

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

fn offer(payload: &[u8]) {
    if let Ok(accepted) = wire::parse_offer(payload) {
        // A successful parse read exactly the payload.
        let mut again = (accepted.len() as u16).to_le_bytes().to_vec();
        for schema in &accepted {
            again.extend(schema.version.to_le_bytes());
            again.extend(schema.fingerprint.to_le_bytes());
            again.extend((schema.name.len() as u16).to_le_bytes());
            again.extend(schema.name.as_bytes());
        }
        assert_eq!(again, payload);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let onto_valid = mode & 0x80 != 0;
    match mode % 3 {
        0 if onto_valid => hello(&xor_onto(&wire::hello(&SECRET), input)),
        0 => hello(input),
        1 if onto_valid => welcome(&xor_onto(&wire::welcome(&SECRET, 1), input)),
        1 => welcome(input),
        _ if onto_valid => {
            let accepted = [Schema::new("bot::State", 2), Schema::new("bot::State", 1)];
            offer(&xor_onto(&wire::offer(&accepted), input))
        }
        _ => offer(input),
    }
});
