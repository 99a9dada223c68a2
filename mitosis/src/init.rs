//! The new process's side: [`init`] finds the flag, connects back, and takes
//! the state over. [`take_over`] walks PROTOCOL.md's steps in order.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::args;
use crate::error::{Error, Step};
use crate::fault::{self, Point, Side};
use crate::fd_channel;
use crate::frame::{Conn, Deadline, Fields, Kind, Payload, Reason, VERSIONS, WELCOME_LEN};
use crate::handover::{Decoder, Handover};
use crate::handshake::{self, Secret};
use crate::spawn::{
    FD_SOCKET_VAR, Limits, MAX_FDS_VAR, MAX_STATE_BYTES_VAR, SECRET_VAR, TIMEOUT_VAR, start_path,
};
use crate::split::{DEFAULT_MAX_FDS, DEFAULT_MAX_STATE_BYTES};

/// Takes over from the old process, if this process was started by
/// [`split`](crate::split); call it early in `main`, before starting
/// threads.
///
/// - Without a `--mitosis` flag it returns `Ok(None)` at once: a fresh start,
///   with no network activity at all.
/// - With the flag it connects to the old process, proves the handover
///   secret, receives the state and its fds, commits, and returns
///   `Ok(Some(state))`. From then on this process owns the state's
///   connections; the old one closes its copies right after acknowledging
///   the commit, and never touches them again.
///
/// On `Err`, exit: the old process still has its state and carries on, and
/// it stops this process if it does not exit by itself.
///
/// ```no_run
/// # #[derive(Default)] struct State { generation: u64 }
/// # impl mitosis::Handover for State {
/// #     const SCHEMA: mitosis::Schema = mitosis::Schema::new("State", 1);
/// #     fn encode<'a>(&'a self, out: &mut mitosis::Encoder<'a>) -> Result<(), mitosis::Error> { out.serde(&self.generation) }
/// #     fn decode(input: &mut mitosis::Decoder<'_>) -> Result<Self, mitosis::Error> { Ok(State { generation: input.serde()? }) }
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
    let handover = Environment::take()?;
    log::debug!(
        "mitosis: taking over from the process on port {}",
        flag.port
    );
    let fd_socket = handover.fd_socket.clone();
    take_over(flag.port, handover)
        .inspect_err(|_| fd_channel::remove_if_left_behind(&fd_socket))
        .map(Some)
}

/// What the old process put in this process's environment.
struct Environment {
    secret: Secret,
    fd_socket: PathBuf,
    timeout: Duration,
    limits: Limits,
}

impl Environment {
    /// Reads the handover's variables and removes them, so that they reach
    /// no process this one starts.
    fn take() -> Result<Environment, Error> {
        let secret = std::env::var(SECRET_VAR).ok();
        let fd_socket = std::env::var_os(FD_SOCKET_VAR);
        let timeout = std::env::var(TIMEOUT_VAR).ok();
        let limit = |var: &'static str, default: u64| match std::env::var(var) {
            // Absent: an old process that predates limits; the defaults.
            Err(std::env::VarError::NotPresent) => Ok(default),
            Ok(value) => value.parse().map_err(|_| Error::MissingEnvironment { var }),
            Err(_) => Err(Error::MissingEnvironment { var }),
        };
        let state_bytes = limit(MAX_STATE_BYTES_VAR, DEFAULT_MAX_STATE_BYTES);
        let fds = limit(MAX_FDS_VAR, DEFAULT_MAX_FDS);
        remove_handover_variables();
        Ok(Environment {
            secret: secret
                .as_deref()
                .and_then(Secret::from_hex)
                .ok_or(Error::MissingEnvironment { var: SECRET_VAR })?,
            fd_socket: fd_socket
                .map(PathBuf::from)
                .ok_or(Error::MissingEnvironment { var: FD_SOCKET_VAR })?,
            timeout: timeout
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis)
                .filter(|timeout| !timeout.is_zero())
                .ok_or(Error::MissingEnvironment { var: TIMEOUT_VAR })?,
            limits: Limits {
                state_bytes: state_bytes?,
                fds: fds?,
            },
        })
    }
}

fn remove_handover_variables() {
    if !single_threaded() {
        log::warn!(
            "mitosis: init was called after other threads started, so the handover's variables \
             stay in the environment; call mitosis::init first thing in main"
        );
        return;
    }
    for var in [
        SECRET_VAR,
        FD_SOCKET_VAR,
        TIMEOUT_VAR,
        MAX_STATE_BYTES_VAR,
        MAX_FDS_VAR,
    ] {
        // SAFETY: `remove_var` is only unsound when another thread reads or
        // writes the environment at the same time; this process has exactly
        // one thread, checked just above, and it is this one.
        unsafe { std::env::remove_var(var) };
    }
}

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count() == 1)
        .unwrap_or(false)
}

