//! `raft-step`: Raft messages from a peer stepped into a real baton-node `Node` (three groups,
//! an in-memory disk), after the checks the transport makes (a member's stream, `from` and
//! `to` right): the node is a follower, or the leader of one group after a real election, and
//! then gets up to eight messages of any type, with indexes and terms near its own or not,
//! each followed by the round the runtime would drive (`ready`, `persisted`).
//!
//! raft-rs panics on a message inconsistent with its log (a commit past the last index, a
//! conflict below the commit...); `Node::check_step` must refuse those before raft-rs sees
//! them. A case fails if anything panics, or if the node stops (`ready` or `persisted`
//! failing) after a message it allowed, except on an entry whose data does not decode or a
//! membership change raft-rs refuses: a leader's entries are trusted, and a replica that
//! cannot apply one must stop rather than skip it. `BATON_FUZZ_VERBOSE=1` with `--replay`
//! prints each message before it is stepped.

use baton_core::Limits;
use baton_node::{initial_groups, GroupId, Node, NodeConfig, Output, RaftMessage};
use raft::eraftpb::MessageType;

use crate::{gen, Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "raft-step",
    about: "peer Raft messages stepped into a baton-node Node (follower or leader), then its round",
    run,
    generate,
};

/// The node under test and its peers.
const ME: u64 = 1;
const PEERS: [u64; 2] = [2, 3];
/// Most messages in one case.
const MAX_MESSAGES: usize = 8;

/// A node of a 3-node cluster and the messages it sent.
struct Harness {
    node: Node,
    now: u64,
    sent: Vec<(u64, GroupId, RaftMessage)>,
}

impl Harness {
    fn new() -> Harness {
        let groups = initial_groups(ME, &[1, 2, 3], 1, 3, &Limits::default());
        let (node, _) = Node::new(NodeConfig::new(ME, vec![1, 2, 3]), groups).expect("a new node starts");
        let mut h = Harness { node, now: 1_000, sent: Vec::new() };
        h.node.set_time(h.now, h.now);
        h.round().expect("the first round");
        h
    }

    /// One round of the runtime: collect the work, make it durable, send.
    fn round(&mut self) -> Result<(), String> {
        for _ in 0..3 {
            self.node.ready()?;
            self.node.persisted()?;
            for out in self.node.take_outputs() {
                if let Output::Send { to, group, msg } = out {
                    self.sent.push((to, group, msg));
                }
            }
            if !self.node.has_ready() {
                break;
            }
        }
        Ok(())
    }

    /// Makes this node the leader of `group`, its peers answering as real ones would (pre-vote,
    /// vote, appends acknowledged).
    fn elect(&mut self, group: GroupId) -> Result<(), String> {
        self.node.campaign(group);
        for _ in 0..6 {
            self.round()?;
            for (to, g, msg) in std::mem::take(&mut self.sent) {
                if g != group {
                    continue;
                }
                let mut answer = RaftMessage { from: to, to: ME, term: msg.term, ..Default::default() };
                match msg.get_msg_type() {
                    MessageType::MsgRequestPreVote => answer.set_msg_type(MessageType::MsgRequestPreVoteResponse),
                    MessageType::MsgRequestVote => answer.set_msg_type(MessageType::MsgRequestVoteResponse),
                    MessageType::MsgAppend => {
                        answer.set_msg_type(MessageType::MsgAppendResponse);
                        answer.index = msg.index + msg.entries.len() as u64;
                    }
                    _ => continue,
                }
                self.node.step(g, answer);
            }
        }
        Ok(())
    }
}

fn run(input: &[u8]) {
    let verbose = std::env::var_os("BATON_FUZZ_VERBOSE").is_some();
    let mut src = Source::new(input);
    let mut h = Harness::new();
    let groups: Vec<GroupId> = h.node.groups();
    if src.bool() {
        let group = groups[src.index(groups.len())];
        h.elect(group).expect("a clean election does not stop the node");
    }
    for _ in 0..MAX_MESSAGES {
        if src.is_empty() {
            break;
        }
        let group = if src.below(16) == 0 { src.u64() } else { groups[src.index(groups.len())] };
        let status = h.node.status().into_iter().find(|s| s.id == group).unwrap_or_default();
        let from = PEERS[src.index(PEERS.len())];
        let msg = gen::raft_message(&mut src, from, ME, status.commit + status.log_entries, status.term);
        let allowed = h.node.check_step(group, &msg).is_ok();
        let described = format!("{msg:?} for group {group} (allowed: {allowed})");
        if verbose {
            eprintln!("stepping {described}");
        }
        h.node.step(group, msg);
        if src.below(4) == 0 {
            h.now += 100;
            h.node.set_time(h.now, h.now);
            h.node.tick();
        }
        match h.round() {
            Ok(()) => {}
            // A leader's entries are trusted (see `Node::check_step`): a replica that cannot
            // apply one stops, with this error, rather than skip it.
            Err(e) if e.contains("undecodable entry") || e.contains("conf change at") => return,
            Err(e) => panic!("the node stopped after stepping {described}: {e}"),
        }
        h.sent.clear();
    }
}

fn generate(src: &mut Source) -> Vec<u8> {
    // The input is the choices themselves.
    src.rest()
}
