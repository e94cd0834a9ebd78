//! Applying [`EtcdCommand`]s in the state machine of the keyspace's group.
//!
//! A lease is a session of this group (see [`super::lease`]): granting one opens a session
//! record with the lease's TTL, which the leader's expiry machinery ends when nobody renews it;
//! ending that session revokes the lease ([`StateMachine::end_session`]).

use super::{lease, EtcdCommand, EtcdError, EtcdOutcome};
use crate::command::{Event, Outcome, SessionEnd};
use crate::error::{Error, Result};
use crate::state::StateMachine;

/// The client name of every lease's session (the per-client session limit therefore bounds
/// the number of leases).
pub const LEASE_CLIENT: &str = "etcd-lease";

impl StateMachine {
    pub(crate) fn apply_etcd(&mut self, index: u64, command: &EtcdCommand, events: &mut Vec<Event>) -> Result<Outcome> {
        if self.etcd.is_none() {
            return Err(Error::InvalidArgument(format!("group {} does not hold the etcd keyspace", self.group)));
        }
        self.etcd_mut().check_space(command)?;
        let outcome = match command {
            EtcdCommand::LeaseGrant { id, ttl_s } => self.lease_grant(index, *id, *ttl_s, events)?,
            EtcdCommand::LeaseRevoke(id) => {
                let session = self.etcd_mut().leases().get(*id).ok_or(EtcdError::LeaseNotFound)?.session;
                self.etcd_mut().lease_revoke(*id)?;
                self.end_session(session, SessionEnd::Closed, events);
                EtcdOutcome::LeaseRevoked { revision: self.etcd_mut().revision() }
            }
            EtcdCommand::Put(req) => {
                let twice = self.bugs.etcd_put_twice;
                let etcd = self.etcd_mut();
                if twice {
                    // Deliberate bug: the put is applied twice.
                    etcd.put(req)?;
                }
                let response = etcd.put(req)?;
                EtcdOutcome::Put { revision: etcd.revision(), response }
            }
            EtcdCommand::Delete(req) => {
                let etcd = self.etcd_mut();
                let response = etcd.delete(req)?;
                EtcdOutcome::Delete { revision: etcd.revision(), response }
            }
            EtcdCommand::Txn(req) => {
                let etcd = self.etcd_mut();
                let response = etcd.txn(req)?;
                EtcdOutcome::Txn { revision: etcd.revision(), response }
            }
            EtcdCommand::Alarm { activate, member, alarm } => {
                let etcd = self.etcd_mut();
                etcd.set_alarm(*activate, *member, *alarm);
                EtcdOutcome::Alarms { revision: etcd.revision(), alarms: etcd.alarms() }
            }
            EtcdCommand::Compact(rev) => {
                let etcd = self.etcd_mut();
                etcd.compact(*rev)?;
                EtcdOutcome::Compacted { revision: etcd.revision() }
            }
        };
        Ok(Outcome::Etcd(outcome))
    }

    /// A lease of `ttl_s` seconds under `id`, or, if `id` is 0, under the log index of this
    /// grant (unique in the group, positive as etcd's chosen ids are; the session id itself
    /// carries the group in its top bits, which makes it negative as an i64 in the keyspace's
    /// group), carried by a new session of this group.
    fn lease_grant(&mut self, index: u64, id: i64, ttl_s: i64, events: &mut Vec<Event>) -> Result<EtcdOutcome> {
        let ttl_s = lease::granted_ttl(ttl_s)?;
        let session = self.session_id(index)?;
        // `session_id` refused an index beyond its 48 bits: this fits, and is above 0.
        let id = if id == 0 { index as i64 } else { id };
        if self.etcd_mut().leases().get(id).is_some() {
            return Err(EtcdError::LeaseExists.into());
        }
        self.check_session_room(LEASE_CLIENT)?;
        self.etcd_mut().lease_grant(id, ttl_s, session)?;
        self.insert_session(session, LEASE_CLIENT, ttl_s as u64 * 1000, 0, events);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.refreshed_at = index;
        }
        Ok(EtcdOutcome::LeaseGranted { revision: self.etcd_mut().revision(), id, ttl_s })
    }

    fn etcd_mut(&mut self) -> &mut super::EtcdStore {
        self.etcd.as_deref_mut().expect("checked by apply_etcd")
    }
}
