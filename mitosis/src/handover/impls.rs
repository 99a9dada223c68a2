//! `Handover` for std's types: fds, plain data, and containers of either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasher, Hash};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Shapes;
use super::decoder::bounded_capacity;
use super::{Decoder, Encoder, Handover};
use crate::error::Error;
use crate::schema::{Schema, Shape};

macro_rules! fd_types {
    ($($ty:ty),* $(,)?) => {$(
        impl Handover for $ty {
            const SCHEMA: Schema = Schema::new(stringify!($ty), 0);

            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.fd(self.as_fd())
            }

            fn shape(_: &mut Shapes) -> Result<Shape, Error> {
                Ok(Shape::Fd(stringify!($ty).into()))
            }

            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                input.fd().map(<$ty>::from)
            }
        }
    )*};
}

fd_types!(
    OwnedFd,
    File,
    TcpStream,
    TcpListener,
    UdpSocket,
    UnixStream,
    UnixListener,
    UnixDatagram,
);

macro_rules! plain_types {
    ($($ty:ty),* $(,)?) => {$(
        impl Handover for $ty {
            const SCHEMA: Schema = Schema::new(stringify!($ty), 0);

            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                out.value(self)
            }

            fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
                shapes.serde::<Self>()
            }

            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                input.value()
            }
        }
    )*};
}

plain_types!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    std::path::PathBuf,
    std::time::Duration,
    std::net::SocketAddr,
    std::net::IpAddr,
);

