//! Fault injection, for the tests only: with the cargo feature
//! `test-hooks`, one side of a handover dies (`SIGKILL`s itself) or
//! stalls at a chosen point of PROTOCOL.md, so that the tests can check who
//! owns the connections afterwards, whatever fails and whenever it fails.
//!
//! The fault is named in the environment variable `MITOSIS_FAULT` as
//! `<side>:<point>:<action>`, and a new process inherits it, so one variable
//! reaches both sides:
//!
//! - side: `old` or `new`;
//! - point: `spawned`, `hello`, `offer`, `ready`, `state@<bytes>`, `fds@<batch>`,
//!   `commit`, `ack`, `taken` or `done` (see [`Point`]);
//! - action: `kill`, or `stall=<milliseconds>`.
//!
//! A second variable, `MITOSIS_MAX_VERSION=<side>:<n>`, makes one side speak
//! protocol versions up to `n` only, as a build of an earlier mitosis does
//! (see [`versions`]).
//!
//! Without the feature, every hook is an empty inline function and
//! [`Tripwire`] has no fields: nothing is read, counted or checked.

/// Which process a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Old,
    New,
}

/// Where a fault strikes: just after the named event, on its side.
///
/// | point | old process | new process |
/// | --- | --- | --- |
/// | `spawned` | started the new process (step 1) | `init` found the flag |
/// | `hello` | read HELLO (step 3) | sent HELLO |
/// | `offer` | read OFFER (step 4) | sent OFFER |
/// | `ready` | read READY (step 5) | sent READY |
/// | `state@N` | sent N bytes of step 6 | received N bytes of step 6 |
/// | `fds@K` | sent fd batch K-1 (step 7) | received fd batch K-1 |
/// | `commit` | read COMMIT (step 8) | decoded the state |
/// | `ack` | sent ACK (step 9) | sent COMMIT |
/// | `taken` | read TAKEN | read ACK |
/// | `done` | closed its copies | sent TAKEN |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    Spawned,
    Hello,
    Offer,
    Ready,
    // Named only by the active module's parser; the inert tripwire never
    // asks for it.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    State(u64),
    FdBatch(u32),
    Commit,
    Ack,
    Taken,
    Done,
}

#[cfg(feature = "test-hooks")]
pub(crate) use active::{Tripwire, at, versions};

#[cfg(not(feature = "test-hooks"))]
pub(crate) use inert::{Tripwire, at, versions};

#[cfg(not(feature = "test-hooks"))]
mod inert {
    use super::{Point, Side};

    #[inline(always)]
    pub(crate) fn at(_side: Side, _point: Point) {}

    /// The protocol versions `side` speaks: this build's.
    #[inline(always)]
    pub(crate) fn versions(_side: Side) -> (u16, u16) {
        crate::wire::VERSIONS
    }

    /// Counts nothing without the feature.
    #[derive(Debug, Default)]
    pub(crate) struct Tripwire;

    impl Tripwire {
        #[inline(always)]
        pub(crate) fn new(_side: Side) -> Tripwire {
            Tripwire
        }

        /// How many of the next `len` bytes of step 6 may pass before the
        /// fault strikes: all of them.
        #[inline(always)]
        pub(crate) fn allow(&self, len: usize) -> usize {
            len
        }

        #[inline(always)]
        pub(crate) fn passed(&self, _len: usize) {}
    }
}

#[cfg(feature = "test-hooks")]
mod active {
    use std::cell::Cell;
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::{Point, Side};

    /// The variable that names the fault.
    const VAR: &str = "MITOSIS_FAULT";

    #[derive(Clone, Copy, Debug)]
    enum Action {
        Kill,
        Stall(Duration),
    }

    #[derive(Clone, Copy, Debug)]
    struct Fault {
        side: Side,
        point: Point,
        action: Action,
    }

    fn fault() -> Option<Fault> {
        static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
        *FAULT.get_or_init(|| {
            let text = std::env::var(VAR).ok()?;
            let fault = parse(&text);
            if fault.is_none() {
                log::error!("mitosis: ignoring malformed {VAR}={text:?}");
            }
            fault
        })
    }

    fn parse(text: &str) -> Option<Fault> {
        let mut parts = text.split(':');
        let side = match parts.next()? {
            "old" => Side::Old,
            "new" => Side::New,
            _ => return None,
        };
        let point = parts.next()?;
        let point = match point.split_once('@') {
            Some(("state", bytes)) => Point::State(bytes.parse().ok()?),
            Some(("fds", batch)) => Point::FdBatch(batch.parse().ok()?),
            Some(_) => return None,
            None => match point {
                "spawned" => Point::Spawned,
                "hello" => Point::Hello,
                "offer" => Point::Offer,
                "ready" => Point::Ready,
                "commit" => Point::Commit,
                "ack" => Point::Ack,
                "taken" => Point::Taken,
                "done" => Point::Done,
                _ => return None,
            },
        };
        let action = match parts.next()? {
            "kill" => Action::Kill,
            stall => Action::Stall(Duration::from_millis(
                stall.strip_prefix("stall=")?.parse().ok()?,
            )),
        };
        parts.next().is_none().then_some(Fault {
            side,
            point,
            action,
        })
    }

