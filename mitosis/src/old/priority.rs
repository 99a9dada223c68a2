//! The new process starts at idle CPU priority (`SCHED_IDLE`), so that its
//! exec, its dynamic linking and its own set-up take only CPU time the
//! service leaves over: on a busy machine the old process's clients would
//! otherwise pay for the start in latency. Once it is ready, every thread
//! of it goes back to the policy the old process runs with, for the pause
//! and for its life after.
//!
//! An idle process runs only when nothing else wants the CPU, so on a
//! saturated machine it may hardly start at all. The idle start is
//! therefore a head start for the service, not a sentence: after
//! [`POLITE_FOR`] the new process gets its normal priority back whether or
//! not it is ready, and a broken build is still found out promptly.
//!
//! Only for the ordinary policies: a program under a real-time policy
//! (`SCHED_FIFO`, `SCHED_RR`) keeps it in the new process, untouched.
//! Processes the new one starts during its set-up keep idle priority.

use std::sync::mpsc;
use std::time::Duration;

use rustix::process::Pid;

/// How long the new process starts at idle priority at most. A build that
/// calls `init` early is ready in a few milliseconds.
pub(super) const POLITE_FOR: Duration = Duration::from_millis(250);

/// The new process's idle start: ends at READY ([`IdleStart::end`]), when
/// the handover is given up (drop), or after [`POLITE_FOR`], whichever
/// comes first.
pub(super) struct IdleStart {
    child: Pid,
    policy: Ordinary,
    /// Dropping it tells the timer that the idle start is over.
    _timer: Option<mpsc::Sender<()>>,
}

impl IdleStart {
    /// Puts the new process at idle priority, with a timer that puts it
    /// back; `None` (and nothing done) under a real-time policy, or if the
    /// kernel refuses.
    pub(super) fn begin(child: Pid) -> Option<IdleStart> {
        let policy = start_idle(child)?;
        let (timer, cancelled) = mpsc::channel::<()>();
        let timer = std::thread::Builder::new()
            .name("mitosis-idle-start".into())
            .spawn(move || {
                // Disconnected: READY came, or the handover ended, first.
                if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(POLITE_FOR) {
                    log::debug!(
                        "mitosis: the new process was not ready within {POLITE_FOR:?}; it goes on \
                         at normal priority"
                    );
                    restore(child, policy);
                }
            })
            .ok()
            .map(|_| timer);
        Some(IdleStart {
            child,
            policy,
            _timer: timer,
        })
    }

    /// READY: every thread of the new process goes back to normal priority.
    pub(super) fn end(self) {
        restore(self.child, self.policy);
    }
}

/// What the new process goes back to: the spawning thread's policy, if it
/// is an ordinary one.
#[derive(Debug, Clone, Copy)]
struct Ordinary(libc::c_int);

fn start_idle(child: Pid) -> Option<Ordinary> {
    // SAFETY: sched_getscheduler only reads the calling thread's policy.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
        return None;
    }
    set(child.as_raw_nonzero().get(), libc::SCHED_IDLE).then_some(Ordinary(policy))
}

/// Puts every thread of the new process back to `policy`. Best effort: a
/// thread that is gone is no loss, and a refusal is logged.
fn restore(child: Pid, policy: Ordinary) {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.as_raw_nonzero()));
    let Ok(tasks) = tasks else {
        set(child.as_raw_nonzero().get(), policy.0);
        return;
    };
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|tid| tid.parse().ok()) {
            set(tid, policy.0);
        }
    }
}

fn set(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // the call changes only the scheduling policy of `tid`, a thread of the
    // process this one started, which it may do as the same user.
    let done = unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0;
    if !done {
        log::debug!(
            "mitosis: could not set the scheduling policy of thread {tid} of the new process: {}",
            std::io::Error::last_os_error()
        );
    }
    done
}