impl<T: Handover> Handover for Option<T> {
    const SCHEMA: Schema = Schema::nested("Option", 0, [T::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Option(Box::new(T::shape(shapes)?)))
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        match self {
            None => out.value(&false),
            Some(value) => {
                out.value(&true)?;
                value.encode(out)
            }
        }
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        if input.value::<bool>()? {
            T::decode(input).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl<T: Handover> Handover for Box<T> {
    const SCHEMA: Schema = T::SCHEMA;

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        T::shape(shapes)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        (**self).encode(out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        T::decode(input).map(Box::new)
    }
}

impl<T: Handover> Handover for Vec<T> {
    const SCHEMA: Schema = Schema::nested("Vec", 0, [T::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        Ok(Shape::Seq(Box::new(T::shape(shapes)?)))
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        encode_seq(self.len(), self.iter(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let len = input.len()?;
        let mut items = Vec::with_capacity(bounded_capacity::<T>(len, input));
        for _ in 0..len {
            items.push(T::decode(input)?);
        }
        Ok(items)
    }
}

impl<T: Handover> Handover for VecDeque<T> {
    const SCHEMA: Schema = Schema::nested("VecDeque", 0, [T::SCHEMA]);

    // The same encoding as a `Vec`, so the same shape.
    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        Vec::<T>::shape(shapes)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        encode_seq(self.len(), self.iter(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        Vec::<T>::decode(input).map(VecDeque::from)
    }
}

/// A sequence's encoding, as postcard writes one: the length, then each
/// item.
fn encode_seq<'a, T: Handover + 'a>(
    len: usize,
    mut items: impl Iterator<Item = &'a T>,
    out: &mut Encoder<'a>,
) -> Result<(), Error> {
    out.value(&len)?;
    items.try_for_each(|item| item.encode(out))
}

/// A map's shape: serde keys, `Handover` values.
fn map_shape<K: DeserializeOwned + 'static, V: Handover>(
    shapes: &mut Shapes,
) -> Result<Shape, Error> {
    Ok(Shape::Map(
        Box::new(shapes.serde::<K>()?),
        Box::new(V::shape(shapes)?),
    ))
}

/// A map's encoding, as postcard writes one: the length, then each key
/// (serde) and value (`Handover`) in turn.
fn encode_map<'a, K: Serialize + 'a, V: Handover>(
    len: usize,
    entries: impl Iterator<Item = (&'a K, &'a V)>,
    out: &mut Encoder<'a>,
) -> Result<(), Error> {
    out.value(&len)?;
    for (key, value) in entries {
        out.value(key)?;
        value.encode(out)?;
    }
    Ok(())
}

impl<K, V, H> Handover for HashMap<K, V, H>
where
    K: Serialize + DeserializeOwned + Eq + Hash + 'static,
    V: Handover,
    H: BuildHasher + Default + 'static,
{
    const SCHEMA: Schema = Schema::nested("HashMap", 0, [V::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        map_shape::<K, V>(shapes)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        encode_map(self.len(), self.iter(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let len = input.len()?;
        let mut map =
            HashMap::with_capacity_and_hasher(bounded_capacity::<(K, V)>(len, input), H::default());
        for _ in 0..len {
            let key = input.value()?;
            map.insert(key, V::decode(input)?);
        }
        Ok(map)
    }
}

impl<K, V> Handover for BTreeMap<K, V>
where
    K: Serialize + DeserializeOwned + Ord + 'static,
    V: Handover,
{
    const SCHEMA: Schema = Schema::nested("BTreeMap", 0, [V::SCHEMA]);

    fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
        map_shape::<K, V>(shapes)
    }

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
        encode_map(self.len(), self.iter(), out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
        let len = input.len()?;
        let mut map = BTreeMap::new();
        for _ in 0..len {
            let key = input.value()?;
            map.insert(key, V::decode(input)?);
        }
        Ok(map)
    }
}

macro_rules! tuples {
    ($(($($name:ident),+))*) => {$(
        impl<$($name: Handover),+> Handover for ($($name,)+) {
            const SCHEMA: Schema = Schema::nested("tuple", 0, [$($name::SCHEMA),+]);

            fn shape(shapes: &mut Shapes) -> Result<Shape, Error> {
                Ok(Shape::Tuple(vec![$($name::shape(shapes)?),+]))
            }

            #[allow(non_snake_case)]
            fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), Error> {
                let ($($name,)+) = self;
                $($name.encode(out)?;)+
                Ok(())
            }

            fn decode(input: &mut Decoder<'_>) -> Result<Self, Error> {
                Ok(($($name::decode(input)?,)+))
            }
        }
    )*};
}

tuples! {
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::tests::{inode, round_trip};
    use std::os::fd::AsRawFd;

    #[test]
    fn fds_in_containers_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let streams: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
            .collect();
        let mut named = HashMap::new();
        named.insert("irc".to_string(), TcpListener::bind("127.0.0.1:0").unwrap());
        let state = (
            streams,
            named,
            Some(Box::new(File::open("/proc/self/exe").unwrap())),
            VecDeque::from([UdpSocket::bind("127.0.0.1:0").unwrap()]),
            String::from("nick"),
        );
        let back = round_trip(&state).unwrap();
        let inodes = |s: &Vec<TcpStream>| s.iter().map(inode).collect::<Vec<_>>();
        assert_eq!(inodes(&back.0), inodes(&state.0));
        assert_eq!(inode(&back.1["irc"]), inode(&state.1["irc"]));
        assert_eq!(
            inode(back.2.as_deref().unwrap()),
            inode(state.2.as_deref().unwrap())
        );
        assert_eq!(inode(&back.3[0]), inode(&state.3[0]));
        assert_eq!(back.4, "nick");
        // Duplicates, not the same fd numbers: the old process keeps its own.
        assert_ne!(back.0[0].as_raw_fd(), state.0[0].as_raw_fd());
    }
    #[test]
    fn fingerprints_follow_the_contents() {
        assert_ne!(
            <Vec<TcpStream>>::SCHEMA.fingerprint,
            <Vec<File>>::SCHEMA.fingerprint
        );
        assert_ne!(
            <(u8, File)>::SCHEMA.fingerprint,
            <(File, u8)>::SCHEMA.fingerprint
        );
    }
}
