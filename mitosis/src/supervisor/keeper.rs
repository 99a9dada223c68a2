//! The keeper: the first process, kept alive with its pid across every
//! upgrade, for a container's PID 1 and for supervisors that watch a pid.
//!
//! It starts the program again as its child (the first generation), then
//! only waits. It is a child subreaper, so every generation, and every
//! orphan of theirs, becomes its child when its parent exits, and it reaps
//! them all. It listens to the generations as systemd would, on its own
//! `NOTIFY_SOCKET`, and only to the main one: `MAINPID=` from the
//! generation that hands over names the one that serves next. Signals meant
//! for the service (`SIGTERM` from `docker stop`, `SIGUSR2` for an
//! upgrade, ...) go to the generation that serves. When that generation
//! exits, the keeper exits with its status (128 + N after signal N), so
//! the supervisor sees the program's own.
//!
//! Why a keeper and not exec in place: exec in place needs the new binary
//! to start, read the state back and set up again inside the pause, which
//! costs the exec floor (about 10 times a prepared handover's pause, see
//! docs/bench.md), and once the old image is gone a new build that fails
//! after the exec cannot roll back. The keeper costs one small process.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::env;
use crate::env::start_path;
use crate::error::Error;

/// The signals a supervisor or an operator sends the service, forwarded to
/// the generation that serves. Not SIGCHLD (the keeper's own), nor the
/// ones the kernel sends a process for its own faults.
const FORWARDED: [i32; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
];

/// Becomes the keeper, if the first generation can be started: then it
/// never returns, and the process exits with the program's status.
pub(super) fn become_keeper() -> Result<(), Error> {
    if !env::single_threaded() {
        log::debug!(
            "mitosis: the keeper starts in a process with other threads; the signals they \
             receive are passed on to the keeper's thread"
        );
    }
    let keeper = Keeper::start()?;
    log::info!(
        "mitosis: keeping pid {} for the program, which runs as pid {}",
        std::process::id(),
        keeper.main
    );
    let code = keeper.run();
    // The one exit in mitosis: the keeper is not the program, and its
    // status is the program's.
    std::process::exit(code)
}

struct Keeper {
    /// Where the generations' notifications arrive.
    socket: OwnedFd,
    signals: OwnedFd,
    /// The generation that serves.
    main: u32,
}

