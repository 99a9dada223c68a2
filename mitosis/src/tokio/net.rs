//! `Handover` for tokio's socket types.
//!
//! A tokio socket crosses as its fd, exactly as std's socket of the same
//! kind does, with the same shape: a state may change a field from
//! `std::net::TcpStream` to `tokio::net::TcpStream` (or back) from one build
//! to the next, and the two builds still agree on its fingerprint.
//!
//! Decoding makes the fd non-blocking (tokio ≥ 1.44 panics in debug builds
//! on a blocking socket in `from_std`) and registers it with a reactor: the
//! current runtime's when there is one, otherwise mitosis's background
//! reactor (see the `Handover` impls' docs).

use std::io;
use std::os::fd::OwnedFd;

use super::reactor;
use crate::error::Error;
use crate::handover::{Decoder, Encoder, Handover, Shapes};
use crate::schema::{Schema, Shape};

mod sealed {
    pub trait Sealed {}
}

/// A tokio stream type that mitosis can build around a temporary socket
/// while decoding: tokio's `TcpStream` and `UnixStream`, and tokio's
/// `BufWriter` over either.
///
/// tokio's [`BufReader`](tokio::io::BufReader) and
/// [`FramedRead`](tokio_util::codec::FramedRead) cannot be given bytes, so
/// decoding one that had unread bytes lets a fresh one read them from a
/// local socket of this type, then swaps the real stream in. The trait is
/// sealed: it names the types that works for.
///
/// ```
/// fn needs_stand_in<T: mitosis::tokio::StandIn>() {}
/// needs_stand_in::<tokio::net::TcpStream>();
/// needs_stand_in::<tokio::io::BufWriter<tokio::net::UnixStream>>();
/// ```
pub trait StandIn: Handover + Send + Unpin + sealed::Sealed {
    /// Builds a value over `fd`, a connected Unix stream socket, registered
    /// with the reactor whose context is entered.
    #[doc(hidden)]
    fn stand_in(fd: OwnedFd) -> io::Result<Self>;
}

impl<S: StandIn + tokio::io::AsyncWrite> sealed::Sealed for tokio::io::BufWriter<S> {}

impl<S: StandIn + tokio::io::AsyncWrite> StandIn for tokio::io::BufWriter<S> {
    fn stand_in(fd: OwnedFd) -> io::Result<Self> {
        S::stand_in(fd).map(tokio::io::BufWriter::new)
    }
}

macro_rules! sockets {
    ($($name:literal: $tokio:ty => $std:ty,)*) => {$(
        #[doc = concat!(
            "A tokio `", $name, "` crosses as its fd, with the same fingerprint as std's `",
            $name, "`.\n\n",
            "Decoding makes the fd non-blocking and registers it with the current tokio \
             runtime's reactor. With no runtime current (a state decoded before the runtime \
             is built), it goes to mitosis's background reactor instead: a current-thread \
             runtime that mitosis starts once, on a thread of its own named `mitosis-reactor`, \
             and that runs until the process exits. The socket then works in the program's \
             runtime as usual, but each readiness event reaches its task through that thread: \
             one more thread, and a cross-thread wake-up per event. Decode inside the runtime \
             where the state will be used when you can. A current runtime built without \
             `enable_io` is an [`Error::Resume`](crate::Error::Resume), not a panic.\n\n",
            "```\n",
            "fn needs_handover<T: mitosis::Handover>() {}\n",
            "needs_handover::<", stringify!($tokio), ">();\n",
            "```"
        )]
        impl Handover for $tokio {
            const SCHEMA: Schema = Schema::new($name, 0);

            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.fd(std::os::fd::AsFd::as_fd(self))
            }

            fn shape(_: &mut Shapes) -> Result<Shape, Error> {
                Ok(Shape::Fd($name.into()))
            }

            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                let fd = input.fd()?;
                reactor::register(concat!("tokio ", $name), || {
                    let socket = <$std>::from(fd);
                    socket.set_nonblocking(true)?;
                    <$tokio>::from_std(socket)
                })
            }
        }
    )*};
}

sockets! {
    "TcpStream": tokio::net::TcpStream => std::net::TcpStream,
    "TcpListener": tokio::net::TcpListener => std::net::TcpListener,
    "UdpSocket": tokio::net::UdpSocket => std::net::UdpSocket,
    "UnixStream": tokio::net::UnixStream => std::os::unix::net::UnixStream,
    "UnixListener": tokio::net::UnixListener => std::os::unix::net::UnixListener,
    "UnixDatagram": tokio::net::UnixDatagram => std::os::unix::net::UnixDatagram,
}

macro_rules! stand_ins {
    ($($tokio:ty => $std:ty,)*) => {$(
        impl sealed::Sealed for $tokio {}

        impl StandIn for $tokio {
            fn stand_in(fd: OwnedFd) -> io::Result<Self> {
                let socket = <$std>::from(fd);
                socket.set_nonblocking(true)?;
                <$tokio>::from_std(socket)
            }
        }
    )*};
}

stand_ins! {
    tokio::net::TcpStream => std::net::TcpStream,
    tokio::net::UnixStream => std::os::unix::net::UnixStream,
}
