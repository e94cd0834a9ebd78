//! What a peer's Raft message must be before raft-rs sees it ([`crate::Node::check_step`]).
//!
//! raft-rs 0.7 trusts its peers. Each class below is refused because raft-rs panics on it, or
//! because it would stop this node after raft-rs accepted it; a correct member never sends any
//! (the node tests and the simulation pass unchanged with the check). Found by fuzzing
//! `Node::step` (`crates/baton-fuzz`, target `raft-step`). Refused:
//! - a group this node does not hold (and did not create a replica of on that message);
//! - a message type local to a node (`MsgHup`, `MsgBeat`, `MsgUnreachable`,
//!   `MsgSnapStatus`, `MsgCheckQuorum`), which a peer never sends;
//! - a term or index of 2^62 or more, which no cluster reaches (raft-rs adds to terms and
//!   indexes unchecked: a term of `u64::MAX` wraps to 0 at the next campaign, a panic);
//! - a forwarded proposal or read-index request with a term (raft-rs sends them without
//!   one, and panics forwarding one with a term), any other message of term 0 but a
//!   leadership transfer request (term 0 matches any index past our log, as raft-rs reads
//!   its term as 0: a read-index answer would commit it, a vote would be answered in term
//!   0, a panic), a leadership transfer request to a replica that does not lead (raft-rs
//!   forwards it with its term: a panic; the request is simply lost, as when a leader
//!   changes under it);
//! - a request for a snapshot (`request_snapshot`: Baton never asks for one; a leader
//!   that has none panics);
//! - a vote or pre-vote with a priority other than 0 (every Baton node has 0): raft-rs
//!   answers a pre-vote it refuses in its own term, 0 in a new group (a panic);
//! - a log term past the message's term (appends, votes);
//! - an append after an index `index` > 0 of term 0 (raft-rs reads the term of an index
//!   past its log as 0: it would match, and commit entries this node never had), or whose
//!   entries do not follow `index` one by one with terms that are at least 1, never
//!   decrease and never pass the message's term (raft-rs panics on a conflict below its
//!   commit index, or on a gap);
//! - a heartbeat committing past our last index (raft-rs panics: "to_commit is out of
//!   range"), an acknowledgement of an append past our last index;
//! - a snapshot of a later term than its message, with no voters, or whose data does not
//!   decode as a state machine (it would stop this node once installed): the one check that
//!   costs something, a decode of every snapshot received;
//! - a read-index request or answer without exactly one entry (its context), a proposal
//!   without entries (raft-rs indexes the first unchecked, or panics: "stepped empty");
//! - a proposal forwarded by a follower (raft-rs forwards while leadership changes hands)
//!   whose entries do not decode as Baton's proposals or membership changes: the leader
//!   would put them in the log and every replica would stop applying it.
//!
//! # Caveats
//! - Only consistency is checked, not honesty: see [`crate::Node::check_step`] for what an
//!   authenticated but malicious member can still do (Raft is not Byzantine-tolerant).
//! - The entries of an append are not decoded (that would cost every entry a second decode on
//!   the followers' hot path): a leader's garbage entry stops the replicas that apply it.

use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType, Message, MessageType as M};

use super::{decode_conf_change, Group, Proposal};

/// No term or index reaches this (at a million elections or entries a second, it takes over
/// 100,000 years); raft-rs adds to terms and indexes unchecked, so one near `u64::MAX` wraps.
const MAX_TERM_OR_INDEX: u64 = 1 << 62;

