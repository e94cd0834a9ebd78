//! The etcd keyspace inside the state machine of its group: leases are sessions (their expiry
//! takes the keys), commands are refused elsewhere, snapshots carry the keyspace, and a
//! snapshot from before the keyspace existed still loads.

use baton_core::etcd::{EtcdCommand, EtcdError, EtcdOutcome, PutRequest, RangeRequest, LEASE_CLIENT};
use baton_core::{Command, Entry, Error, Limits, Outcome, StateMachine};

struct Log {
    sm: StateMachine,
    index: u64,
    now: u64,
}

impl Log {
    fn new(sm: StateMachine) -> Self {
        Log { sm, index: 0, now: 1_000 }
    }

    fn apply(&mut self, command: Command) -> Result<Outcome, Error> {
        self.index += 1;
        let entry = Entry::new(self.now, self.now, command);
        let mut events = Vec::new();
        let r = self.sm.apply(self.index, &entry, &mut events);
        self.sm.stamp(self.now, events.len());
        r
    }

    fn etcd(&mut self, command: EtcdCommand) -> Result<EtcdOutcome, Error> {
        self.apply(Command::Etcd(command)).map(|o| match o {
            Outcome::Etcd(e) => e,
            other => panic!("not an etcd outcome: {other:?}"),
        })
    }
}

fn put(key: &str, lease: i64) -> EtcdCommand {
    EtcdCommand::Put(PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() })
}

fn keys(sm: &StateMachine) -> Vec<String> {
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let r = sm.etcd().unwrap().range(&all).unwrap();
    r.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
}

