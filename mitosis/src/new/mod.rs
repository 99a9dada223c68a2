//! The new process's side: [`init`] and [`arrive`] find the flag and read
//! the contract; `take_over` walks PROTOCOL.md's steps 2 to 9 in order.

mod take_over;

use std::fmt;
use std::path::PathBuf;

use crate::args;
use crate::env;
use crate::env::start_path;
use crate::error::Error;
use crate::fd_channel;
use crate::handover::Handover;
use crate::supervisor;
use crate::wire::Reason;
use take_over::Session;

/// Takes over from the old process, if this process was started by
/// [`split`](crate::split) or [`prepare`](crate::prepare); call it early in
/// `main`, before starting threads.
///
/// - Without a `--mitosis` flag it returns `Ok(None)` at once: a fresh start,
///   with no network activity at all.
/// - With the flag it connects to the old process, learns and proves the
///   handover secret, receives the state and its fds, commits, and returns
///   `Ok(Some(state))` once the old process has acknowledged the commit
///   and this process has answered TAKEN. From then on this process owns
///   the state's connections; the old one points its copies at `/dev/null`
///   as TAKEN arrives, and never touches them again.
///
/// It is [`arrive`] followed at once by [`Arrival::commit`]. A program with
/// a slow start-up, or with checks to run on the state before it commits,
/// uses those two instead.
///
/// On `Err`, exit: the old process still has its state and carries on, and
/// it stops this process if it does not exit by itself.
///
/// ```no_run
/// # #[derive(Default)] struct State { generation: u64 }
/// # impl mitosis::Handover for State {
/// #     const SCHEMA: mitosis::Schema = mitosis::Schema::new("State", 1);
/// #     fn encode<'a>(&'a self, out: &mut mitosis::Encoder<'a>) -> Result<(), mitosis::Error> { out.value(&self.generation) }
/// #     fn decode(input: &mut mitosis::Decoder<'_>) -> Result<Self, mitosis::Error> { Ok(State { generation: input.value()? }) }
/// # }
/// fn main() -> Result<(), mitosis::Error> {
///     let mut state = match mitosis::init::<State>()? {
///         Some(state) => state,         // handed over: don't reconnect
///         None => State::default(),     // fresh start: connect, listen, ...
///     };
///     state.generation += 1;
///     Ok(())
/// }
/// ```
pub fn init<S: Handover>() -> Result<Option<S>, Error> {
    match arrive::<S>()? {
        Some(arrival) => arrival.commit().map(Some),
        None => Ok(None),
    }
}

/// The first half of [`init`]: if this process was started by an upgrade,
/// connects to the old process, proves the handover secret and agrees on
/// the state's schema, and returns the [`Arrival`] without asking for the
/// state yet. The old process goes on serving until
/// [`Arrival::receive`] (or [`Arrival::commit`]) asks for it, so that this
/// process's own start-up (configuration, caches, a database connection)
/// is not part of the pause. Without a `--mitosis` flag it returns
/// `Ok(None)` at once.
///
/// Call it early in `main`, before starting threads.
///
/// ```no_run
/// # #[derive(Default)] struct State { generation: u64 }
/// # impl mitosis::Handover for State {
/// #     const SCHEMA: mitosis::Schema = mitosis::Schema::new("State", 1);
/// #     fn encode<'a>(&'a self, out: &mut mitosis::Encoder<'a>) -> Result<(), mitosis::Error> { out.value(&self.generation) }
/// #     fn decode(input: &mut mitosis::Decoder<'_>) -> Result<Self, mitosis::Error> { Ok(State { generation: input.value()? }) }
/// # }
/// # fn load_config() -> Result<(), mitosis::Error> { Ok(()) }
/// fn main() -> Result<(), mitosis::Error> {
///     let arrival = mitosis::arrive::<State>()?;
///     // Slow start-up here: the old process still serves.
///     let config = load_config()?;
///     let mut state = match arrival {
///         Some(mut arrival) => {
///             // The pause begins: the old process hands over.
///             let state = arrival.receive()?;
///             if state.generation > 1_000_000 {
///                 // Give up: the old process gets everything back.
///                 arrival.abort("implausible generation");
///                 std::process::exit(1);
///             }
///             arrival.commit()?
///         }
///         None => State::default(),
///     };
///     state.generation += 1;
///     Ok(())
/// }
/// ```
pub fn arrive<S: Handover>() -> Result<Option<Arrival<S>>, Error> {
    // Before anything else can change the working directory.
    let _ = start_path();
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let Some(flag) = args::find(&args)? else {
        supervisor::first_start()?;
        return Ok(None);
    };
    let rest = flag.rest.as_ref();
    supervisor::arriving(rest.map(|rest| &rest.trigger_signals[..]));
    let fd_socket = env::take(rest.map(|rest| rest.fd_socket.as_path()))?;
    log::debug!(
        "mitosis: taking over from the process on port {}",
        flag.port
    );
    let session = take_over::arrive::<S>(flag.port, &fd_socket)
        .map_err(in_new_process)
        .inspect_err(|_| fd_channel::remove_if_left_behind(&fd_socket))?;
    Ok(Some(Arrival {
        session: Some(session),
        state: None,
        fd_socket,
    }))
}

