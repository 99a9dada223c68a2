//! Which tokio reactor a decoded socket is registered with, and the
//! background runtime that puts buffered bytes back.
//!
//! tokio's `from_std` registers a socket with the reactor of the runtime
//! that is current, and panics when there is none. A state is decoded
//! either inside the program's runtime (the recommended way: its sockets go
//! straight to that runtime's reactor) or before any runtime is built
//! (`mitosis::init` first thing in a plain `main`). In the second case the
//! sockets go to a background runtime that mitosis starts once, on a thread
//! of its own, and that runs until the process exits. A socket registered
//! there is still polled by the program's tasks in its own runtime later:
//! readiness comes from the background reactor, which wakes those tasks
//! across threads.
//!
//! The background runtime also fills the buffers of tokio's `BufReader` and
//! `FramedRead` while decoding: their bytes come back through a socket, and
//! reading a tokio socket needs a running reactor, which the program's own
//! runtime is not while one of its threads is busy decoding (a
//! current-thread runtime has no other).

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};

use crate::error::Error;

/// How long decoding waits for the background runtime to put a buffer's
/// bytes back. The bytes are already in a local socket, so this only
/// bounds a runtime that is wedged.
const FILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The background runtime's handle, once started. A failed start is not
/// remembered, so that the next decode tries again.
static BACKGROUND: Mutex<Option<Handle>> = Mutex::new(None);

/// The background runtime, started on first use: a current-thread runtime
/// with its IO driver, driven by a thread named `mitosis-reactor` that
/// blocks on a future that never ends.
pub(crate) fn background() -> Result<Handle, Error> {
    let mut slot = BACKGROUND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = &*slot {
        return Ok(handle.clone());
    }
    let failed = |error: io::Error| Error::Resume {
        detail: format!(
            "could not start mitosis's background tokio reactor, which registers the state's \
             sockets when no tokio runtime is current: {error}; decode the state inside the \
             program's runtime instead"
        ),
    };
    let runtime = Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(failed)?;
    let handle = runtime.handle().clone();
    thread::Builder::new()
        .name("mitosis-reactor".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(failed)?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Runs `register` (a tokio `from_std`) with the runtime that is current,
/// or, when none is, with the background runtime. `what` names the value
/// for errors.
pub(crate) fn register<T>(
    what: &str,
    register: impl FnOnce() -> io::Result<T>,
) -> Result<T, Error> {
    match Handle::try_current() {
        Ok(current) => register_with(&current, what, register),
        Err(_) => register_with(&background()?, what, register),
    }
}

/// Runs `register` inside `handle`'s context. tokio panics, rather than
/// failing, when that runtime was built without its IO driver; that panic
/// is caught and becomes an error saying so.
pub(crate) fn register_with<T>(
    handle: &Handle,
    what: &str,
    register: impl FnOnce() -> io::Result<T>,
) -> Result<T, Error> {
    let _context = handle.enter();
    match panic::catch_unwind(AssertUnwindSafe(register)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Error::Resume {
            detail: format!("could not register a {what} with the tokio reactor: {error}"),
        }),
        Err(panicked) => Err(Error::Resume {
            detail: format!(
                "could not register a {what} with the current tokio runtime ({}); build that \
                 runtime with `enable_io()` or `enable_all()`, as `#[tokio::main]` does",
                panic_message(&*panicked)
            ),
        }),
    }
}

/// Runs `task` on the background runtime and waits for its result on this
/// thread. Only for short work on local sockets that are ready already.
pub(crate) fn run_in_background<T, F>(what: &str, task: F) -> Result<T, Error>
where
    F: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let handle = background()?;
    let (done, result) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = done.send(task.await);
    });
    let failed = |detail: String| Error::Resume {
        detail: format!("could not put a {what}'s buffered bytes back: {detail}"),
    };
    match result.recv_timeout(FILL_TIMEOUT) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(failed(error.to_string())),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(failed(format!(
            "mitosis's background tokio reactor did not answer within {FILL_TIMEOUT:?}"
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(failed(
            "the task on mitosis's background tokio reactor ended without an answer".into(),
        )),
    }
}

fn panic_message(panicked: &(dyn Any + Send)) -> &str {
    if let Some(message) = panicked.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panicked.downcast_ref::<String>() {
        message
    } else {
        "a panic"
    }
}