    /// The protocol versions `side` speaks: this build's, or up to `n`
    /// only with `MITOSIS_MAX_VERSION=<side>:<n>`.
    pub(crate) fn versions(side: Side) -> (u16, u16) {
        const VAR: &str = "MITOSIS_MAX_VERSION";
        static CAP: OnceLock<Option<(Side, u16)>> = OnceLock::new();
        let cap = *CAP.get_or_init(|| {
            let text = std::env::var(VAR).ok()?;
            let cap = match text.split_once(':') {
                Some(("old", max)) => max.parse().ok().map(|max| (Side::Old, max)),
                Some(("new", max)) => max.parse().ok().map(|max| (Side::New, max)),
                _ => None,
            };
            if cap.is_none() {
                log::error!("mitosis: ignoring malformed {VAR}={text:?}");
            }
            cap
        });
        let (low, high) = crate::wire::VERSIONS;
        match cap {
            Some((capped, max)) if capped == side => (low, high.min(max)),
            _ => (low, high),
        }
    }

    /// Strikes if the fault is `side` at `point`.
    pub(crate) fn at(side: Side, point: Point) {
        if let Some(fault) = fault()
            && fault.side == side
            && fault.point == point
        {
            strike(fault);
        }
    }

    fn strike(fault: Fault) {
        log::warn!("mitosis: injected fault: {fault:?}");
        match fault.action {
            Action::Kill => {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
                // SIGKILL to oneself is delivered before kill returns; this
                // is never reached.
                std::process::abort();
            }
            Action::Stall(duration) => std::thread::sleep(duration),
        }
    }

    /// Counts the bytes of step 6 on one side, so that a `state@N` fault
    /// strikes after exactly N bytes, wherever that falls in a frame.
    #[derive(Debug)]
    pub(crate) struct Tripwire {
        side: Side,
        passed: Cell<u64>,
        struck: Cell<bool>,
    }

    impl Tripwire {
        pub(crate) fn new(side: Side) -> Tripwire {
            Tripwire {
                side,
                passed: Cell::new(0),
                struck: Cell::new(false),
            }
        }

        /// The offset this side's fault strikes at, until it has struck.
        fn armed(&self) -> Option<(Fault, u64)> {
            match fault()? {
                fault @ Fault {
                    side,
                    point: Point::State(at),
                    ..
                } if side == self.side && !self.struck.get() => Some((fault, at)),
                _ => None,
            }
        }

        /// How many of the next `len` bytes may pass before the fault
        /// strikes. Move that many, call [`passed`](Self::passed) (which
        /// strikes), then move the rest.
        pub(crate) fn allow(&self, len: usize) -> usize {
            match self.armed() {
                Some((_, at)) => len.min(
                    usize::try_from(at.saturating_sub(self.passed.get())).unwrap_or(usize::MAX),
                ),
                None => len,
            }
        }

        /// Records that `len` bytes passed, and strikes once the count
        /// reaches the fault's offset.
        pub(crate) fn passed(&self, len: usize) {
            self.passed.set(self.passed.get() + len as u64);
            if let Some((fault, at)) = self.armed()
                && self.passed.get() >= at
            {
                self.struck.set(true);
                strike(fault);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_every_point_and_action() {
            let fault = parse("old:state@70000:stall=1500").unwrap();
            assert_eq!(fault.side, Side::Old);
            assert_eq!(fault.point, Point::State(70000));
            assert!(matches!(fault.action, Action::Stall(d) if d == Duration::from_millis(1500)));
            let fault = parse("new:fds@1:kill").unwrap();
            assert_eq!((fault.side, fault.point), (Side::New, Point::FdBatch(1)));
            for (name, point) in [
                ("spawned", Point::Spawned),
                ("hello", Point::Hello),
                ("offer", Point::Offer),
                ("commit", Point::Commit),
                ("ack", Point::Ack),
                ("taken", Point::Taken),
                ("done", Point::Done),
            ] {
                assert_eq!(parse(&format!("new:{name}:kill")).unwrap().point, point);
            }
            for bad in [
                "",
                "old",
                "old:hello",
                "mid:hello:kill",
                "old:hello:kill:x",
                "old:state@x:kill",
                "old:hello:stall=x",
            ] {
                assert!(parse(bad).is_none(), "{bad:?} parsed");
            }
        }
    }
}
