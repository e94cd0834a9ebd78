//! A group's linearizable reads and keepalives: ReadIndex rounds, leader leases, serving.

use super::*;

impl Group {
    pub(crate) fn read(
        &mut self,
        id: RequestId,
        query: Query,
        user: Option<Arc<str>>,
        now: u64,
        config: &NodeConfig,
    ) -> Result<(), NodeError> {
        if self.bugs.stale_reads && !matches!(query, Query::KeepAlive(_)) {
            // Deliberate bug: answer from local state, leader or not, without ReadIndex.
            self.reads_ready.push((0, PendingRead { id, query, since_ms: now, user }));
            return Ok(());
        }
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        let waiting = self.proposals.len() + self.reads_queued.len();
        // Renewals are not refused for overload: refusing them turns overload into mass session
        // expiry, which frees nothing and hands every lock on (issue 9, defect 8). They have
        // four times the room (one per client stream is in flight), so a flood is still bounded.
        let renewal = matches!(query, Query::KeepAlive(_) | Query::EtcdLease { renew: true, .. });
        let room = if renewal { config.max_pending.saturating_mul(4) } else { config.max_pending };
        if waiting >= room {
            return Err(NodeError::Busy(waiting));
        }
        let read = PendingRead { id, query, since_ms: now, user };
        // Not during a leadership transfer: the new leader's election ignores the followers'
        // vote-refusal window the lease rests on (the review found it with placement on).
        let transferring = self.raw.raft.lead_transferee.is_some();
        if now < self.lease_until_ms && !transferring && self.raw.raft.commit_to_current_term() {
            // Lease read (NodeConfig::lease_read_ms): no other leader can exist yet, so what is
            // committed now is the latest; serve once it has applied.
            self.reads_ready.push((self.raw.raft.raft_log.committed, read));
            return Ok(());
        }
        self.reads_queued.push(read);
        Ok(())
    }

    /// Starts a ReadIndex round for the queued reads, once this leader has committed an entry
    /// of its term (raft-rs drops read requests before that).
    pub(super) fn start_read_round(&mut self, now: u64, config: &NodeConfig) {
        if self.reads_queued.is_empty() || self.role != Role::Leader || !self.raw.raft.commit_to_current_term() {
            return;
        }
        let round = self.next_read_round;
        self.next_read_round += 1;
        // A round started during a leadership transfer does not extend the lease: the
        // transferee's election ignores the vote-refusal window (review finding).
        if config.lease_read_ms > 0 && self.raw.raft.lead_transferee.is_none() {
            self.round_started_ms.insert(round, now);
        }
        self.reads_in_flight.insert(round, std::mem::take(&mut self.reads_queued));
        self.raw.read_index(round.to_be_bytes().to_vec());
    }