#[test]
fn a_lease_is_a_session_and_its_expiry_takes_the_keys() {
    let mut log = Log::new(StateMachine::for_etcd(Limits::default(), baton_core::topology::ETCD_GROUP));
    // Without an id the lease takes the grant's log index: positive and unique (the session
    // id has the group in its top bits: negative as an i64 in this group).
    let EtcdOutcome::LeaseGranted { id, ttl_s, .. } = log.etcd(EtcdCommand::LeaseGrant { id: 0, ttl_s: 5 }).unwrap()
    else {
        panic!()
    };
    assert!(id > 0);
    assert_eq!(ttl_s, 5);
    let session = log.sm.etcd().unwrap().leases().get(id).unwrap().session;
    assert_eq!(id, 1, "the first entry's index");
    assert_eq!(session & ((1 << 48) - 1), 1);
    let s = log.sm.sessions().find(|(sid, _)| *sid == session).map(|(_, s)| (s.client.clone(), s.ttl_ms)).unwrap();
    assert_eq!(s, (LEASE_CLIENT.to_string(), 5_000), "the session carries the lease's TTL");
    log.etcd(put("held", id)).unwrap();
    log.etcd(put("free", 0)).unwrap();
    // An explicit id that is taken is refused, with etcd's message.
    let taken = log.etcd(EtcdCommand::LeaseGrant { id, ttl_s: 5 });
    assert_eq!(taken, Err(Error::Etcd(EtcdError::LeaseExists)));
    assert_eq!(taken.unwrap_err().to_string(), "etcdserver: lease already exists");
    // The leader expires the session: the lease ends and its key goes.
    let as_of = log.index;
    log.apply(Command::ExpireSessions { sessions: vec![session], as_of }).unwrap();
    assert!(log.sm.etcd().unwrap().leases().get(id).is_none());
    assert_eq!(keys(&log.sm), ["free"]);
    // A revoke ends the session too.
    let EtcdOutcome::LeaseGranted { id: other, .. } = log.etcd(EtcdCommand::LeaseGrant { id: 42, ttl_s: 60 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(other, 42);
    log.etcd(put("k", 42)).unwrap();
    let sessions = log.sm.sessions().count();
    log.etcd(EtcdCommand::LeaseRevoke(42)).unwrap();
    assert_eq!(log.sm.sessions().count(), sessions - 1);
    assert_eq!(keys(&log.sm), ["free"]);
    assert_eq!(log.etcd(EtcdCommand::LeaseRevoke(42)), Err(Error::Etcd(EtcdError::LeaseNotFound)));
}

#[test]
fn etcd_commands_are_refused_outside_the_keyspace_group() {
    let mut log = Log::new(StateMachine::new(Limits::default()));
    let r = log.etcd(put("k", 0));
    assert!(matches!(r, Err(Error::InvalidArgument(ref m)) if m.contains("does not hold the etcd keyspace")), "{r:?}");
}

/// A snapshot as the builds before users and roles wrote it: no magic, no auth state (its
/// `None`, one zero byte, ends today's layout).
fn before_auth(now: &[u8]) -> Vec<u8> {
    assert_eq!(&now[..8], &baton_core::SNAPSHOT_MAGIC);
    assert_eq!(now.last(), Some(&0), "no auth state ends the snapshot");
    now[8..now.len() - 1].to_vec()
}

#[test]
fn a_snapshot_from_before_users_and_roles_loads() {
    let mut log = Log::new(StateMachine::for_etcd(Limits::default(), 3));
    log.etcd(put("a", 0)).unwrap();
    let now = log.sm.to_snapshot();
    let older = StateMachine::from_snapshot(&before_auth(&now)).unwrap();
    assert_eq!(keys(&older), ["a"]);
    assert_eq!(older.to_snapshot(), now);
    // A snapshot of today's layout must decode exactly: cut short, it does not load.
    assert!(StateMachine::from_snapshot(&now[..now.len() - 1]).is_err());
}

#[test]
fn snapshots_carry_the_keyspace_and_old_ones_still_load() {
    let mut log = Log::new(StateMachine::for_etcd(Limits::default(), 3));
    log.etcd(EtcdCommand::LeaseGrant { id: 9, ttl_s: 30 }).unwrap();
    log.etcd(put("a", 9)).unwrap();
    let back = StateMachine::from_snapshot(&log.sm.to_snapshot()).unwrap();
    assert_eq!(keys(&back), ["a"]);
    assert_eq!(back.etcd().unwrap().leases().get(9).unwrap().keys.len(), 1);
    // A data group's snapshot written before the keyspace existed is this one without its last
    // byte (the absent keyspace's `None`).
    let mut plain = Log::new(StateMachine::new(Limits::default()));
    plain.apply(Command::OpenSession { client: "c".into(), ttl_ms: 5_000, request_id: 1 }).unwrap();
    let now = plain.sm.to_snapshot();
    let before = before_auth(&now);
    assert_eq!(before.last(), Some(&0));
    let older = StateMachine::from_snapshot(&before[..before.len() - 1]).unwrap();
    assert_eq!(older.to_snapshot(), now);
    assert!(older.etcd().is_none());
}

/// Review finding: the alarms and the history's byte count were added to the keyspace after
/// a release had written snapshots of it. Such a snapshot is today's without the (empty)
/// alarm set at its very end; it must load, with the byte count counted again.
#[test]
fn a_keyspace_snapshot_from_before_alarms_loads_and_recounts_its_size() {
    let mut log = Log::new(StateMachine::for_etcd(Limits::default(), 3));
    log.etcd(put("a", 0)).unwrap();
    log.etcd(put("b", 0)).unwrap();
    let size = log.sm.etcd().unwrap().mvcc().bytes();
    assert!(size > 0);
    let now = log.sm.to_snapshot();
    let before = before_auth(&now);
    assert_eq!(&before[before.len() - 8..], &[0; 8], "an empty alarm set ends the snapshot");
    let older = StateMachine::from_snapshot(&before[..before.len() - 8]).unwrap();
    assert_eq!(keys(&older), ["a", "b"]);
    assert_eq!(older.etcd().unwrap().mvcc().bytes(), size);
    assert_eq!(StateMachine::from_snapshot(&now).unwrap().etcd().unwrap().mvcc().bytes(), size);
}

/// A snapshot cut short is an error, not an older layout read as a wrong state: a keyspace
/// with an alarm, cut by a few bytes, must not load (second review).
#[test]
fn a_keyspace_snapshot_cut_short_does_not_load() {
    let mut log = Log::new(StateMachine::for_etcd(Limits::default(), 3));
    log.etcd(put("a", 0)).unwrap();
    log.etcd(EtcdCommand::Alarm { activate: true, member: 2, alarm: baton_core::etcd::Alarm::Corrupt }).unwrap();
    let now = before_auth(&log.sm.to_snapshot());
    for cut in 1..=8 {
        assert!(StateMachine::from_snapshot(&now[..now.len() - cut]).is_err(), "cut by {cut} bytes, it loaded");
    }
}

/// Log entries are bincode, positional: a command variant added later goes last, so that the
/// entries an older build wrote keep their meaning (the review caught `Alarm` inserted before
/// `LeaseGrant`).
#[test]
fn etcd_command_tags_keep_their_places() {
    let tag = |c: &EtcdCommand| bincode::serialize(c).unwrap()[..4].to_vec();
    assert_eq!(tag(&EtcdCommand::Compact(1)), 3u32.to_le_bytes());
    assert_eq!(tag(&EtcdCommand::LeaseGrant { id: 1, ttl_s: 5 }), 4u32.to_le_bytes());
    assert_eq!(tag(&EtcdCommand::LeaseRevoke(1)), 5u32.to_le_bytes());
}
