//! Sessions and what is taken through them: locks, read/write locks, semaphores, elections,
//! barriers and latches, each a kind of acquire on one session; [`LockGuard`] holds a grant.
//!
//! An acquire is retried with the same request id until it is answered (it never queues twice);
//! a caller that stops waiting withdraws it on the server (so that it is not granted to
//! nobody); a guard that is dropped releases in the background.

use std::sync::Arc;
use std::time::Duration;

use baton_proto::v1 as pb;
use tonic::Code;

use crate::core::Op;
use crate::lease::SessionLease;
use crate::retry::{AttemptError, Plan};
use crate::routing::Target;
use crate::{Client, Error, Result};

/// A session: the lease that the locks taken through it hang on.
#[derive(Clone)]
pub struct Session {
    pub(crate) client: Client,
    pub(crate) shared: Arc<SessionLease>,
}

/// What an acquire asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LockKind {
    /// An exclusive lock.
    #[default]
    Exclusive,
    /// The read side of a read/write lock (shared with other readers).
    Read,
    /// The write side of a read/write lock.
    Write,
    /// `permits` permits of a semaphore with `capacity`.
    Semaphore { permits: u32, capacity: u32 },
    /// Candidacy in a leader election; the value is published once elected.
    Election { value: Vec<u8> },
    /// An arrival at a barrier of `parties`.
    Barrier { parties: u32 },
    /// A wait on a countdown latch.
    Latch,
}

/// An election's leader as observers see it (`session` 0: no leader).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leader {
    /// The leader's session.
    pub session: u64,
    /// Its term / fencing token.
    pub token: u64,
    /// Its published value.
    pub value: Vec<u8>,
}

