//! The awaited upgrade, hand-over and trigger, in both runtime flavours,
//! with a real signal and real new processes.
//!
//! The new process here is this test binary, started again with
//! `--mitosis=<port>`: libtest refuses that flag and exits, so each upgrade
//! fails at once, for real, which is what these tests need. Starting a new
//! build that takes over is testdata's `tests/tokio_upgrade.rs`.

use std::future::{Future, IntoFuture};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

use crate::supervisor::Trigger;
use crate::{Error, Outcome};

/// One upgrade per process at a time, and one owner of the signal.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn flavours() -> [(&'static str, Runtime); 2] {
    [
        (
            "current-thread",
            Builder::new_current_thread().enable_all().build().unwrap(),
        ),
        (
            "multi-thread",
            Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
    ]
}

fn in_both_flavours<F: Future<Output = ()>>(test: impl Fn() -> F) {
    let _serial = serial();
    for (flavour, runtime) in flavours() {
        log::debug!("{flavour}");
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), test()).await })
            .unwrap_or_else(|_| panic!("timed out in the {flavour} runtime"));
    }
}

/// Raises `signal` in this thread, whose handler runs before `raise`
/// returns. `kill` on the process would let any thread take it, later: a
/// signal of one flavour's run could then reach the next one's trigger.
fn raise(signal: i32) {
    // SAFETY: raise(3) with a signal that a Trigger handles; no memory is
    // involved.
    assert_eq!(unsafe { libc::raise(signal) }, 0);
}

#[test]
fn a_trigger_is_received_in_select_and_survives_cancellation() {
    in_both_flavours(|| async {
        let trigger = Trigger::signal(libc::SIGUSR2).unwrap();
        // No signal yet: the other branch wins, and the dropped future
        // consumed nothing.
        tokio::select! {
            fired = trigger.recv() => panic!("fired without a signal: {fired:?}"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        raise(libc::SIGUSR2);
        tokio::select! {
            fired = trigger.recv() => fired.unwrap(),
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("the signal was not received"),
        }
        assert!(!trigger.fired(), "recv consumes the signal");
        // A signal that arrives while the future waits.
        let waiting = tokio::spawn(async move {
            trigger.recv().await.unwrap();
            trigger
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        raise(libc::SIGUSR2);
        let trigger = waiting.await.unwrap();
        // Several signals before the call count as one.
        raise(libc::SIGUSR2);
        raise(libc::SIGUSR2);
        trigger.recv().await.unwrap();
        assert!(!trigger.fired());
    });
}

#[test]
fn ready_reports_a_new_process_that_failed_and_keeps_the_upgrade_usable() {
    in_both_flavours(|| async {
        let state = 7u64;
        let mut upgrade = crate::prepare(&state).unwrap();
        // Dropped at once, before the new process could say anything.
        tokio::select! {
            biased;
            () = std::future::ready(()) => {}
            ready = upgrade.ready() => panic!("resolved before the new process ran: {ready:?}"),
        }
        let error = upgrade.ready().await.unwrap_err();
        assert!(
            matches!(error, Error::ChildExited { .. } | Error::PeerGone { .. }),
            "{error}"
        );
        assert!(matches!(upgrade.ready().await, Err(Error::AlreadyFailed)));
        drop(upgrade);
        assert_eq!(state, 7);
    });
}

#[test]
fn dropping_a_pending_upgrade_stops_the_new_process_and_allows_another() {
    in_both_flavours(|| async {
        let state = String::from("kept");
        let mut upgrade = crate::prepare(&state).unwrap();
        tokio::select! {
            biased;
            () = std::future::ready(()) => {}
            _ = upgrade.ready() => {}
        }
        drop(upgrade);
        // The first one is gone entirely: a second may start.
        let mut again = crate::prepare(&state).unwrap();
        assert!(again.ready().await.is_err());
        assert_eq!(state, "kept");
    });
}

#[test]
fn an_awaited_split_that_fails_gives_the_state_back() {
    in_both_flavours(|| async {
        match crate::split(vec![1u8, 2, 3]).await {
            Outcome::Failed { state, error } => {
                assert_eq!(state, [1, 2, 3], "{error}");
            }
            Outcome::Done { pid } => panic!("a test binary took over as pid {pid}"),
        }
        // Through prepare, hand_over and await, in a spawned task.
        let task = tokio::spawn(async {
            let state = vec![4u8];
            let upgrade = crate::prepare(&state).unwrap();
            upgrade.hand_over(state).await
        });
        match task.await.unwrap() {
            Outcome::Failed { state, .. } => assert_eq!(state, [4]),
            Outcome::Done { pid } => panic!("a test binary took over as pid {pid}"),
        }
    });
}

#[test]
fn a_split_that_could_not_start_resolves_without_the_blocking_pool() {
    let _serial = serial();
    // A first upgrade that stays in flight: its new process waits and
    // never connects (the test binary itself would exit at once, and the
    // claim with it).
    let waiting = std::env::temp_dir().join(format!("mitosis-wait-{}", std::process::id()));
    std::fs::write(&waiting, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(
        &waiting,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _first = crate::SplitOptions::new()
        .binary(&waiting)
        .prepare(&0u64)
        .unwrap();
    let _ = std::fs::remove_file(&waiting);
    // A second split while one is in flight fails at once.
    let runtime = Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    match runtime.block_on(crate::split(9u64).into_future()) {
        Outcome::Failed {
            state,
            error: Error::SplitInFlight,
        } => assert_eq!(state, 9),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dropped_hand_over_future_still_ends_the_handover() {
    in_both_flavours(|| async {
        let state = vec![5u8];
        let upgrade = crate::prepare(&state).unwrap();
        let mut awaited = upgrade.hand_over(state).into_future();
        // Started (polled once), then dropped: the blocking task still
        // gets the outcome, and the claim on the one upgrade ends, so
        // that another may start.
        tokio::select! {
            biased;
            _ = &mut awaited => {}
            () = std::future::ready(()) => {}
        }
        drop(awaited);
        let started = std::time::Instant::now();
        loop {
            match crate::prepare(&0u64) {
                Ok(upgrade) => break drop(upgrade),
                Err(Error::SplitInFlight) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("{error}"),
            }
        }
    });
}

/// A control socket awaited in `select!`: a status request is answered
/// while the future waits, and an upgrade request ends the wait; a future
/// dropped before anything came loses nothing.
#[cfg(feature = "control")]
#[test]
fn a_control_request_is_awaited() {
    use crate::control::{Command, Control, Verdict, send};
    in_both_flavours(|| async {
        let dir = std::env::temp_dir().join(format!(
            "mitosis-tokio-control-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700);
        std::fs::set_permissions(&dir, private).unwrap();
        let path = dir.join("t.control");
        let _ = std::fs::remove_file(&path);
        let mut control = Control::bind(&path).unwrap();
        tokio::select! {
            request = control.recv() => panic!("a request without a client: {request:?}"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let client = {
            let path = path.clone();
            std::thread::spawn(move || {
                let status = send(&path, &Command::Status).unwrap();
                let upgrade = send(&path, &Command::Previous).unwrap();
                (status, upgrade)
            })
        };
        let request = control.recv().await.unwrap();
        assert_eq!(request.command(), &Command::Previous);
        drop(request);
        let (status, upgrade) = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        assert_eq!(status.verdict(), Verdict::Status);
        assert_eq!(
            status.field("pid"),
            Some(std::process::id().to_string().as_str())
        );
        assert_eq!(upgrade.verdict(), Verdict::Error);
        drop(control);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}
