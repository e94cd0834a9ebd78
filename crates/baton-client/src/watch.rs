//! Watches and election observers: event streams that resume by themselves.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_proto::v1 as pb;

use crate::core::{decide, Decision, Op};
use crate::retry::AttemptError;
use crate::routing::Target;
use crate::{Client, Leader, Result};

impl Client {
    /// Watches `name` (or every name starting with it, in every group, with `prefix`) from
    /// sequence number `start_seq` of the name's group (0: from now). The stream resumes by
    /// itself, on any node, after a broken connection, without missing or repeating events
    /// (it keeps one position per group); it ends with an error if the history it needs is gone
    /// (`OUT_OF_RANGE`: read the state and watch again from the seq named).
    pub fn watch(
        &self,
        name: &str,
        prefix: bool,
        start_seq: u64,
    ) -> tokio::sync::mpsc::Receiver<Result<pb::WatchEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let client = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            // The next sequence number wanted, per group (a name's group, or every group of a
            // prefix watch once it has seen them).
            let mut next: BTreeMap<u64, u64> = BTreeMap::new();
            let mut backoff = Duration::from_millis(20);
            let attempt = client.inner.options.attempt_timeout;
            loop {
                let Ok((addr, mut c)) = client.inner.router.current(None) else { return };
                let group = client.inner.router.group(Target::Name(&name)).unwrap_or(1);
                let start = if next.is_empty() { start_seq } else { next.get(&group).copied().unwrap_or(0) };
                let req = pb::WatchRequest {
                    name: name.clone(),
                    prefix,
                    start_seq: start,
                    start_seqs: if prefix { next.clone().into_iter().collect() } else { Default::default() },
                    crdt: false,
                };
                let error = match tokio::time::timeout(attempt, c.watch(req)).await {
                    Err(_) => AttemptError::NoAnswer(format!("no watch stream from {addr} within {attempt:?}")),
                    Ok(Err(s)) => AttemptError::from(s),
                    Ok(Ok(stream)) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(e)) => {
                                    next.insert(e.group, e.seq + 1);
                                    backoff = Duration::from_millis(20);
                                    if e.r#type == "sync" {
                                        continue; // only tells where the watch starts
                                    }
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => break AttemptError::NoAnswer("the watch stream ended".into()),
                                Err(s) => break AttemptError::from(s),
                            }
                        }
                    }
                };
                // Resuming from `next` is harmless anywhere: only a refusal (the history is
                // gone, a bad name) ends the watch.
                let leader = match decide(error.class(), Op::Read.repeat()) {
                    Decision::Refused | Decision::OutcomeUnknown => {
                        let _ = tx.send(Err(error.into_error())).await;
                        return;
                    }
                    Decision::Retry { leader, .. } => leader,
                };
                if tx.is_closed() {
                    return;
                }
                client.inner.router.moved_on(None, &addr, leader.as_deref());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        });
        rx
    }

    /// Observes the election `name`: first its current leader, then every change (a new leader,
    /// a proclaimed value, or no leader: session 0), in order.
    pub async fn observe(&self, name: &str) -> Result<tokio::sync::mpsc::Receiver<Result<Leader>>> {
        // Subscribe first, then read the current leader, so no change can fall in between; a
        // change already reflected in the read shows up again and is skipped by its token.
        let mut events = self.watch(name, false, 0);
        let d = self.describe(name).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let current = d.holders.first().map_or(Leader::default(), |h| Leader {
            session: h.session_id,
            token: h.token,
            value: h.value.clone(),
        });
        tokio::spawn(async move {
            let mut last = current.clone();
            if tx.send(Ok(current)).await.is_err() {
                return;
            }
            while let Some(e) = events.recv().await {
                let e = match e {
                    Ok(e) if e.r#type == "leader" => e,
                    Ok(_) => continue,
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                };
                let leader = Leader { session: e.session_id, token: e.token, value: e.value };
                if leader == last || (leader.token != 0 && leader.token < last.token) {
                    continue;
                }
                last = leader.clone();
                if tx.send(Ok(leader)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