/// Options of an acquire.
#[derive(Clone, Debug, Default)]
pub struct LockOptions {
    /// `None`: try once. `Some(d)`: wait in the queue up to `d`.
    pub wait: Option<Duration>,
    /// Lock-delay after this holder's session expires.
    pub lock_delay: Duration,
    /// Exclusive lock (default), read or write lock, or semaphore permits.
    pub kind: LockKind,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The session's TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl()
    }

    /// True while the lease is known valid (see the crate docs on lease loss).
    pub fn is_alive(&self) -> bool {
        self.shared.is_valid()
    }

    /// Completes when the lease is lost: at the lease's deadline on the client's monotonic
    /// clock (the send time of the last acknowledged renewal + TTL − TTL/10), however stuck the
    /// renewals are, or as soon as the leader says the session is gone.
    pub async fn lost(&self) {
        self.shared.lost().await
    }

    /// Takes the exclusive lock `name`: `Ok(None)` if it was not granted (try-once on a held
    /// lock, or the wait ran out).
    pub async fn lock(&self, name: &str, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, ..Default::default() }).await
    }

    /// Takes the read side of the read/write lock `name` (shared with other readers; FIFO with
    /// writers, so a waiting writer is not starved).
    pub async fn read_lock(&self, name: &str, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, kind: LockKind::Read, ..Default::default() }).await
    }

    /// Takes the write side of the read/write lock `name`.
    pub async fn write_lock(&self, name: &str, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, kind: LockKind::Write, ..Default::default() }).await
    }

    /// Campaigns in the election `name`: waits (FIFO among candidates) until this session is the
    /// leader, then publishes `value`. The guard's token is the leader's term/fencing token;
    /// releasing the guard resigns (the next candidate is elected at once).
    pub async fn campaign(&self, name: &str, value: Vec<u8>, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, kind: LockKind::Election { value }, ..Default::default() }).await
    }

    /// Arrives at the barrier `name` of `parties` and waits until all have arrived: true if the
    /// barrier was passed, false if the wait ran out (this arrival no longer counts).
    pub async fn barrier(&self, name: &str, parties: u32, wait: Option<Duration>) -> Result<bool> {
        let options = LockOptions { wait, kind: LockKind::Barrier { parties }, ..Default::default() };
        Ok(self.lock_with(name, options).await?.map(LockGuard::passed).is_some())
    }

    /// Double barrier (Curator): waits until `parties` have entered `name`.
    pub async fn double_barrier_enter(&self, name: &str, parties: u32, wait: Option<Duration>) -> Result<bool> {
        self.barrier(&format!("{name}/enter"), parties, wait).await
    }

    /// Double barrier (Curator): waits until all `parties` have left `name`.
    pub async fn double_barrier_leave(&self, name: &str, parties: u32, wait: Option<Duration>) -> Result<bool> {
        self.barrier(&format!("{name}/leave"), parties, wait).await
    }

    /// Waits until the countdown latch `name` reaches zero: true if it did, false if the wait
    /// ran out. A latch that was never set (or already reached zero) is open.
    pub async fn latch_wait(&self, name: &str, wait: Option<Duration>) -> Result<bool> {
        let options = LockOptions { wait, kind: LockKind::Latch, ..Default::default() };
        Ok(self.lock_with(name, options).await?.map(LockGuard::passed).is_some())
    }

    /// Takes `permits` permits of the semaphore `name` with `capacity` permits in all.
    pub async fn semaphore(
        &self,
        name: &str,
        permits: u32,
        capacity: u32,
        wait: Option<Duration>,
    ) -> Result<Option<LockGuard>> {
        let kind = LockKind::Semaphore { permits, capacity };
        self.lock_with(name, LockOptions { wait, kind, ..Default::default() }).await
    }

    /// [`Session::lock`] with all options.
    pub async fn lock_with(&self, name: &str, options: LockOptions) -> Result<Option<LockGuard>> {
        if !self.is_alive() {
            return Err(Error::LeaseLost(self.id()));
        }
        let req = pb::AcquireRequest {
            name: name.to_string(),
            session_id: self.id(),
            request_id: self.client.request_id(),
            wait_ms: options.wait.map_or(0, |d| d.as_millis() as u64),
            lock_delay_ms: options.lock_delay.as_millis() as u64,
            ..Default::default()
        };
        let req = match options.kind {
            LockKind::Exclusive => req,
            LockKind::Read => pb::AcquireRequest { kind: pb::ResourceKind::Rwlock as i32, shared: true, ..req },
            LockKind::Write => pb::AcquireRequest { kind: pb::ResourceKind::Rwlock as i32, ..req },
            LockKind::Semaphore { permits, capacity } => {
                pb::AcquireRequest { kind: pb::ResourceKind::Semaphore as i32, permits, capacity, ..req }
            }
            LockKind::Election { value } => {
                pb::AcquireRequest { kind: pb::ResourceKind::Election as i32, value, ..req }
            }
            LockKind::Barrier { parties } => {
                pb::AcquireRequest { kind: pb::ResourceKind::Barrier as i32, parties, ..req }
            }
            LockKind::Latch => pb::AcquireRequest { kind: pb::ResourceKind::Latch as i32, ..req },
        };
        // If the caller stops waiting (drops this future), withdraw the request on the server so
        // that it is not granted to nobody.
        let mut withdraw =
            WithdrawOnDrop { session: Some(self.clone()), name: req.name.clone(), request_id: req.request_id };
        // The server answers a wait when it ends. One attempt waits at most `max_attempt`; then
        // the same request (same id: it does not queue twice) is sent again, to another node if
        // need be, so that a hung node cannot hold the caller forever. Only this call's attempt
        // ends: other calls on the same stream go on.
        let wait = Duration::from_millis(req.wait_ms);
        let options = &self.client.inner.options;
        let ms = |d: Duration| d.as_millis() as u64;
        let attempt = Duration::from_millis(crate::core::attempt_timeout_ms(
            req.wait_ms,
            ms(options.attempt_timeout),
            ms(options.max_attempt),
        ));
        let plan = Plan { repeat: Op::Acquire.repeat(), attempt, extra: wait };
        let r = self.client.attempts_as(plan, Target::Name(name), Some(self), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.acquire(req).await }
        });
        let r = r.await;
        // Keep the cancel-on-drop armed when the outcome is unknown: the acquire may sit in the
        // queue and be granted later to a session nobody uses for it (found by review). Only an
        // answer (granted, not granted, refused) makes the withdrawal unnecessary.
        if !matches!(r, Err(Error::OutcomeUnknown(_))) {
            withdraw.session = None;
        }
        let r = r?;
        if r.result == pb::acquire_response::Result::Granted as i32 {
            Ok(Some(LockGuard { session: self.clone(), name: name.to_string(), token: r.token, released: false }))
        } else {
            Ok(None)
        }
    }

    /// Gives the session a record in `group` if it has none yet (its first request there).
    pub(crate) async fn attach(&self, group: u64) -> Result<()> {
        if self.shared.attached_in(group) {
            return Ok(());
        }
        if !self.is_alive() {
            return Err(Error::LeaseLost(self.id()));
        }
        let req = pb::AttachSessionRequest {
            session_id: self.id(),
            client_id: self.client.inner.options.client_id.clone(),
            ttl_ms: self.ttl().as_millis() as u64,
            group,
            session_proof: self.shared.proof.clone(),
        };
        let clock = self.client.inner.clock;
        let sent_ms = clock.now_ms();
        let client = &self.client;
        let r = Box::pin(client.attempts(client.plan(Op::AttachSession), Target::Group(group), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.attach_session(req).await }
        }))
        .await;
        match r {
            Ok(_) => {
                self.shared.attached(group, sent_ms, clock.now_ms());
                self.client.inner.sessions_changed.notify_waiters();
                Ok(())
            }
            // Its home says it is gone: the whole session is.
            Err(e) if e.code() == Some(Code::NotFound) => {
                self.shared.mark_lost();
                Err(Error::LeaseLost(self.id()))
            }
            Err(e) => Err(e),
        }
    }

    /// Renews the lease now at every node instead of waiting for the background keepalive (e.g.
    /// before a long critical section). Returns false if the session is gone on the server.
    pub async fn keep_alive_once(&self) -> Result<bool> {
        let id = self.id();
        let clock = self.client.inner.clock;
        let timeout = self.client.inner.options.attempt_timeout;
        let mut answered = false;
        for addr in self.client.inner.router.nodes() {
            let Ok(mut c) = self.client.inner.router.conn_to(&addr) else { continue };
            let sent_ms = clock.now_ms();
            let req = pb::KeepAliveRequest { session_ids: vec![id] };
            if let Ok(Ok(r)) = tokio::time::timeout(timeout, c.renew(req)).await {
                let r = r.into_inner();
                crate::keepalive::apply(&self.client, &addr, &r, sent_ms);
                answered = true;
            }
        }
        if !answered {
            return Err(Error::Unreachable(timeout, "no node answered the renewal".into()));
        }
        Ok(self.is_alive())
    }

    /// Closes the session in every group it has a record in: its locks are released at once.
    pub async fn close(self) -> Result<()> {
        self.client.inner.sessions.lock().expect("sessions lock").remove(&self.id());
        let id = self.id();
        let mut result = Ok(());
        for group in self.shared.groups() {
            let r = self
                .client
                .attempts(self.client.plan(Op::CloseSession), Target::Group(group), |mut c, _| async move {
                    c.close_session(pb::CloseSessionRequest { session_id: id, group }).await
                })
                .await;
            match r {
                Ok(_) => {}
                Err(e) if e.code() == Some(Code::NotFound) => {}
                Err(e) => result = Err(e),
            }
        }
        result
    }
}

