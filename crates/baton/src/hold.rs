//! `baton lock`, `baton rwlock`, `baton sem`: hold a lock while a command runs, and stop the
//! command when the lease is lost.

use super::*;

/// Acquires (a lock, a read or write lock, or semaphore permits), runs the command, releases.
pub(crate) async fn lock(hold: HoldArgs, kind: LockKind) -> ExitCode {
    let HoldArgs { endpoints: eps, ttl, wait, lock_delay, name, command } = hold;
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let session = match client.session(Duration::from_secs(ttl)).await {
        Ok(s) => s,
        Err(e) => return client_error(e),
    };
    let lock_delay = Duration::from_secs_f64(lock_delay.max(0.0));
    let guard = match wait {
        Some(w) => {
            let wait = Duration::from_secs_f64(w.max(0.0));
            let wait = if wait.is_zero() { None } else { Some(wait) };
            session.lock_with(&name, LockOptions { wait, lock_delay, kind: kind.clone() }).await
        }
        None => loop {
            // Wait forever, one longest-allowed wait at a time.
            match session
                .lock_with(&name, LockOptions { wait: Some(Duration::from_secs(3600)), lock_delay, kind: kind.clone() })
                .await
            {
                Ok(None) => continue,
                other => break other,
            }
        },
    };
    let guard = match guard {
        Ok(Some(g)) => g,
        Ok(None) => {
            let _ = session.close().await;
            return fail(EXIT_NOT_ACQUIRED, format!("lock {name:?} not acquired within the wait"));
        }
        Err(e) => {
            let _ = session.close().await;
            return client_error(e);
        }
    };
    // The grant may have come back after a long wait or a failover: start CMD only while the
    // lease is still good, so that it never starts on a lock that may be someone else's.
    if !guard.is_lease_valid() {
        let token = guard.token();
        let _ = guard.release().await;
        let _ = session.close().await;
        return fail(
            EXIT_LEASE_LOST,
            format!("lease on lock {name:?} (token {token}) lost before the command started; not run"),
        );
    }
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("BATON_FENCE", guard.token().to_string())
        .env("BATON_LOCK", &name)
        .env("BATON_SESSION", session.id().to_string())
        // The command runs under the lock, not as the user: it does not inherit the password.
        .env_remove("BATON_PASSWORD")
        .env_remove("BATON_USER");
    // CMD gets its own process group, so that the deadline kills everything CMD started, not
    // just CMD (a child of a shell kept writing after the lease had passed: found by review).
    // On a terminal where baton is in the foreground, CMD's group takes the foreground (as a
    // shell gives it to a job), or a CMD that reads the terminal would be stopped (SIGTTIN).
    let foreground = terminal_foreground();
    // SAFETY: only async-signal-safe calls (setpgid, sigprocmask, tcsetpgrp, prctl), on the child
    // being set up. If baton dies (SIGKILL, OOM) nothing renews the lease any more, so CMD must
    // not outlive it: PR_SET_PDEATHSIG.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if foreground {
                with_sigttou_blocked(|| libc::tcsetpgrp(0, libc::getpid()));
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.release().await;
            let _ = session.close().await;
            return fail(EXIT_NO_COMMAND, format!("cannot run {:?}: {e}", command[0]));
        }
    };
    let group = child.id().map_or(0, |pid| pid as libc::pid_t);
    if foreground && group > 0 {
        // Also from here (whichever of the two runs first), as shells do.
        // SAFETY: tcsetpgrp(3) on our own terminal, to CMD's group.
        with_sigttou_blocked(|| unsafe { libc::tcsetpgrp(0, group) });
    }
    let take_terminal_back = || {
        if foreground {
            // SAFETY: tcsetpgrp(3) on our own terminal, back to our own group.
            with_sigttou_blocked(|| unsafe { libc::tcsetpgrp(0, libc::getpgrp()) });
        }
    };
    let kill_group = |signal: libc::c_int| {
        if group > 0 {
            // SAFETY: kill(2) on the process group this command created for CMD.
            unsafe { libc::killpg(group, signal) };
        }
    };
    // SIGINT, SIGTERM and SIGHUP are passed on to CMD's group and baton goes on renewing the
    // lease until CMD exits (a CMD that drains on SIGTERM keeps a valid lock meanwhile); dying
    // of them instead left CMD running with nobody renewing (found by review).
    let signals = [
        tokio::signal::unix::SignalKind::interrupt(),
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::hangup(),
    ];
    let mut streams = Vec::new();
    for kind in signals {
        match tokio::signal::unix::signal(kind) {
            Ok(s) => streams.push((kind.as_raw_value(), s)),
            Err(e) => {
                kill_group(libc::SIGKILL);
                let _ = guard.release().await;
                let _ = session.close().await;
                return fail(EXIT_FAILED, format!("cannot watch for signals: {e}"));
            }
        }
    }
    let code = {
        let mut lost = std::pin::pin!(guard.lease_lost());
        loop {
            let signal = futures::future::select_all(streams.iter_mut().map(|(raw, s)| {
                let raw = *raw;
                Box::pin(async move {
                    s.recv().await;
                    raw
                })
            }));
            tokio::select! {
                status = child.wait() => break match status {
                    Ok(s) => exit_code_of(s),
                    Err(e) => fail(1, format!("waiting for the command failed: {e}")),
                },
                // Fires at the lease's deadline on this process's monotonic clock (last
                // acknowledged renewal's send time + TTL - TTL/10), however stuck the renewals are.
                _ = &mut lost => {
                    // Kill first: writing to a stderr whose reader is stuck could block.
                    kill_group(libc::SIGKILL);
                    take_terminal_back();
                    // Reaped, not left a zombie: it is gone when baton exits.
                    let _ = child.wait().await;
                    eprintln!("baton: lease on lock {name:?} lost (token {}); the command was killed", guard.token());
                    // No release or close: they would wait on the cluster that stopped answering,
                    // and the server ends the session (and frees the lock) by itself.
                    return ExitCode::from(EXIT_LEASE_LOST);
                }
                (raw, _, _) = signal => kill_group(raw),
            }
        }
    };
    // CMD is done; anything it left in its group must not run on without the lock.
    kill_group(libc::SIGKILL);
    take_terminal_back();
    if let Err(e) = guard.release().await {
        eprintln!("baton: release failed (the lock is freed when the session ends): {e}");
    }
    if let Err(e) = session.close().await {
        eprintln!("baton: closing the session failed (it expires after its ttl): {e}");
    }
    code
}

/// True if standard input is a terminal whose foreground process group is ours.
fn terminal_foreground() -> bool {
    // SAFETY: isatty(3), tcgetpgrp(3) and getpgrp(2) only read.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Runs `f` with SIGTTOU blocked: a process outside the terminal's foreground group may then
/// change it (tcsetpgrp) instead of being stopped. Async-signal-safe (used between fork and exec).
fn with_sigttou_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: a signal set on the stack, and pthread_sigmask(3) on this thread, restored after.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    }
}