/// Every step of a handover, from the new process's side.
fn take_over<S: Handover>(port: u16, env: Environment) -> Result<S, Error> {
    fault::at(Side::New, Point::Spawned);
    let deadline = Deadline::after(env.timeout);
    let accepted = S::accepted();

    // Step 2: connect back over loopback.
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, deadline.remaining(Step::Connect)?)
        .map_err(deadline.io_error(Step::Connect))?;
    stream.set_nodelay(true).map_err(Error::io(Step::Connect))?;
    let mut conn = Conn::new(stream, deadline, Side::New);

    // Step 3: prove the secret. Step 4's OFFER follows at once, without
    // waiting for WELCOME: this process speaks one protocol version, so it
    // knows the OFFER's format already, and the round trip is saved
    // (PROTOCOL.md, step 4). The fd channel is connected first: the old
    // process may now run ahead into step 5, and if it dies there, this
    // process must learn that from the state's frames, not from a refused
    // fd channel.
    const _: () = assert!(
        VERSIONS.0 == VERSIONS.1,
        "with a range of versions, OFFER must wait for WELCOME's choice"
    );
    let fd_channel: OwnedFd =
        fd_channel::connect_to(&env.fd_socket).map_err(Error::io(Step::Offer))?;
    let burst = conn.cork();
    conn.write_all(Step::Hello, &handshake::hello(&env.secret))?;
    fault::at(Side::New, Point::Hello);
    conn.write_frame(Step::Offer, Kind::Offer, &handshake::offer(&accepted))?;
    drop(burst);
    fault::at(Side::New, Point::Offer);
    // Then check that the old process proves the secret too, and learn the
    // protocol version.
    let mut welcome = [0u8; WELCOME_LEN];
    conn.read_exact(Step::Hello, &mut welcome)?;
    handshake::check_welcome(&env.secret, &welcome)?;

    let result = receive::<S>(&mut conn, &env, &accepted, fd_channel, &deadline);
    let state = match result {
        Ok(state) => state,
        Err(error) => {
            if !matches!(error, Error::PeerGone { .. } | Error::SchemaMismatch { .. }) {
                // Best effort: tell the old process why, so that its error
                // says more than "the new process went away".
                let abort = Payload::default()
                    .u8(Reason::of(&error) as u8)
                    .str(&error.to_string())
                    .bytes();
                let _ = conn.write_frame(Step::Commit, Kind::Abort, &abort);
            }
            return Err(error);
        }
    };

    // Step 7 (end): the state is complete; commit.
    fault::at(Side::New, Point::Commit);
    conn.write_frame(Step::Commit, Kind::Commit, &[])?;
    fault::at(Side::New, Point::Ack);

    // Step 8: wait for the old process's decision, for as long as it lives:
    // after COMMIT, only the old process may call the handover off, and it
    // kills this process before it does.
    conn.drop_deadline(Step::Ack)?;
    match conn.read_frame(Step::Ack, &[Kind::Ack]) {
        Ok(_) => {}
        // The old process never closes the connection after a COMMIT
        // without acknowledging it, unless it is gone; then nobody else
        // owns the connections, so this process takes them.
        Err(Error::PeerGone { .. }) => log::warn!(
            "mitosis: the old process went away after the commit, before acknowledging it; \
             taking over"
        ),
        Err(error) => return Err(error),
    }
    fault::at(Side::New, Point::Taken);
    // Ownership passes with this frame. If the old process is gone by now,
    // it cannot read it, and the connections are this process's anyway.
    if let Err(error) = conn.write_frame(Step::Ack, Kind::Taken, &[]) {
        log::debug!("mitosis: could not send TAKEN ({error}); the old process is gone");
    }
    fault::at(Side::New, Point::Done);
    log::debug!("mitosis: step 8: took over");
    Ok(state)
}

/// Steps 4 to 7: the schema, the state, the fds, and decoding.
fn receive<S: Handover>(
    conn: &mut Conn,
    env: &Environment,
    accepted: &[crate::Schema],
    fd_channel: OwnedFd,
    deadline: &Deadline,
) -> Result<S, Error> {
    // Step 4: the old process sends its state only if it matches one of the
    // offered schemas.
    let (kind, payload) = conn.read_frame(Step::Offer, &[Kind::State, Kind::Reject])?;
    let mut fields = Fields::new(Step::Offer, kind, &payload);
    if kind == Kind::Reject {
        let _reason = fields.u8()?;
        let sent = fields.schema()?;
        return Err(Error::SchemaMismatch {
            sent,
            accepted: accepted.iter().copied().map(Into::into).collect(),
        });
    }
    let sent = fields.schema()?;
    fields.end()?;
    if !accepted
        .iter()
        .any(|schema| schema.fingerprint == sent.fingerprint)
    {
        return Err(Error::protocol(
            Step::Offer,
            format!("the old process sent schema {sent}, which this process did not offer"),
        ));
    }

    // Step 5: the state's bytes, up to the END frame.
    let state = receive_state(conn, env.limits)?;

    // Step 6: the fds.
    let fds = fd_channel::recv_fds(fd_channel.as_fd(), state.fd_count, deadline)?;

    // Step 7: decode, migrating from an older schema if that is what came;
    // every byte, every out-of-line buffer and every fd must be used.
    Decoder::new(&state.stream, state.out_of_line, fds).decode_from::<S>(sent.fingerprint)
}

