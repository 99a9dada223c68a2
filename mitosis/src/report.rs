//! What an upgrade came to, told once it is known: to whoever asked for it
//! (a control socket's client) and to the status that the next one asks
//! for.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Step};
use crate::lineage;

/// One upgrade's end.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The process that started it.
    pub(crate) old_pid: u32,
    /// The new process, if it was started.
    pub(crate) new_pid: Option<u32>,
    /// The generation the new process has, or would have had.
    pub(crate) generation: u64,
    /// The binary it ran, as the program named it.
    pub(crate) binary: PathBuf,
    /// `Err` with the error's message and step.
    pub(crate) result: Result<(), (String, Option<Step>)>,
    /// From the spawn to READY.
    pub(crate) start: Option<Duration>,
    /// From the hand-over to TAKEN: the pause.
    pub(crate) pause: Option<Duration>,
}

/// Told the report when the upgrade ends.
pub(crate) type Listener = Box<dyn FnOnce(&Report) + Send>;

/// The last upgrade started in this process, for status requests.
static LAST: Mutex<Option<Report>> = Mutex::new(None);

/// The last upgrade this process started, once it has ended.
pub(crate) fn last() -> Option<Report> {
    LAST.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// In a new process that has just taken over: the upgrade that made it,
/// timed from this side (from its start to READY, and from the state's
/// first byte to TAKEN).
pub(crate) fn took_over(old_pid: u32, start: Duration, pause: Duration) {
    *LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Report {
        old_pid,
        new_pid: Some(std::process::id()),
        generation: lineage::generation(),
        binary: lineage::binary().to_path_buf(),
        result: Ok(()),
        start: Some(start),
        pause: Some(pause),
    });
}

/// Follows one upgrade from its start, and reports its end exactly once.
pub(crate) struct Tracker {
    report: Report,
    started: Instant,
    ready: Option<Instant>,
    handed_over: Option<Instant>,
    listener: Option<Listener>,
}

impl Tracker {
    pub(crate) fn new(binary: PathBuf, listener: Option<Listener>) -> Tracker {
        Tracker {
            report: Report {
                old_pid: std::process::id(),
                new_pid: None,
                generation: lineage::generation() + 1,
                binary,
                result: Ok(()),
                start: None,
                pause: None,
            },
            started: Instant::now(),
            ready: None,
            handed_over: None,
            listener,
        }
    }

    pub(crate) fn started(&mut self, pid: Option<u32>) {
        self.report.new_pid = pid;
    }

    pub(crate) fn ready(&mut self) {
        self.ready = Some(Instant::now());
    }

    pub(crate) fn handed_over(&mut self) {
        self.handed_over = Some(Instant::now());
    }

    pub(crate) fn done(self) {
        self.end(Ok(()));
    }

    pub(crate) fn failed(self, error: &Error) {
        self.end(Err((error.to_string(), error.step())));
    }

    fn end(mut self, result: Result<(), (String, Option<Step>)>) {
        let ended = Instant::now();
        self.report.result = result;
        self.report.start = self.ready.map(|ready| ready - self.started);
        self.report.pause = self.handed_over.map(|paused| ended - paused);
        *LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(self.report.clone());
        if let Some(listener) = self.listener.take() {
            listener(&self.report);
        }
    }
}