/// A handover that has reached the new process: the secret is proven and
/// the schema agreed, and the old process still serves. See [`arrive`].
///
/// Dropping it before [`commit`](Arrival::commit) gives up: the old process
/// keeps its state, with every connection, and serves on.
#[must_use = "dropping an Arrival gives the handover up"]
pub struct Arrival<S> {
    /// `None` once the handover has failed here.
    session: Option<Session>,
    state: Option<S>,
    fd_socket: PathBuf,
}

impl<S: Handover> Arrival<S> {
    /// Asks for the state, and returns it once it has arrived and decoded,
    /// for the program to check or adjust before it commits. The old
    /// process pauses from now until [`commit`](Arrival::commit); the
    /// transfer timeout of the old process's
    /// [`SplitOptions`](crate::SplitOptions) bounds that pause for both.
    ///
    /// Until the commit the old process owns every connection in the
    /// state: look at them, but do not read from or write to them. Asked
    /// again, it returns the same state.
    ///
    /// ```no_run
    /// # let arrival: mitosis::Arrival<u64> = todo!();
    /// let mut arrival = arrival;
    /// let state: &mut u64 = arrival.receive()?;
    /// *state += 1;
    /// let state = arrival.commit()?;
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn receive(&mut self) -> Result<&mut S, Error> {
        if self.state.is_none() {
            let session = self.session.as_mut().ok_or(Error::AlreadyFailed)?;
            match session.receive::<S>() {
                Ok(state) => self.state = Some(state),
                Err(error) => {
                    self.fail();
                    return Err(in_new_process(error));
                }
            }
        }
        Ok(self.state.as_mut().expect("received"))
    }

    /// Commits: receives the state if [`receive`](Arrival::receive) has
    /// not, tells the old process, waits for its acknowledgement, and
    /// returns the state once this process owns it and every connection in
    /// it. On `Err`, exit: the old process has its state back.
    ///
    /// ```no_run
    /// # let arrival: mitosis::Arrival<u64> = todo!();
    /// let state = arrival.commit()?;
    /// # Ok::<(), mitosis::Error>(())
    /// ```
    pub fn commit(mut self) -> Result<S, Error> {
        self.receive()?;
        let session = self.session.as_mut().ok_or(Error::AlreadyFailed)?;
        if let Err(error) = session.commit() {
            self.fail();
            return Err(in_new_process(error));
        }
        if supervisor::supervised() {
            session.wait_until_let_go();
            supervisor::took_over();
        }
        Ok(self.state.take().expect("received"))
    }

    /// Gives the handover up and tells the old process why: it keeps its
    /// state and every connection, serves on, and reports an
    /// [`Error::Aborted`] with `reason`. Then exit.
    ///
    /// ```no_run
    /// # let arrival: mitosis::Arrival<u64> = todo!();
    /// arrival.abort("the configuration on disk does not parse");
    /// ```
    pub fn abort(mut self, reason: impl fmt::Display) {
        if let Some(session) = &self.session {
            session.abort(reason.to_string(), Reason::Protocol);
        }
        self.fail();
    }

    fn fail(&mut self) {
        self.session = None;
        // This process's copies of the state's fds; the old process has
        // its own.
        self.state = None;
        fd_channel::remove_if_left_behind(&self.fd_socket);
    }
}

impl<S> fmt::Debug for Arrival<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arrival")
            .field("received", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

/// The deadline is the same on both sides; here it is this process that
/// waited in vain.
fn in_new_process(error: Error) -> Error {
    match error {
        Error::Timeout { step, after, .. } => Error::Timeout {
            step,
            after,
            in_new_process: true,
        },
        error => error,
    }
}