/// What step 5 brings.
struct ReceivedState {
    stream: Vec<u8>,
    out_of_line: Vec<Vec<u8>>,
    fd_count: u32,
}

/// Step 5: DATA frames for the stream, BYTES_START and BYTES frames for each
/// out-of-line buffer (read straight into its own `Vec`), then END, which
/// must agree with what arrived. The whole state is bounded by the
/// handover's limits, checked before anything is read or allocated. A
/// REJECT instead means the old process found its state over a limit.
fn receive_state(conn: &mut Conn, limits: Limits) -> Result<ReceivedState, Error> {
    const STEP: Step = Step::State;
    let mut received = ReceivedState {
        stream: Vec::new(),
        out_of_line: Vec::new(),
        fd_count: 0,
    };
    let mut total: u64 = 0;
    let mut admit = |len: u64| {
        total += len;
        if total > limits.state_bytes {
            return Err(Error::LimitExceeded {
                step: STEP,
                what: "state bytes",
                found: total,
                max: limits.state_bytes,
            });
        }
        Ok(())
    };
    loop {
        let (kind, len) = conn.read_header(
            STEP,
            &[Kind::Data, Kind::BytesStart, Kind::End, Kind::Reject],
        )?;
        match kind {
            Kind::Reject => {
                let mut reject = vec![0; len as usize];
                conn.read_exact(STEP, &mut reject)?;
                let mut fields = Fields::new(STEP, Kind::Reject, &reject);
                let _reason = fields.u8()?;
                let _schema = fields.schema()?;
                let reason = fields.str()?;
                fields.end()?;
                return Err(Error::Aborted { step: STEP, reason });
            }
            Kind::Data => {
                admit(len.into())?;
                conn.read_append(STEP, &mut received.stream, len)?;
            }
            Kind::BytesStart => {
                let mut start = vec![0; len as usize];
                conn.read_exact(STEP, &mut start)?;
                let mut fields = Fields::new(STEP, Kind::BytesStart, &start);
                let size = fields.u64()?;
                fields.end()?;
                admit(size)?;
                let mut buffer = receive_buffer(size as usize);
                while (buffer.len() as u64) < size {
                    let (_, len) = conn.read_header(STEP, &[Kind::Bytes])?;
                    if buffer.len() as u64 + u64::from(len) > size {
                        return Err(Error::protocol(
                            STEP,
                            format!("BYTES frames overrun the announced {size} bytes"),
                        ));
                    }
                    conn.read_append(STEP, &mut buffer, len)?;
                }
                received.out_of_line.push(buffer);
            }
            _ => {
                let mut end = vec![0; len as usize];
                conn.read_exact(STEP, &mut end)?;
                let mut fields = Fields::new(STEP, Kind::End, &end);
                let stream_bytes = fields.u64()?;
                let out_of_line_bytes = fields.u64()?;
                received.fd_count = fields.u32()?;
                fields.end()?;
                if u64::from(received.fd_count) > limits.fds {
                    return Err(Error::LimitExceeded {
                        step: STEP,
                        what: "fds",
                        found: received.fd_count.into(),
                        max: limits.fds,
                    });
                }
                let arrived: u64 = received.out_of_line.iter().map(|b| b.len() as u64).sum();
                if stream_bytes != received.stream.len() as u64 || out_of_line_bytes != arrived {
                    return Err(Error::protocol(
                        STEP,
                        format!(
                            "END announced {stream_bytes} bytes of state and {out_of_line_bytes} \
                             out of line; {} and {arrived} arrived",
                            received.stream.len()
                        ),
                    ));
                }
                return Ok(received);
            }
        }
    }
}

/// From this size up, an out-of-line buffer asks for transparent huge pages.
const HUGE_BUFFER: usize = 4 << 20;

/// An empty `Vec` with room for `size` bytes, about to be filled from the
/// socket. A fresh process has none of that memory yet, and faulting it in
/// 4 KiB at a time, inside the socket reads, cost as much as the copy
/// itself. For a big buffer, ask for transparent huge pages: 512 times
/// fewer faults.
fn receive_buffer(size: usize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(size);
    if size >= HUGE_BUFFER {
        let spare = buffer.spare_capacity_mut();
        let page = rustix::param::page_size();
        let start = spare.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(page);
        let len = (spare.len() - (aligned - start)) / page * page;
        // SAFETY: the range lies inside this Vec's allocation, which this
        // function owns and which holds nothing yet. MADV_HUGEPAGE only
        // changes how the kernel backs the range, never what it holds; if
        // the kernel refuses (no THP support), the memory stays as it was.
        let advised = unsafe {
            rustix::mm::madvise(aligned as *mut _, len, rustix::mm::Advice::LinuxHugepage)
        };
        if let Err(error) = advised {
            log::debug!("mitosis: no huge pages for a {size}-byte buffer: {error}");
        }
    }
    buffer
}
