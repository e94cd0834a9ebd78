//! The nemesis: the faults a run injects, and the heal that lifts them.

use super::*;

/// Which faults the nemesis may inject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Drop messages.
    pub loss: bool,
    /// Deliver some messages twice.
    pub duplicate: bool,
    /// Occasional long delays (which also reorder).
    pub delay: bool,
    /// Network partitions: majority/minority, isolated leader, one-way, bridge; clients cut off
    /// from some nodes.
    pub partition: bool,
    /// Node crashes (losing what was not fsynced, tearing a write in flight) and restarts, crash
    /// loops; client crashes.
    pub crash: bool,
    /// Node and client pauses (a GC-like freeze), some longer than the session TTL.
    pub pause: bool,
    /// Clocks run at different rates, and node and client clocks jump forward (within the
    /// configured bounds).
    pub clock: bool,
    /// Slow fsyncs.
    pub disk: bool,
}

impl Faults {
    /// Every fault.
    pub fn all() -> Faults {
        Faults {
            loss: true,
            duplicate: true,
            delay: true,
            partition: true,
            crash: true,
            pause: true,
            clock: true,
            disk: true,
        }
    }

    /// Parses `all`, `none`, or a comma-separated list of fault names.
    pub fn parse(s: &str) -> Result<Faults, String> {
        match s {
            "all" => return Ok(Faults::all()),
            "none" => return Ok(Faults::default()),
            _ => {}
        }
        let mut f = Faults::default();
        for name in s.split(',').map(str::trim) {
            match name {
                "loss" => f.loss = true,
                "duplicate" => f.duplicate = true,
                "delay" => f.delay = true,
                "partition" => f.partition = true,
                "crash" => f.crash = true,
                "pause" => f.pause = true,
                "clock" => f.clock = true,
                "disk" => f.disk = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (known: loss, duplicate, delay, partition, crash, pause, clock, disk, all, none)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

impl World {
    /// An operator moves a random part of a random group's slots to another group: asked of
    /// the node that leads the meta group (if any is up and leads it), which then drives it.
    fn begin_move(&mut self) {
        let Some(at) = self.meta_leader() else { return };
        let t = self.nodes[&at].driver.as_ref().expect("up").node().topology().expect("a meta group").clone();
        let with_slots: Vec<(u64, (u16, u16))> =
            t.groups.iter().filter_map(|(g, p)| p.slots.ranges().first().map(|r| (*g, *r))).collect();
        if with_slots.is_empty() {
            return;
        }
        let (from, (a, b)) = with_slots[self.rng.gen_range(0..with_slots.len())];
        let len = self.rng.gen_range(1..=(b - a + 1).div_ceil(2));
        let start = self.rng.gen_range(a..=b + 1 - len);
        let groups: Vec<u64> = t.data_groups().map(|(g, _)| g).filter(|g| *g != from).collect();
        let to = groups[self.rng.gen_range(0..groups.len())];
        let end = start + len - 1;
        self.trace(format!("nemesis: move slots {start}-{end} from group {from} to group {to} (asked of node {at})"));
        let request = baton_node::Request::Propose(baton_core::Command::BeginMove { start, end, to });
        self.input(at, Input::Request { client: ADMIN, creq: 0, group: Some(baton_node::META_GROUP), request });
    }

    /// An operator adds a node that is not a member (a spare, or one removed before), or
    /// removes a member while more than the founders' number are members: asked of the meta
    /// group's leader.
    fn change_members(&mut self, add: bool) {
        let Some(at) = self.meta_leader() else { return };
        let t = self.nodes[&at].driver.as_ref().expect("up").node().topology().expect("a meta group").clone();
        let command = if add {
            let outside: Vec<u64> = self.nodes.keys().copied().filter(|id| !t.nodes.contains_key(id)).collect();
            if outside.is_empty() {
                return;
            }
            let id = outside[self.rng.gen_range(0..outside.len())];
            self.trace(format!("nemesis: add node {id} (asked of node {at})"));
            let addr = format!("127.0.0.{id}:7000");
            baton_core::Command::AddNode { id, peer_addr: addr.clone(), client_addr: addr }
        } else {
            if t.nodes.len() <= self.cfg.nodes {
                return;
            }
            let members: Vec<u64> = t.nodes.keys().copied().collect();
            let id = members[self.rng.gen_range(0..members.len())];
            self.trace(format!("nemesis: remove node {id} (asked of node {at})"));
            baton_core::Command::RemoveNode { id }
        };
        let request = baton_node::Request::Propose(command);
        self.input(at, Input::Request { client: ADMIN, creq: 0, group: Some(baton_node::META_GROUP), request });
    }

    /// The up node that leads the meta group, if any.
    fn meta_leader(&self) -> Option<u64> {
        self.up_nodes().into_iter().find(|id| {
            let node = self.nodes[id].driver.as_ref().expect("up").node();
            node.status().iter().any(|g| g.id == baton_node::META_GROUP && g.role == baton_node::Role::Leader)
        })
    }

    pub(super) fn up_nodes(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.driver.is_some()).map(|(id, _)| *id).collect()
    }

    pub(super) fn nemesis(&mut self) {
        let f = self.cfg.faults;
        let mut choices = Vec::new();
        if f.partition {
            if self.cfg.nodes >= 3 {
                choices.extend(["split", "isolate-leader", "one-way", "bridge"]);
            }
            choices.extend(["cut-client", "heal-network"]);
            if self.cfg.nodes >= 3 {
                // Not a fault but an operation (placement will use it): the leader hands over,
                // refusing proposals meanwhile (expiries and ticks must be proposed again).
                choices.push("transfer-leader");
            }
        }
        if f.crash {
            choices.extend(["crash", "crash-leader", "crash-loop-leader", "crash-mid-write", "crash-client"]);
        }
        if f.pause {
            choices.extend(["pause", "pause-client"]);
        }
        if f.disk {
            choices.push("slow-disk");
        }
        if f.clock && self.cfg.max_jump_ms > 0 {
            choices.extend(["clock-jump", "client-clock-jump"]);
        }
        if self.cfg.groups > 1 {
            // Not a fault but an operation, under every fault: a slot move (and its retries).
            choices.extend(["move-slots", "move-slots"]);
        }
        if self.cfg.spares > 0 {
            // Operations too: a member joins, a member leaves.
            choices.extend(["add-node", "remove-node"]);
        }
        if choices.is_empty() {
            return;
        }
        let choice = choices[self.rng.gen_range(0..choices.len())];
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        match choice {
            "split" => {
                self.blocked.clear();
                let minority = self.rng.gen_range(1..=(ids.len() - 1) / 2);
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = self.rng.gen_range(0..=i);
                    shuffled.swap(i, j);
                }
                let (small, big) = shuffled.split_at(minority);
                self.cut(small, big, true);
                self.trace(format!("nemesis: partition {small:?} | {big:?}"));
            }
            "isolate-leader" => {
                if let Some(l) = self.leader {
                    self.blocked.clear();
                    let others: Vec<u64> = ids.iter().copied().filter(|&i| i != l).collect();
                    self.cut(&[l], &others, true);
                    self.trace(format!("nemesis: isolate leader {l}"));
                }
            }
            "one-way" => {
                let a = ids[self.rng.gen_range(0..ids.len())];
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != a).collect();
                self.cut(&[a], &others, false);
                self.trace(format!("nemesis: node {a} cannot send to anyone"));
            }
            "bridge" => {
                // Two halves that only one node (the bridge) can talk to.
                self.blocked.clear();
                let bridge = ids[self.rng.gen_range(0..ids.len())];
                let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != bridge).collect();
                let (a, b) = rest.split_at(rest.len() / 2);
                self.cut(a, b, true);
                self.trace(format!("nemesis: bridge {bridge} between {a:?} and {b:?}"));
            }
            "cut-client" => {
                // A client that cannot reach some nodes (the leader, often): it must move on.
                let c = self.rng.gen_range(0..self.clients.len());
                let mut cut = Vec::new();
                for &id in &ids {
                    if Some(id) == self.leader || self.rng.gen_bool(0.3) {
                        self.cut_clients.insert((c, id));
                        cut.push(id);
                    }
                }
                self.trace(format!("nemesis: client {c} cannot reach nodes {cut:?}"));
            }
            "crash-mid-write" => {
                let up = self.up_nodes();
                let target = self.leader.filter(|l| up.contains(l)).or_else(|| up.first().copied());
                if let Some(id) = target {
                    self.crash_mid_write.insert(id);
                    self.trace(format!("nemesis: node {id} will crash in the middle of its next write"));
                }
            }
            "transfer-leader" => {
                let up = self.up_nodes();
                if let Some(l) = self.leader.filter(|l| up.contains(l)) {
                    let others: Vec<u64> = up.iter().copied().filter(|&i| i != l).collect();
                    let led = self.nodes[&l].driver.as_ref().expect("up").node().leading();
                    if !others.is_empty() && !led.is_empty() {
                        let to = others[self.rng.gen_range(0..others.len())];
                        let group = led[self.rng.gen_range(0..led.len())];
                        self.trace(format!("nemesis: leader {l} of group {group} transfers leadership to {to}"));
                        let n = self.nodes.get_mut(&l).expect("node");
                        n.driver.as_mut().expect("up").node_mut().transfer_leader(group, to);
                        self.rounds(l);
                    }
                }
            }
            "move-slots" => self.begin_move(),
            "add-node" | "remove-node" => self.change_members(choice == "add-node"),
            "heal-network" => {
                self.blocked.clear();
                self.cut_clients.clear();
                self.trace("nemesis: network healed".into());
            }
            "crash" | "crash-leader" => {
                let up = self.up_nodes();
                let target = if choice == "crash-leader" { self.leader.filter(|l| up.contains(l)) } else { None }
                    .or_else(|| (!up.is_empty()).then(|| up[self.rng.gen_range(0..up.len())]));
                if let Some(id) = target {
                    self.crash_node(id);
                    let back = self.rng.gen_range(200..4_000) * MS;
                    self.at(self.now + back, Ev::Restart(id));
                }
            }
            "crash-loop-leader" => {
                // A leader that crashes, comes back at once (often with entries nobody else has,
                // so it may win again), and crashes again soon: few requests between its
                // starts, so request ids of one run meet those of the next.
                if let Some(id) = self.leader.filter(|l| self.nodes[l].driver.is_some()) {
                    self.crash_node(id);
                    let back = self.rng.gen_range(50..500) * MS;
                    self.at(self.now + back, Ev::Restart(id));
                    for _ in 0..self.rng.gen_range(1..4) {
                        let again = self.rng.gen_range(500..3_000) * MS;
                        self.at(self.now + again, Ev::Recrash(id));
                    }
                }
            }
            "crash-client" => {
                let c = self.rng.gen_range(0..self.clients.len());
                if self.clients[c].alive {
                    self.clients[c].crash(self.now, &mut self.hist);
                    self.trace(format!("nemesis: client {c} crashes"));
                    let back = self.rng.gen_range(500..5_000) * MS;
                    self.at(self.now + back, Ev::RestartClient(c));
                }
            }
            "pause" => {
                let up = self.up_nodes();
                if !up.is_empty() {
                    let id = up[self.rng.gen_range(0..up.len())];
                    let ms = self.rng.gen_range(100..self.cfg.ttl_ms * 2);
                    let n = self.nodes.get_mut(&id).expect("node");
                    n.paused = true;
                    let epoch = n.epoch;
                    self.trace(format!("nemesis: pause node {id} for {ms} ms"));
                    self.at(self.now + ms * MS, Ev::Resume(id, epoch));
                }
            }
            "pause-client" => {
                // A client process frozen (GC, SIGSTOP), sometimes past its session's TTL: its
                // lease must run out on its own clock, and what it held be handed on.
                let c = self.rng.gen_range(0..self.clients.len());
                let ms = self.rng.gen_range(100..self.cfg.ttl_ms * 2);
                self.clients[c].pause(self.now + ms * MS);
                self.trace(format!("nemesis: client {c} pauses for {ms} ms"));
                self.client_step(c, None);
            }
            "client-clock-jump" => {
                let c = self.rng.gen_range(0..self.clients.len());
                let ms = self.rng.gen_range(1..=self.cfg.max_jump_ms);
                self.clients[c].jump_clock(ms);
                self.trace(format!("nemesis: client {c}'s clock jumps {ms} ms forward"));
            }
            "slow-disk" => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                let slow = (self.rng.gen_range(5..50), self.rng.gen_range(50..200));
                self.nodes.get_mut(&id).expect("node").disk_ms = slow;
                self.trace(format!("nemesis: slow disk on node {id}: {slow:?} ms"));
            }
            "clock-jump" => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                let ms = self.rng.gen_range(1..=self.cfg.max_jump_ms);
                self.nodes.get_mut(&id).expect("node").clock.offset_ms += ms;
                self.trace(format!("nemesis: node {id}'s clock jumps {ms} ms forward"));
            }
            _ => unreachable!("unknown nemesis choice"),
        }
    }

    pub(super) fn cut(&mut self, a: &[u64], b: &[u64], both_ways: bool) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                if both_ways {
                    self.blocked.insert((y, x));
                }
            }
        }
    }

    pub(super) fn heal(&mut self) {
        self.healed = true;
        self.blocked.clear();
        self.cut_clients.clear();
        self.crash_mid_write.clear();
        self.loss = 0.0;
        self.duplicate = 0.0;
        self.spike = 0.0;
        self.trace("heal: all faults lifted".into());
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = self.nodes.get_mut(&id).expect("node");
            n.disk_ms = (0, 1);
            if n.driver.is_none() {
                self.start_node(id);
            } else if n.paused {
                n.paused = false;
                self.drain(id);
            }
        }
        for c in 0..self.clients.len() {
            if !self.clients[c].alive {
                self.clients[c].restart(self.now);
                self.client_step(c, None);
            }
        }
    }
}
