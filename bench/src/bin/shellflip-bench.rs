//! shellflip 2.1.3 doing the small handover that `bench` times with mitosis:
//! 1 KiB of data plus 3 fds (a TCP listener, a connected TCP stream, a
//! file), to a new process that reports ready. `bench` drives it; it is a
//! binary of its own so that tokio and shellflip stay out of `bench`.
//!
//! Modes, by argument:
//!
//! - `serve`: the old process. For every `restart` line on stdin it builds a
//!   fresh small state, makes a shellflip restart task for it, asks for the
//!   restart (SIGUSR1 to itself, shellflip's own trigger) and waits until
//!   the task resolves, which it does once the new process has reported
//!   ready. It answers `ok <ns>`: from the signal to the task resolving, on
//!   `CLOCK_MONOTONIC`. Then it reaps the new process.
//! - `floor <port>`: connects to the port and exits, for this binary's exec
//!   floor.
//! - started by shellflip (`receive_from_old_process` gives a pipe): the new
//!   process. It reads the state from the pipe, rebuilds the three fds from
//!   their numbers, checks the data, reports ready with
//!   `shellflip::startup_complete`, and exits.
//!
//! shellflip passes data through a pipe (`LifecycleHandler::
//! send_to_new_process`); it has no fd transfer of its own besides its
//! restart socket. The way to hand fds over with it is to let the new
//! process inherit them: the handler clears `FD_CLOEXEC` on the three fds in
//! `pre_new_process` (and sets it back in `new_process_failed`) and writes
//! their numbers into the pipe after the data.
//!
//! The restart coordination socket is left disabled: enabling it makes
//! shellflip spawn with a `pre_exec` hook, which forces std's slower fork
//! path. The signal trigger is its fastest configuration.

use std::error::Error;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::pin::{Pin, pin};
use std::process::ExitCode;
use std::task::Poll;

use mitosis_bench::{SMALL_BLOB_BYTES, checksum, monotonic_ns, pattern};
use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
use rustix::process::{Signal, getpid, kill_process};
use shellflip::RestartConfig;
use shellflip::lifecycle::{LifecycleHandler, PipeReader, PipeWriter, receive_from_old_process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

fn main() -> ExitCode {
    // First: are we the new process of a restart?
    if let Some(pipe) = receive_from_old_process() {
        return match new_process(pipe) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("shellflip-bench (new process): {error}");
                ExitCode::FAILURE
            }
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve"] => serve(),
        ["floor", port] => floor(port),
        _ => Err("usage: shellflip-bench serve | floor <port> (run by `bench`)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shellflip-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn floor(port: &str) -> Result<()> {
    TcpStream::connect(("127.0.0.1", port.parse::<u16>()?))?;
    Ok(())
}

/// The state: the same shape as `bench`'s small case.
struct Small {
    blob: Vec<u8>,
    listener: TcpListener,
    stream: TcpStream,
    file: File,
}

impl Small {
    fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.listener.as_fd(),
            self.stream.as_fd(),
            self.file.as_fd(),
        ]
    }

    /// Lets the next spawned process inherit the fds, or stops it.
    fn inherit(&self, inherit: bool) -> io::Result<()> {
        for fd in self.fds() {
            let mut flags = fcntl_getfd(fd)?;
            flags.set(FdFlags::CLOEXEC, !inherit);
            fcntl_setfd(fd, flags)?;
        }
        Ok(())
    }

    /// What goes down the pipe: the data's length (u32), the data, then the
    /// three fd numbers (i32 each), little-endian.
    fn message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(4 + self.blob.len() + 12);
        message.extend_from_slice(&(self.blob.len() as u32).to_le_bytes());
        message.extend_from_slice(&self.blob);
        for fd in self.fds() {
            message.extend_from_slice(&fd.as_raw_fd().to_le_bytes());
        }
        message
    }
}

/// The old process's side of one restart.
struct Handler {
    state: Small,
    inherit_error: Option<io::Error>,
}

// `LifecycleHandler` is an `#[async_trait]` trait; these are the signatures
// that macro expands to, written out so as not to depend on it.
impl LifecycleHandler for Handler {
    fn pre_new_process<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.inherit_error = self.state.inherit(true).err();
        })
    }

    fn send_to_new_process<'life0, 'async_trait>(
        &'life0 mut self,
        mut pipe: PipeWriter,
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if let Some(error) = self.inherit_error.take() {
                return Err(error);
            }
            pipe.write_all(&self.state.message()).await?;
            pipe.flush().await
        })
    }

    fn new_process_failed<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let _ = self.state.inherit(false);
        })
    }
}

fn serve() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let peer = TcpListener::bind("127.0.0.1:0")?;
    let exe = std::env::current_exe()?;
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        match line?.trim() {
            "restart" => {
                let ns = runtime.block_on(restart_once(&peer, &exe))?;
                writeln!(out, "ok {ns}")?;
                out.flush()?;
            }
            other => return Err(format!("unknown command {other:?}").into()),
        }
    }
    Ok(())
}

async fn restart_once(peer: &TcpListener, exe: &std::path::Path) -> Result<u64> {
    let state = Small {
        blob: pattern(SMALL_BLOB_BYTES),
        listener: TcpListener::bind("127.0.0.1:0")?,
        stream: TcpStream::connect(peer.local_addr()?)?,
        file: File::open(exe)?,
    };
    let (_accepted, _) = peer.accept()?;
    let config = RestartConfig {
        lifecycle_handler: Box::new(Handler {
            state,
            inherit_error: None,
        }),
        ..RestartConfig::default()
    };
    // Sets up the restart thread and the SIGUSR1 handler.
    let mut task = pin!(config.try_into_restart_task()?);
    // The first poll marks this process ready (a no-op here: it was not
    // started by shellflip) and starts waiting for the signal; it happens
    // before the clock starts.
    let first = std::future::poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx))).await;
    if first.is_ready() {
        return Err("the restart task resolved before a restart was asked for".into());
    }

    let start = monotonic_ns();
    kill_process(getpid(), Signal::USR1)?;
    let mut child = task.await?;
    let took = monotonic_ns() - start;

    // The new process exits right after reporting ready.
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the new process exited with {status}").into());
    }
    Ok(took)
}

fn new_process(mut pipe: PipeReader) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let (blob, fds) = runtime.block_on(async move {
        let len = pipe.read_u32_le().await? as usize;
        if len > 1 << 20 {
            return Err::<_, Box<dyn Error>>("the data is too long".into());
        }
        let mut blob = vec![0; len];
        pipe.read_exact(&mut blob).await?;
        let mut fds = [0 as RawFd; 3];
        for fd in &mut fds {
            *fd = pipe.read_i32_le().await?;
        }
        Ok((blob, fds))
    })?;
    for fd in fds {
        // Each must be open here: inherited, not just a number.
        fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) })?;
    }
    // SAFETY: the old process let exactly these fds be inherited, and
    // nothing else in this process owns them.
    let state = unsafe {
        Small {
            blob,
            listener: TcpListener::from_raw_fd(fds[0]),
            stream: TcpStream::from_raw_fd(fds[1]),
            file: File::from_raw_fd(fds[2]),
        }
    };
    if checksum(&state.blob) != checksum(&pattern(SMALL_BLOB_BYTES)) {
        return Err("the data differs from the old process's".into());
    }
    shellflip::startup_complete()?;
    // Exit without tearing anything down, like bench's new processes.
    std::process::exit(0);
}
