//! Hibernation: an idle group stops ticking, so it costs no heartbeat per tick.
//!
//! A leader whose group has had nothing to do for more than an election timeout (no new entry,
//! nothing proposed, read or being sent, every follower holding every entry) stops ticking
//! raft-rs: no heartbeats, no quorum checks. Instead its node sends each peer, once per tick,
//! one notice listing every group it leads that sleeps, with its term ([`crate::Node`]'s
//! node channel). A follower that gets such a notice from the leader it knows, at its own term,
//! does not tick for the next [`NOTICE_TICKS`] ticks: its election timer stands still, so it
//! does not campaign against a leader that is alive but quiet. Anything that is not idle wakes
//! the group: a proposal or read at the leader (whose appends or read round wake the
//! followers), a message from the leader at a follower, a vote request at the leader (a member
//! that does not know the leader, e.g. after a restart, learns it from the heartbeats that
//! follow).
//!
//! Safety does not rest on any of this: a group that does not tick only elects later. The read
//! lease argument still holds: a follower's election timer counts ticks, and a sleeping
//! follower counts fewer, so it refuses other candidates for longer, never shorter. The cost is
//! failover time: when a sleeping leader's node fails, its followers notice after their
//! notices run out ([`NOTICE_TICKS`]), then wait out their election timeout.

use super::*;

/// Ticks a follower stands still on one notice from its sleeping leader (notices come every
/// tick: two may be lost in a row).
pub(crate) const NOTICE_TICKS: u32 = 3;

impl Group {
    /// Called once per tick, before raft-rs would tick: whether it does. Updates whether this
    /// replica sleeps (see the module docs).
    pub(super) fn raft_ticks(&mut self, config: &NodeConfig) -> bool {
        if self.role != Role::Leader {
            self.asleep = false;
            self.idle_ticks = 0;
            if self.notice_ticks > 0 && self.raw.raft.state == StateRole::Follower {
                if !self.bugs.sleeper_never_wakes {
                    self.notice_ticks -= 1;
                }
                return false;
            }
            self.notice_ticks = 0;
            return true;
        }
        let last = self.raw.raft.raft_log.last_index();
        let quiet = self.idle() && last == self.idle_since_index;
        self.idle_since_index = last;
        self.idle_ticks = if quiet { self.idle_ticks.saturating_add(1) } else { 0 };
        let election_ticks = config.election_ticks as u64;
        if self.asleep && self.idle_ticks.is_multiple_of(election_ticks) {
            // The quorum check raft-rs would run, on the followers' answers to the notices: a
            // leader that no longer hears a quorum wakes, so that raft-rs's own check (after
            // an election timeout of heartbeats) steps it down, and its followers, no longer
            // kept still by notices, elect another.
            let id = self.raw.raft.id;
            if !self.raw.raft.mut_prs().quorum_recently_active(id) {
                self.idle_ticks = 0;
            }
        }
        let asleep = self.idle_ticks > election_ticks;
        if self.asleep && !asleep {
            // A full election timeout of heartbeats before the next quorum check, counting
            // only what the followers answer from now on.
            self.raw.raft.election_elapsed = 0;
            let id = self.raw.raft.id;
            for (peer, p) in self.raw.raft.mut_prs().iter_mut() {
                if *peer != id {
                    p.recent_active = false;
                }
            }
        }
        self.asleep = asleep;
        !asleep
    }

    /// Nothing to do: no request in flight, nothing unapplied, every follower has every entry
    /// and replicates normally, no transfer or membership change under way.
    fn idle(&self) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        self.proposals.is_empty()
            && self.reads_queued.is_empty()
            && self.reads_in_flight.is_empty()
            && self.reads_ready.is_empty()
            && self.expiring.is_empty()
            && self.snapshot_to_write.is_none()
            && self.pending_ready.is_none()
            && raft.lead_transferee.is_none()
            && raft.pending_conf_index <= raft.raft_log.applied
            && raft.raft_log.committed == last
            && raft.raft_log.applied == last
            && raft.prs().iter().all(|(id, p)| {
                // A follower must know the commit too: notices carry none.
                *id == raft.id
                    || (p.matched == last
                        && p.committed_index >= raft.raft_log.committed
                        && p.state == ProgressState::Replicate)
            })
    }

    /// The term of this leader's group if it sleeps (its followers get a notice).
    pub(crate) fn sleeping_term(&self) -> Option<u64> {
        (self.role == Role::Leader && self.asleep).then_some(self.raw.raft.term)
    }

    /// The other members of the group (voters and learners).
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        let raft = &self.raw.raft;
        raft.prs().iter().map(|(id, _)| *id).filter(|id| *id != raft.id).collect()
    }

    /// A notice from node `from`: it leads this group at `term` and sleeps. Returns whether
    /// this replica accepted it (the leader hears so: [`Group::follower_hears`]).
    pub(crate) fn leader_sleeps(&mut self, from: NodeId, term: u64) -> bool {
        let raft = &self.raw.raft;
        let accepted =
            raft.state == StateRole::Follower && self.leader == Some(from) && raft.term == term && self.is_member();
        if accepted {
            self.notice_ticks = NOTICE_TICKS;
        }
        accepted
    }

    /// Follower `from` accepted this sleeping leader's notice at `term`: it counts as active
    /// for the quorum check that a sleeping leader runs itself.
    pub(crate) fn follower_hears(&mut self, from: NodeId, term: u64) {
        let raft = &mut self.raw.raft;
        if raft.state == StateRole::Leader && raft.term == term && self.asleep {
            if let Some(p) = raft.mut_prs().get_mut(from) {
                p.recent_active = true;
            }
        }
    }

    /// A message is about to be stepped: it may end a sleep.
    pub(super) fn wake_for(&mut self, msg: &Message) {
        if self.role == Role::Leader {
            if matches!(msg.get_msg_type(), MessageType::MsgRequestPreVote | MessageType::MsgRequestVote) {
                self.idle_ticks = 0;
            }
        } else if Some(msg.from) == self.leader && !self.bugs.sleeper_never_wakes {
            self.notice_ticks = 0;
        }
    }

    /// True while this replica sleeps (a leader that stopped ticking, or a follower standing
    /// still on its leader's notice).
    pub(crate) fn asleep(&self) -> bool {
        self.asleep || self.notice_ticks > 0
    }
}
