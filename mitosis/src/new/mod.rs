//! The new process's side: [`init`] finds the flag and reads the contract;
//! `take_over` walks PROTOCOL.md's steps 2 to 8 in order.

mod take_over;

use crate::args;
use crate::env;
use crate::error::Error;
use crate::fd_channel;
use crate::handover::Handover;
use crate::old::start_path;
use take_over::take_over;

/// Takes over from the old process, if this process was started by
/// [`split`](crate::split); call it early in `main`, before starting
/// threads.
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
    // Before anything else can change the working directory.
    let _ = start_path();
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let Some(flag) = args::find(&args)? else {
        return Ok(None);
    };
    let fd_socket = env::take()?;
    log::debug!(
        "mitosis: taking over from the process on port {}",
        flag.port
    );
    take_over(flag.port, &fd_socket)
        .map_err(|error| match error {
            // The deadline is the same on both sides; here it is this
            // process that waited in vain.
            Error::Timeout { step, after, .. } => Error::Timeout {
                step,
                after,
                in_new_process: true,
            },
            error => error,
        })
        .inspect_err(|_| fd_channel::remove_if_left_behind(&fd_socket))
        .map(Some)
}