impl Keeper {
    fn start() -> Result<Keeper, Error> {
        let failed = |action: &'static str| {
            move |source: std::io::Error| Error::Supervisor {
                action: action.into(),
                source,
            }
        };
        let (socket, name) = notify_socket().map_err(failed("listen on the keeper's socket"))?;
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| failed("become a child subreaper")(e.into()))?;
        let mask = forwarded_and_children();
        // Blocked before the first generation exists, so that no signal
        // for it can be missed; a blocked signal is never discarded, even
        // by PID 1, which discards those it has no handler for.
        // SAFETY: changes only this thread's signal mask; `mask` is a
        // valid, initialised set.
        let blocked =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
        if blocked != 0 {
            return Err(failed("block the signals the keeper forwards")(
                std::io::Error::from_raw_os_error(blocked),
            ));
        }
        // SAFETY: `mask` is valid; the new fd is owned at once below.
        let raw = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if raw < 0 {
            let error = std::io::Error::last_os_error();
            unblock(&mask);
            return Err(failed("read the keeper's signals")(error));
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        let signals = unsafe { OwnedFd::from_raw_fd(raw) };
        redirect_to_this_thread(&mask).map_err(failed("catch signals on other threads"))?;

        let mut args = std::env::args_os();
        let mut command = Command::new(start_path());
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        command.args(args);
        env::apply_keeper(&mut command, &name);
        // The mask is inherited across fork and exec: the first generation
        // must get its signals as usual.
        // SAFETY: the closure runs between fork and exec, and calls only
        // pthread_sigmask, which is async-signal-safe, on a set copied in.
        unsafe {
            command.pre_exec(move || {
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &mask, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| {
            unblock(&mask);
            Error::Spawn {
                binary: start_path().to_path_buf(),
                source,
            }
        })?;
        // The sockets systemd passed belong to the first generation now;
        // the keeper closes its copies.
        drop(super::activation::passed_sockets(&[std::process::id()]));
        Ok(Keeper {
            socket,
            signals,
            main: child.id(),
        })
    }

    /// Waits until the generation that serves exits, and returns the exit
    /// code the keeper should give.
    fn run(mut self) -> i32 {
        loop {
            let mut fds = [
                PollFd::new(&self.signals, PollFlags::IN),
                PollFd::new(&self.socket, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(error) => log::error!("mitosis: keeper: poll: {error}"),
            }
            let signals = self.take_signals();
            // A generation sends MAINPID= before it exits, so once its exit
            // is seen, its message is already queued: read the messages
            // first, then reap.
            self.read_notifications();
            for signal in signals.into_iter().filter(|&s| s != libc::SIGCHLD) {
                self.forward(signal);
            }
            if let Some(code) = self.reap() {
                return code;
            }
        }
    }

    fn take_signals(&self) -> Vec<i32> {
        let mut signals = Vec::new();
        loop {
            let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most `size` bytes into `info`, which has room
            // for exactly that.
            let read =
                unsafe { libc::read(self.signals.as_raw_fd(), info.as_mut_ptr().cast(), size) };
            if read != size as isize {
                return signals;
            }
            // SAFETY: the kernel wrote a whole signalfd_siginfo.
            let info = unsafe { info.assume_init() };
            signals.push(info.ssi_signo as i32);
        }
    }

    fn forward(&self, signal: i32) {
        let Some(pid) = Pid::from_raw(self.main as i32) else {
            return;
        };
        // SAFETY: `signal` came from the signalfd, so it is a valid signal
        // number; from_raw_unchecked only skips that check.
        let sig = unsafe { Signal::from_raw_unchecked(signal) };
        match rustix::process::kill_process(pid, sig) {
            Ok(()) => log::debug!("mitosis: keeper: forwarded signal {signal} to pid {pid}"),
            Err(error) => log::debug!("mitosis: keeper: signal {signal} to pid {pid}: {error}"),
        }
    }

    /// Reads every queued notification; only the serving generation's
    /// count, as under systemd's `NotifyAccess=main`.
    fn read_notifications(&mut self) {
        loop {
            let mut bytes = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
            let received = rustix::net::recvmsg(
                &self.socket,
                &mut iov,
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            let len = match received {
                Ok(received) => received.bytes,
                Err(Errno::INTR) => continue,
                Err(_) => return,
            };
            let sender = control.drain().find_map(|message| match message {
                RecvAncillaryMessage::ScmCredentials(credentials) => {
                    Some(credentials.pid.as_raw_nonzero().get() as u32)
                }
                _ => None,
            });
            let text = String::from_utf8_lossy(&bytes[..len.min(bytes.len())]).into_owned();
            if sender != Some(self.main) {
                log::debug!(
                    "mitosis: keeper: ignored a notification from pid {sender:?}; only the main \
                     pid {} may send",
                    self.main
                );
                continue;
            }
            self.heard(&text);
        }
    }

    fn heard(&mut self, text: &str) {
        let mut upstream = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("MAINPID=").map(str::parse::<u32>) {
                Some(Ok(pid)) if pid > 0 => {
                    log::info!(
                        "mitosis: keeper: pid {pid} serves now, after pid {}",
                        self.main
                    );
                    self.main = pid;
                }
                Some(_) => log::warn!("mitosis: keeper: ignored a malformed {line:?}"),
                None if !line.is_empty() => upstream.push(line),
                None => {}
            }
        }
        // To the keeper's own service manager, if it has one.
        if !upstream.is_empty() {
            let states: Vec<sd_notify::NotifyState<'_>> = upstream
                .into_iter()
                .map(sd_notify::NotifyState::Custom)
                .collect();
            if let Err(error) = super::notify::send(&states) {
                log::warn!("mitosis: keeper: could not pass a notification on: {error}");
            }
        }
    }

    /// Reaps every child that has exited; the exit code for the keeper once
    /// the serving generation is among them.
    fn reap(&self) -> Option<i32> {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let pid = pid.as_raw_nonzero().get() as u32;
                    if pid != self.main {
                        log::debug!("mitosis: keeper: reaped pid {pid}");
                        continue;
                    }
                    let code = match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => code,
                        (None, Some(signal)) => 128 + signal,
                        (None, None) => 1,
                    };
                    log::info!("mitosis: keeper: pid {pid}, which served, exited ({code})");
                    return Some(code);
                }
                Ok(None) => return None,
                Err(Errno::INTR) => {}
                Err(Errno::CHILD) => {
                    // No child at all, and the main pid never exited as
                    // one: it can only be gone.
                    log::warn!("mitosis: keeper: pid {} is gone", self.main);
                    return Some(1);
                }
                Err(error) => {
                    log::error!("mitosis: keeper: wait: {error}");
                    return None;
                }
            }
        }
    }
}