struct WithdrawOnDrop {
    session: Option<Session>,
    name: String,
    request_id: u64,
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let name = std::mem::take(&mut self.name);
        let request_id = self.request_id;
        rt.spawn(async move {
            let session_id = session.id();
            let r = session
                .client
                .attempts_as(session.client.plan(Op::Cancel), Target::Name(&name), Some(&session), |mut c, group| {
                    let req = pb::CancelRequest { name: name.clone(), session_id, request_id, group };
                    async move { c.cancel(req).await }
                })
                .await;
            if let Ok(pb::CancelResponse { granted_token }) = r {
                if granted_token != 0 {
                    let _ = release(&session, &name, granted_token).await;
                }
            }
        });
    }
}

/// A held lock. Released by [`LockGuard::release`], or in the background when dropped.
pub struct LockGuard {
    session: Session,
    name: String,
    token: u64,
    released: bool,
}

impl LockGuard {
    /// The fencing token: pass it to every write made under this lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session holding the lock.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// False once the session's lease is lost: the lock may belong to someone else now.
    pub fn is_lease_valid(&self) -> bool {
        self.session.is_alive()
    }

    /// Completes when the lease is lost (see [`Session::lost`]): stop the work done under the
    /// lock then, since it may be someone else's.
    pub async fn lease_lost(&self) {
        self.session.lost().await
    }

    /// Barriers and latches: nothing is held after passing; drop the guard without a release.
    fn passed(mut self) -> u64 {
        self.released = true;
        self.token
    }

    /// Elections: publishes a new value as the leader.
    pub async fn proclaim(&self, value: Vec<u8>) -> Result<()> {
        let req = pb::ProclaimRequest {
            name: self.name.clone(),
            session_id: self.session.id(),
            token: self.token,
            value,
            group: 0,
        };
        // Idempotent: the same value proclaimed twice is the same state.
        let client = &self.session.client;
        client
            .attempts_as(client.plan(Op::Proclaim), Target::Name(&self.name), Some(&self.session), |mut c, group| {
                let mut req = req.clone();
                req.group = group;
                async move { c.proclaim(req).await.map_err(AttemptError::from) }
            })
            .await
            .map(|_| ())
    }

    /// Releases the lock (for an election: resigns).
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        release(&self.session, &self.name, self.token).await
    }
}

async fn release(session: &Session, name: &str, token: u64) -> Result<()> {
    let name = name.to_string();
    let session_id = session.id();
    let r = session
        .client
        .attempts_as(session.client.plan(Op::Release), Target::Name(&name), Some(session), |mut c, group| {
            let req = pb::ReleaseRequest { name: name.clone(), session_id, token, group };
            async move { c.release(req).await }
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        // Released by an earlier attempt of this call whose answer was lost, or the session is
        // gone: either way we do not hold it.
        Err(e) if matches!(e.code(), Some(Code::FailedPrecondition) | Some(Code::NotFound)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            let name = std::mem::take(&mut self.name);
            let token = self.token;
            rt.spawn(async move {
                if let Err(e) = release(&session, &name, token).await {
                    tracing::warn!(lock = %name, "release on drop failed: {e}");
                }
            });
        }
    }
}
