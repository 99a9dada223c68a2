//! The handshake (PROTOCOL.md, step 3): the secret, the two preambles that
//! prove it, and the protocol version.

use std::io;

use super::{Hello, MAGIC, TOKEN_LEN, Welcome};
use crate::error::{Error, Step};
use crate::fault::{self, Side};

/// A fresh random secret for one handover: the new process's token, then
/// the old process's. It reaches the new process in the fd channel's KEY,
/// once the kernel has shown who is connected; never in its arguments or
/// its environment, which other processes can read.
pub(crate) struct Secret([u8; 2 * TOKEN_LEN]);

impl Secret {
    pub(crate) fn from_bytes(bytes: [u8; 2 * TOKEN_LEN]) -> Secret {
        Secret(bytes)
    }

    pub(crate) fn generate() -> io::Result<Secret> {
        let mut bytes = [0u8; 2 * TOKEN_LEN];
        let mut filled = 0;
        while filled < bytes.len() {
            filled += rustix::rand::getrandom(
                &mut bytes[filled..],
                rustix::rand::GetRandomFlags::empty(),
            )?;
        }
        Ok(Secret(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; 2 * TOKEN_LEN] {
        &self.0
    }

    pub(crate) fn child_token(&self) -> &[u8] {
        &self.0[..TOKEN_LEN]
    }

    pub(crate) fn parent_token(&self) -> &[u8] {
        &self.0[TOKEN_LEN..]
    }
}

/// Compares without an early exit, so that timing says nothing about how
/// much of a guessed token was right.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The new process's preamble (step 3).
pub(crate) fn hello(secret: &Secret) -> [u8; Hello::LEN] {
    Hello {
        versions: fault::versions(Side::New),
        token: secret.child_token().try_into().expect("a token"),
    }
    .encode()
}

/// What the first bytes of a connection prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A HELLO so far; more bytes are needed.
    Waiting,
    /// Not a HELLO, or not one with the secret; why, for the log.
    Refused(&'static str),
    /// A HELLO with the new process's token, offering these versions.
    Proven((u16, u16)),
}

/// Checks the first bytes a connection sent (step 3): refused as soon as
/// they differ from the magic, then once all of HELLO is in, proven only if
/// it holds the new process's token. Bytes past the HELLO are not looked
/// at. Allocates nothing.
pub(crate) fn check_hello(secret: &Secret, received: &[u8]) -> Progress {
    let received = &received[..received.len().min(Hello::LEN)];
    let magic_seen = received.len().min(MAGIC.len());
    if received[..magic_seen] != MAGIC[..magic_seen] {
        return Progress::Refused("sent bytes that are not a mitosis HELLO");
    }
    let Some(hello) = <&[u8; Hello::LEN]>::try_from(received)
        .ok()
        .and_then(Hello::decode)
    else {
        return Progress::Waiting;
    };
    if same_token(&hello.token, secret.child_token()) {
        Progress::Proven(hello.versions)
    } else {
        Progress::Refused("sent a HELLO with the wrong secret")
    }
}

/// The highest version both sides speak, if any.
pub(crate) fn choose_version(theirs: (u16, u16)) -> Option<u16> {
    let ours = fault::versions(Side::Old);
    let low = theirs.0.max(ours.0);
    let high = theirs.1.min(ours.1);
    (low <= high).then_some(high)
}

/// The old process's preamble (step 3); `chosen` is 0 when no version is
/// shared.
pub(crate) fn welcome(secret: &Secret, chosen: u16) -> [u8; Welcome::LEN] {
    Welcome {
        chosen,
        versions: fault::versions(Side::Old),
        token: secret.parent_token().try_into().expect("a token"),
    }
    .encode()
}

/// Checks the old process's preamble and returns the version it chose.
pub(crate) fn check_welcome(secret: &Secret, bytes: &[u8; Welcome::LEN]) -> Result<u16, Error> {
    const STEP: Step = Step::Hello;
    let welcome = Welcome::decode(bytes)?;
    if !same_token(&welcome.token, secret.parent_token()) {
        return Err(Error::protocol(
            STEP,
            "the process on the handover port did not prove the secret; it is not the process \
             that started this one",
        ));
    }
    let chosen = welcome.chosen;
    let ours = fault::versions(Side::New);
    if chosen == 0 {
        return Err(Error::ProtocolVersion {
            ours,
            theirs: welcome.versions,
        });
    }
    if chosen < ours.0 || chosen > ours.1 {
        return Err(Error::protocol(
            STEP,
            format!("the old process chose version {chosen}, which this process never offered"),
        ));
    }
    Ok(chosen)
}

/// Lower-case hex, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_negotiated_to_the_highest_shared() {
        // A build of an earlier mitosis speaks only version 1.
        assert_eq!(choose_version((1, 1)), Some(1));
        assert_eq!(choose_version((1, 2)), Some(2));
        assert_eq!(choose_version((1, 3)), Some(3));
        assert_eq!(choose_version((1, 7)), Some(3));
        assert_eq!(choose_version((2, 3)), Some(3));
        assert_eq!(choose_version((4, 5)), None);
        assert_eq!(choose_version((0, 0)), None);
    }

    #[test]
    fn welcome_is_checked() {
        let secret = Secret::generate().unwrap();
        assert_eq!(check_welcome(&secret, &welcome(&secret, 1)).unwrap(), 1);
        let other = Secret::generate().unwrap();
        assert!(matches!(
            check_welcome(&secret, &welcome(&other, 1)),
            Err(Error::Protocol { .. })
        ));
        assert!(matches!(
            check_welcome(&secret, &welcome(&secret, 0)),
            Err(Error::ProtocolVersion {
                ours: (1, 3),
                theirs: (1, 3)
            })
        ));
    }
}