/// A datagram socket that learns each sender's pid, bound to a fresh
/// abstract name (`@mitosis-keeper-<pid>-<16 hex digits>`): no file that a
/// temp-directory cleaner could remove from under a keeper that runs for
/// months, and nothing to clean up. Anyone may send to it; only the
/// serving generation's messages count, by the pid the kernel vouches for.
fn notify_socket() -> std::io::Result<(OwnedFd, String)> {
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let name = format!("mitosis-keeper-{}-{hex}", std::process::id());
    let socket = super::notify::datagram_socket()?;
    rustix::net::sockopt::set_socket_passcred(&socket, true)?;
    rustix::net::bind(
        &socket,
        &SocketAddrUnix::new_abstract_name(name.as_bytes())?,
    )?;
    Ok((socket, format!("@{name}")))
}

fn forwarded_and_children() -> libc::sigset_t {
    let mut mask = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only adds valid
    // signal numbers to it.
    unsafe {
        libc::sigemptyset(mask.as_mut_ptr());
        for signal in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
            libc::sigaddset(mask.as_mut_ptr(), signal);
        }
        mask.assume_init()
    }
}

/// The keeper's thread, which alone blocks the forwarded signals and reads
/// them from its signalfd.
static KEEPER_THREAD: AtomicU64 = AtomicU64::new(0);

/// A process that started threads before `init` (every `#[tokio::main]`)
/// has threads that do not block the forwarded signals, and the kernel
/// delivers a signal sent to the process to any thread that does not block
/// it: there, with no handler, PID 1 discards it, and so does anyone for
/// SIGCHLD. A handler on every such signal passes it on to the keeper's
/// thread, where it waits, blocked, for the signalfd. On this thread the
/// handler never runs, since the signals are blocked here.
fn redirect_to_this_thread(mask: &libc::sigset_t) -> std::io::Result<()> {
    // SAFETY: pthread_self has no preconditions.
    KEEPER_THREAD.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
    for signal in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
        // SAFETY: a zeroed sigaction is a valid starting point; the
        // handler is an `extern "C" fn(c_int)` that only calls
        // pthread_kill, which is async-signal-safe; `mask` is valid.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = pass_to_keeper as extern "C" fn(libc::c_int) as usize;
            action.sa_mask = *mask;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The handler of [`redirect_to_this_thread`].
extern "C" fn pass_to_keeper(signal: libc::c_int) {
    // SAFETY: KEEPER_THREAD holds the keeper's thread, which lives as long
    // as the process (it never returns); pthread_kill is async-signal-safe.
    unsafe {
        libc::pthread_kill(
            KEEPER_THREAD.load(Ordering::SeqCst) as libc::pthread_t,
            signal,
        );
    }
}

fn unblock(mask: &libc::sigset_t) {
    // SAFETY: changes only this thread's signal mask.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, mask, std::ptr::null_mut()) };
}