impl Group {
    /// Why `msg`, from a peer, must not be stepped into this group's raft-rs (the classes are
    /// listed on [`crate::Node::check_step`]); `Ok` if it may be.
    pub(crate) fn check_message(&self, msg: &Message) -> Result<(), String> {
        let raft = &self.raw.raft;
        let log = &raft.raft_log;
        let last = log.last_index();
        let kind = msg.get_msg_type();
        match kind {
            M::MsgAppend
            | M::MsgAppendResponse
            | M::MsgRequestVote
            | M::MsgRequestVoteResponse
            | M::MsgRequestPreVote
            | M::MsgRequestPreVoteResponse
            | M::MsgSnapshot
            | M::MsgHeartbeat
            | M::MsgHeartbeatResponse
            | M::MsgTimeoutNow
            | M::MsgTransferLeader
            | M::MsgPropose
            | M::MsgReadIndex
            | M::MsgReadIndexResp => {}
            // Local to a node (raft-rs's own ticks and reports), never sent by a peer.
            M::MsgHup | M::MsgBeat | M::MsgUnreachable | M::MsgSnapStatus | M::MsgCheckQuorum => {
                return Err(format!("a {kind:?} is local to a node, not a peer's message"));
            }
        }
        let snapshot = msg.get_snapshot().get_metadata();
        let numbers = [msg.term, msg.log_term, msg.index, msg.commit, msg.commit_term, msg.reject_hint]
            .into_iter()
            .chain([msg.request_snapshot, snapshot.index, snapshot.term])
            .chain(msg.get_entries().iter().flat_map(|e| [e.index, e.term]));
        if let Some(n) = numbers.into_iter().find(|n| *n >= MAX_TERM_OR_INDEX) {
            return Err(format!("a {kind:?} with a term or index of {n}, past any real one"));
        }
        let vote = matches!(
            kind,
            M::MsgRequestVote | M::MsgRequestVoteResponse | M::MsgRequestPreVote | M::MsgRequestPreVoteResponse
        );
        if msg.request_snapshot != 0 {
            // Baton never asks for a snapshot (raft-rs's `request_snapshot`); a leader asked
            // before it has one panics ("need non-empty snapshot").
            return Err(format!("a {kind:?} asking for a snapshot at {}", msg.request_snapshot));
        }
        let forwarded = matches!(kind, M::MsgPropose | M::MsgReadIndex);
        if forwarded && msg.term != 0 {
            // raft-rs sends these without its term, and panics forwarding one with a term.
            return Err(format!("a {kind:?} of term {} (forwarded requests have none)", msg.term));
        }
        if !forwarded && msg.term == 0 && kind != M::MsgTransferLeader {
            // Term 0 matches any index past our log (raft-rs reads its term as 0): a read-index
            // answer would commit it; a vote would be answered in term 0, a panic.
            return Err(format!("a {kind:?} of term 0"));
        }
        if kind == M::MsgTransferLeader && raft.state != raft::StateRole::Leader {
            // A follower forwards it to its leader, term and all, which raft-rs panics on.
            return Err("a leadership transfer request for a replica that does not lead".into());
        }
        if vote && msg.priority != 0 {
            // Every Baton node has priority 0; a lower one is refused a pre-vote, which raft-rs
            // answers in its own term: 0 in a new group, and it panics sending that.
            return Err(format!("a {kind:?} with priority {} (every node has 0)", msg.priority));
        }
        if msg.log_term > msg.term && matches!(kind, M::MsgAppend | M::MsgRequestVote | M::MsgRequestPreVote) {
            return Err(format!("log term {} is past the message's term {}", msg.log_term, msg.term));
        }
        match kind {
            M::MsgAppend => {
                // raft-rs reads the term of an index past its log as 0: an append claiming term
                // 0 there would match, and commit entries this node never had.
                if msg.index > 0 && msg.log_term == 0 {
                    return Err(format!("an append after index {} of term 0", msg.index));
                }
                let mut previous = (msg.index, msg.log_term.max(1));
                for e in msg.get_entries() {
                    if e.index != previous.0.wrapping_add(1) || e.term < previous.1 || e.term > msg.term {
                        return Err(format!(
                            "entry {} of term {} does not follow entry {} of term {} in an append of term {}",
                            e.index, e.term, previous.0, previous.1, msg.term
                        ));
                    }
                    previous = (e.index, e.term);
                }
            }
            M::MsgReadIndex | M::MsgReadIndexResp if msg.entries.len() != 1 => {
                // raft-rs reads the request's context from its one entry, unchecked.
                return Err(format!("a {kind:?} with {} entries (one carries its context)", msg.entries.len()));
            }
            M::MsgPropose if msg.entries.is_empty() => return Err("a proposal without entries".into()),
            M::MsgPropose => {
                // Proposals a follower forwards to its leader (raft-rs does, during a change of
                // leader): the leader would put them in the log as they are.
                for e in msg.get_entries() {
                    let decodes = match e.get_entry_type() {
                        EntryType::EntryNormal => e.data.is_empty() || Proposal::decode(&e.data).is_ok(),
                        EntryType::EntryConfChange => decode_conf_change::<ConfChange>(&e.data).is_ok(),
                        EntryType::EntryConfChangeV2 => decode_conf_change::<ConfChangeV2>(&e.data).is_ok(),
                    };
                    if !decodes {
                        return Err(format!("a forwarded proposal of {} bytes does not decode", e.data.len()));
                    }
                }
            }
            M::MsgHeartbeat if msg.commit > last => {
                return Err(format!("a heartbeat commits index {} past our last index {last}", msg.commit));
            }
            M::MsgAppendResponse if !msg.reject && msg.index > last => {
                return Err(format!("an append is acknowledged up to index {} past our last index {last}", msg.index));
            }
            M::MsgSnapshot => {
                let meta = snapshot;
                if meta.term > msg.term || meta.conf_state.as_ref().is_none_or(|c| c.voters.is_empty()) {
                    return Err(format!(
                        "a snapshot of term {} with voters {:?} in a message of term {}",
                        meta.term,
                        meta.get_conf_state().voters,
                        msg.term
                    ));
                }
                // Installing it replaces the state machine: one that does not decode would stop
                // this node after raft-rs accepted it.
                if let Err(e) = baton_core::StateMachine::from_snapshot(&msg.get_snapshot().data) {
                    return Err(format!("a snapshot at index {} does not decode: {e}", meta.index));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use baton_core::Limits;
    use raft::eraftpb::{Entry, Message, MessageType as M, Snapshot};

    use crate::{initial_groups, Node, NodeConfig, DATA_GROUP};

    /// Node 1 of 3, as a new cluster starts it: every group a follower at term 0, empty logs.
    fn node() -> Node {
        let groups = initial_groups(1, &[1, 2, 3], 1, 3, &Limits::default());
        let (mut node, _) = Node::new(NodeConfig::new(1, vec![1, 2, 3]), groups).unwrap();
        node.set_time(1_000, 1_000);
        node.ready().unwrap();
        node.persisted().unwrap();
        node
    }

    fn msg(kind: M, term: u64) -> Message {
        let mut m = Message { from: 2, to: 1, term, ..Default::default() };
        m.set_msg_type(kind);
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    /// Refused by the check, and stepping it changes nothing and panics not.
    fn refused(node: &mut Node, m: Message, why: &str) {
        let err = node.check_step(DATA_GROUP, &m).expect_err(why);
        assert!(err.contains(why), "{err:?} does not say {why:?}");
        node.step(DATA_GROUP, m);
        node.ready().unwrap();
        node.persisted().unwrap();
    }

    #[test]
    fn what_a_correct_peer_sends_is_allowed() {
        let node = node();
        let mut append = msg(M::MsgAppend, 1);
        append.entries = vec![entry(1, 1), entry(2, 1)].into();
        let mut vote = msg(M::MsgRequestPreVote, 1);
        vote.index = 0;
        let mut read = msg(M::MsgReadIndex, 0);
        read.entries = vec![entry(0, 0)].into();
        for m in [append, vote, msg(M::MsgHeartbeat, 1), msg(M::MsgAppendResponse, 1), read] {
            assert_eq!(node.check_step(DATA_GROUP, &m), Ok(()), "{m:?}");
        }
        assert!(node.check_step(12_345, &msg(M::MsgHeartbeat, 1)).unwrap_err().contains("not held"));
    }

    #[test]
    fn local_message_types_are_refused() {
        let mut node = node();
        for kind in [M::MsgHup, M::MsgBeat, M::MsgUnreachable, M::MsgSnapStatus, M::MsgCheckQuorum] {
            refused(&mut node, msg(kind, 1), "local to a node");
        }
    }

    #[test]
    fn terms_and_indexes_past_any_real_one_are_refused() {
        let mut node = node();
        // A term of u64::MAX wrapped to 0 at the next campaign: a panic.
        refused(&mut node, msg(M::MsgTimeoutNow, u64::MAX), "past any real one");
        let mut m = msg(M::MsgAppend, 1);
        m.index = u64::MAX;
        refused(&mut node, m, "past any real one");
    }

    #[test]
    fn terms_that_raft_rs_would_mishandle_are_refused() {
        let mut node = node();
        refused(&mut node, msg(M::MsgRequestVote, 0), "of term 0");
        let mut read = msg(M::MsgReadIndexResp, 0);
        read.index = 1;
        read.entries = vec![entry(0, 0)].into();
        refused(&mut node, read, "of term 0");
        let mut forwarded = msg(M::MsgReadIndex, 1);
        forwarded.entries = vec![entry(0, 0)].into();
        refused(&mut node, forwarded, "forwarded requests have none");
        refused(&mut node, msg(M::MsgTransferLeader, 1), "does not lead");
        let mut vote = msg(M::MsgRequestPreVote, 1);
        vote.priority = -1;
        refused(&mut node, vote, "priority -1");
        let mut append = msg(M::MsgAppend, 1);
        append.log_term = 2;
        refused(&mut node, append, "past the message's term");
    }

    #[test]
    fn appends_inconsistent_with_the_log_are_refused() {
        let mut node = node();
        // Index 2 of term 0 "matches" past our log: raft-rs would commit index 2 (a panic).
        let mut m = msg(M::MsgAppend, 1);
        m.index = 2;
        m.commit = 2;
        refused(&mut node, m, "of term 0");
        let mut gap = msg(M::MsgAppend, 1);
        gap.entries = vec![entry(1, 1), entry(3, 1)].into();
        refused(&mut node, gap, "does not follow");
        let mut backwards = msg(M::MsgAppend, 2);
        backwards.entries = vec![entry(1, 2), entry(2, 1)].into();
        refused(&mut node, backwards, "does not follow");
        let mut future = msg(M::MsgAppend, 1);
        future.entries = vec![entry(1, 5)].into();
        refused(&mut node, future, "does not follow");
        let mut heartbeat = msg(M::MsgHeartbeat, 1);
        heartbeat.commit = 5;
        refused(&mut node, heartbeat, "past our last index");
        let mut ack = msg(M::MsgAppendResponse, 1);
        ack.index = 5;
        refused(&mut node, ack, "past our last index");
        let mut asks = msg(M::MsgAppendResponse, 1);
        asks.request_snapshot = 1;
        refused(&mut node, asks, "asking for a snapshot");
    }

    #[test]
    fn requests_without_their_entries_are_refused() {
        let mut node = node();
        refused(&mut node, msg(M::MsgPropose, 0), "without entries");
        refused(&mut node, msg(M::MsgReadIndex, 0), "with 0 entries");
        let mut garbage = msg(M::MsgPropose, 0);
        garbage.entries = vec![Entry { data: vec![1, 2, 3].into(), ..Default::default() }].into();
        refused(&mut node, garbage, "does not decode");
    }

    #[test]
    fn snapshots_that_would_stop_the_node_are_refused() {
        let mut node = node();
        let snapshot = |term: u64, voters: Vec<u64>, data: Vec<u8>| {
            let mut s = Snapshot { data: data.into(), ..Default::default() };
            s.mut_metadata().index = 5;
            s.mut_metadata().term = term;
            s.mut_metadata().mut_conf_state().voters = voters;
            let mut m = msg(M::MsgSnapshot, 1);
            m.set_snapshot(s);
            m
        };
        let state = baton_core::StateMachine::new(Limits::default()).to_snapshot();
        assert_eq!(node.check_step(DATA_GROUP, &snapshot(1, vec![1, 2, 3], state.clone())), Ok(()));
        refused(&mut node, snapshot(1, vec![1, 2, 3], vec![7; 9]), "does not decode");
        refused(&mut node, snapshot(2, vec![1, 2, 3], state.clone()), "in a message of term 1");
        refused(&mut node, snapshot(1, Vec::new(), state), "with voters []");
    }
}
