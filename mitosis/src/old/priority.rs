//! The new process starts at idle CPU priority (`SCHED_IDLE`), so that its
//! exec, its dynamic linking and its own set-up take only CPU time the
//! service leaves over: on a busy machine the old process's clients would
//! otherwise pay for the start in latency. Once it is ready, every thread
//! of it goes back to the policy the old process runs with, for the pause
//! and for its life after.
//!
//! Only for the ordinary policies: a program under a real-time policy
//! (`SCHED_FIFO`, `SCHED_RR`) keeps it in the new process, untouched.
//! Processes the new one starts during its set-up keep idle priority.

use rustix::process::Pid;

/// What the new process goes back to: the spawning thread's policy, if it
/// is an ordinary one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ordinary(libc::c_int);

/// Puts the new process at idle priority; `None` (and nothing done) under a
/// real-time policy, or if the kernel refuses.
pub(super) fn start_idle(child: Pid) -> Option<Ordinary> {
    // SAFETY: sched_getscheduler only reads the calling thread's policy.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
        return None;
    }
    set(child.as_raw_nonzero().get(), libc::SCHED_IDLE).then_some(Ordinary(policy))
}

/// Puts every thread of the new process back to `policy`. Best effort: a
/// thread that is gone is no loss, and a refusal is logged.
pub(super) fn restore(child: Pid, policy: Ordinary) {
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
