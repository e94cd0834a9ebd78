//! `baton cluster ...`: the cluster's layout, changed online.

use super::*;
use baton_core::slots::{format_ranges, parse_range, SLOTS};

/// The `cluster` commands.
#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Show the slot map: every data group's slots, replicas and leader.
    Slots {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Move slots START-END (all served by one group) to GROUP, online: locks with their
    /// holders, waiters and tokens, sessions and values go along; clients see at most a retry.
    MoveSlots {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// The slots, START-END (inclusive) or one slot.
        range: String,
        /// The data group to move them to.
        group: u64,
    },
    /// Even out the slots over the data groups (moves from the groups with the most to those
    /// with the fewest until they differ by at most one); prints each move.
    Balance {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
    },
    /// Add a member (started with `baton server --join`): every group gets a replica on it;
    /// waits until it is a voter of every group.
    AddNode {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its address for other nodes.
        #[arg(long)]
        peer_addr: String,
        /// Its address for clients.
        #[arg(long)]
        client_addr: String,
    },
    /// Remove a member: every group's replica on it goes (its leaderships move first); waits
    /// until no group lists it.
    RemoveNode {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// The node's id.
        id: u64,
    },
}

pub(crate) async fn run(cmd: ClusterCmd) -> ExitCode {
    match cmd {
        ClusterCmd::Slots { endpoints, json } => slots(endpoints, json).await,
        ClusterCmd::MoveSlots { endpoints, range, group } => {
            let (start, end) = match parse_range(&range) {
                Ok(r) => r,
                Err(e) => return fail(EXIT_USAGE, e),
            };
            let client = match connect(&endpoints).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            match client.move_slots(start, end, group).await {
                Ok(r) => {
                    out!(
                        "moved slots {start}-{end} to group {group} (move {}, slot map version {})",
                        r.move_id,
                        r.version
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => client_error(e),
            }
        }
        ClusterCmd::Balance { endpoints } => balance(endpoints).await,
        ClusterCmd::AddNode { endpoints, id, peer_addr, client_addr } => {
            let client = match connect(&endpoints).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = client.add_node(id, &peer_addr, &client_addr).await {
                return client_error(e);
            }
            out!("node {id} added; waiting until it is a voter of every group");
            wait_members(&client, id, true).await
        }
        ClusterCmd::RemoveNode { endpoints, id } => {
            let client = match connect(&endpoints).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = client.remove_node(id).await {
                return client_error(e);
            }
            out!("node {id} removed from the membership; waiting until no group lists it");
            wait_members(&client, id, false).await
        }
    }
}

/// Waits (at most a minute) until every group's replicas include `id` (`present`) or none does.
async fn wait_members(client: &Client, id: u64, present: bool) -> ExitCode {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = client.status().await {
            if s.groups.iter().all(|g| g.replicas.contains(&id) == present) {
                out!("done: {} every group", if present { "a voter of" } else { "gone from" });
                return ExitCode::SUCCESS;
            }
        }
        if std::time::Instant::now() >= deadline {
            return fail(EXIT_UNAVAILABLE, "not done within a minute; it goes on by itself: see `baton status`".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn slots(endpoints: String, json: bool) -> ExitCode {
    let client = match connect(&endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let t = match client.topology().await {
        Ok(t) => t,
        Err(e) => return client_error(e),
    };
    if json {
        let groups: Vec<serde_json::Value> = t
            .groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "id": g.id,
                    "leader": if g.leader == 0 { serde_json::Value::Null } else { g.leader.into() },
                    "replicas": g.replicas,
                    "slots": g.slots.iter().map(|r| serde_json::json!([r.start, r.end])).collect::<Vec<_>>(),
                })
            })
            .collect();
        out!("{}", serde_json::json!({ "version": t.version, "groups": groups }));
        return ExitCode::SUCCESS;
    }
    out!("slot map version {} (answered by node {})", t.version, t.node_id);
    out!("{:<6} {:<7} {:<9} {:<6} SLOTS", "GROUP", "LEADER", "REPLICAS", "COUNT");
    for g in &t.groups {
        let ranges: Vec<(u16, u16)> = g.slots.iter().map(|r| (r.start as u16, r.end as u16)).collect();
        let count: u32 = g.slots.iter().map(|r| r.end - r.start + 1).sum();
        let leader = if g.leader == 0 { "-".to_string() } else { g.leader.to_string() };
        let replicas: Vec<String> = g.replicas.iter().map(u64::to_string).collect();
        let slots = if g.id == baton_core::topology::ETCD_GROUP {
            "(etcd keyspace: no slots)".to_string()
        } else {
            format_ranges(&ranges)
        };
        out!("{:<6} {:<7} {:<9} {:<6} {}", g.id, leader, replicas.join(","), count, slots);
    }
    ExitCode::SUCCESS
}

/// The moves that even out `groups` (id, sorted ranges): each takes slots from the end of the
/// fullest group's last range and gives them to the emptiest group, until sizes differ by at
/// most one.
fn balance_moves(mut groups: Vec<(u64, Vec<(u16, u16)>)>) -> Vec<(u16, u16, u64)> {
    let mut moves = Vec::new();
    let count = |r: &[(u16, u16)]| r.iter().map(|(a, b)| (b - a + 1) as usize).sum::<usize>();
    if groups.is_empty() {
        return moves;
    }
    let n = groups.len();
    let fair = SLOTS as usize / n;
    for _ in 0..4 * SLOTS as usize {
        groups.sort_by_key(|(id, r)| (count(r), *id));
        let (low, high) = (count(&groups[0].1), count(&groups[n - 1].1));
        if high <= low + 1 {
            break;
        }
        let want = (high - fair.max(low + 1)).min(fair.saturating_sub(low).max(1));
        let (to, from_ranges) = (groups[0].0, &mut groups[n - 1].1);
        let (a, b) = *from_ranges.last().expect("a full group has ranges");
        let take = want.min((b - a + 1) as usize) as u16;
        let start = b + 1 - take;
        if take as usize == (b - a + 1) as usize {
            from_ranges.pop();
        } else {
            from_ranges.last_mut().expect("present").1 = start - 1;
        }
        groups[0].1.push((start, b));
        groups[0].1.sort_unstable();
        moves.push((start, b, to));
    }
    moves
}

async fn balance(endpoints: String) -> ExitCode {
    let client = match connect(&endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let t = match client.topology().await {
        Ok(t) => t,
        Err(e) => return client_error(e),
    };
    // The data groups: the etcd keyspace's group serves no slots and takes none.
    let groups: Vec<(u64, Vec<(u16, u16)>)> = t
        .groups
        .iter()
        .filter(|g| g.id != baton_core::topology::ETCD_GROUP)
        .map(|g| (g.id, g.slots.iter().map(|r| (r.start as u16, r.end as u16)).collect()))
        .collect();
    let n = groups.len().max(1);
    let moves = balance_moves(groups);
    if moves.is_empty() {
        out!("balanced already: every group serves {} or {} slots", SLOTS as usize / n, SLOTS as usize / n + 1);
        return ExitCode::SUCCESS;
    }
    for (start, end, to) in moves {
        match client.move_slots(start, end, to).await {
            Ok(r) => out!("moved slots {start}-{end} to group {to} (slot map version {})", r.version),
            Err(e) => return client_error(e),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_evens_out_the_slots_with_few_moves() {
        let total = |g: &[(u64, Vec<(u16, u16)>)]| {
            g.iter().map(|(_, r)| r.iter().map(|(a, b)| (b - a + 1) as usize).sum::<usize>()).collect::<Vec<_>>()
        };
        // Group 1 has everything but a sliver.
        let groups = vec![(1, vec![(0, 16_000)]), (2, vec![(16_001, 16_383)]), (3, vec![])];
        let moves = balance_moves(groups.clone());
        assert!(moves.len() <= 4, "{moves:?}");
        let mut after = groups;
        for (s, e, to) in &moves {
            for (id, ranges) in after.iter_mut() {
                let mut kept = Vec::new();
                for &(a, b) in ranges.iter() {
                    if b < *s || a > *e {
                        kept.push((a, b));
                    } else {
                        if a < *s {
                            kept.push((a, s - 1));
                        }
                        if b > *e {
                            kept.push((e + 1, b));
                        }
                    }
                }
                *ranges = kept;
                if id == to {
                    ranges.push((*s, *e));
                }
            }
        }
        let sizes = total(&after);
        assert_eq!(sizes.iter().sum::<usize>(), SLOTS as usize);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        assert!(balance_moves(vec![(1, vec![(0, 8191)]), (2, vec![(8192, 16383)])]).is_empty());
    }
}