    pub(super) fn serve_reads(&mut self, now: u64, out: &mut Vec<Output>) {
        let applied = self.sm.applied_index();
        let ready: Vec<(u64, PendingRead)> = self.reads_ready.extract_if(.., |(index, _)| *index <= applied).collect();
        for (_, r) in ready {
            // With authentication on, another user's sessions read as absent, and are not renewed.
            let theirs = |session: SessionId| r.user.as_deref().is_none_or(|u| self.sm.session_is_theirs(session, u));
            let name = match &r.query {
                Query::Lock(n) | Query::Counter(n) | Query::Register(n) => Some(n),
                Query::Session(_) | Query::KeepAlive(_) => None,
                Query::EtcdRange(_) | Query::EtcdLease { .. } | Query::EtcdLeases | Query::EtcdAlarms => {
                    let result = self.serve_etcd(&r.query, now);
                    out.push(Output::Reply { id: r.id, result });
                    continue;
                }
            };
            if let Some(Err(e)) = name.map(|n| self.sm.check_owned(n)) {
                // The name's slot moved away before the read was served: refused, like a write.
                out.push(Output::Reply { id: r.id, result: Err(NodeError::Rejected(e)) });
                continue;
            }
            let reply = match &r.query {
                Query::EtcdRange(_) | Query::EtcdLease { .. } | Query::EtcdLeases | Query::EtcdAlarms => {
                    unreachable!("served above")
                }
                Query::Lock(name) => match self.sm.lock(name) {
                    Some(l) => Reply::Lock {
                        kind: l.kind,
                        holders: l.holders.clone(),
                        waiters: l.waiters.iter().cloned().collect(),
                        closed_until_ms: l.closed_until_ms,
                        now_ms: self.sm.now_ms(),
                    },
                    None => Reply::Lock {
                        kind: baton_core::Kind::Mutex,
                        holders: Vec::new(),
                        waiters: Vec::new(),
                        closed_until_ms: 0,
                        now_ms: self.sm.now_ms(),
                    },
                },
                Query::Session(id) => Reply::Session(
                    self.sm
                        .session(*id)
                        .filter(|_| theirs(*id))
                        .map(|s| (s.ttl_ms, s.owned.iter().map(String::from).collect())),
                ),
                Query::Counter(name) => Reply::Counter(self.sm.counter(name)),
                Query::Register(name) => Reply::Register(self.sm.register(name).map(|r| (r.value.clone(), r.version))),
                Query::KeepAlive(sessions) => {
                    let mut leases = Vec::with_capacity(sessions.len());
                    for &id in sessions.iter() {
                        match self.sm.session(id) {
                            Some(s) if !self.expiring.contains(&id) && theirs(id) => {
                                // Confirmed leader: the lease runs a full TTL from now.
                                self.leases.set(id, now + s.ttl_ms);
                                leases.push((id, Some((s.ttl_ms, s.moved_to.iter().copied().collect()))));
                            }
                            _ => leases.push((id, None)),
                        }
                    }
                    Reply::KeepAlive(leases)
                }
            };
            out.push(Output::Reply { id: r.id, result: Ok(reply) });
        }
    }

    /// An etcd read or lease call, served from the keyspace this group holds.
    fn serve_etcd(&mut self, query: &Query, now: u64) -> Result<Reply, NodeError> {
        let Some(etcd) = self.sm.etcd() else {
            return Err(NodeError::Rejected(baton_core::Error::InvalidArgument(format!(
                "group {} does not hold the etcd keyspace",
                self.id
            ))));
        };
        let revision = etcd.revision();
        match query {
            Query::EtcdRange(req) => etcd
                .range(req)
                .map(|response| Reply::EtcdRange { revision, response })
                .map_err(|e| NodeError::Rejected(e.into())),
            Query::EtcdAlarms => Ok(Reply::EtcdAlarms { revision, alarms: etcd.alarms() }),
            Query::EtcdLeases => {
                Ok(Reply::EtcdLeases { revision, ids: etcd.leases().iter().map(|(id, _)| id).collect() })
            }
            Query::EtcdLease { ids, renew, keys } => {
                let lease = |id: &i64| etcd.leases().get(*id).filter(|l| !self.expiring.contains(&l.session));
                let leases = ids.iter().map(|id| {
                    lease(id).map(|l| {
                        let ttl_ms = self.sm.session(l.session).map_or(l.ttl_s as u64 * 1000, |s| s.ttl_ms);
                        if *renew {
                            // Confirmed leader (served after a ReadIndex round or within the lease):
                            // the lease runs a full TTL from now, as a session keepalive does.
                            self.leases.set(l.session, now + ttl_ms);
                        }
                        let deadline = self.leases.deadline(l.session).unwrap_or(now + ttl_ms);
                        crate::EtcdLeaseInfo {
                            granted_s: l.ttl_s,
                            remaining_s: (deadline.saturating_sub(now) / 1000) as i64,
                            keys: if *keys { l.keys.iter().cloned().collect() } else { Vec::new() },
                        }
                    })
                });
                Ok(Reply::EtcdLease { revision, leases: leases.collect() })
            }
            _ => unreachable!("not an etcd query"),
        }
    }
}
