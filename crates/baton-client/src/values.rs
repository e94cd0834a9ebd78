//! Linearizable values: counters, registers and countdown latches (no session needed).

use baton_proto::v1 as pb;

use crate::core::Op;
use crate::retry::AttemptError;
use crate::routing::Target;
use crate::{Client, Result};

impl Client {
    /// Gives the countdown latch `name` its count, unless it has one; returns (set, count).
    pub async fn latch_set(&self, name: &str, count: u64) -> Result<(bool, u64)> {
        let req = pb::LatchRequest { name: name.into(), op: Some(pb::latch_request::Op::Set(count)), group: 0 };
        // Not repeated when its outcome is unknown: count-downs may have taken the latch to
        // zero in between, and a repeat would set it again.
        self.attempts(self.plan(Op::LatchSet), Target::Name(name), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.latch(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| (r.set, r.count))
    }

    /// Counts the latch `name` down by one; returns the remaining count. Not retried after an
    /// ambiguous failure (it could count twice).
    pub async fn latch_count_down(&self, name: &str) -> Result<u64> {
        let req = pb::LatchRequest { name: name.into(), op: Some(pb::latch_request::Op::CountDown(true)), group: 0 };
        self.attempts(self.plan(Op::LatchCountDown), Target::Name(name), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.latch(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| r.count)
    }

    /// Adds `delta` to the counter `name`; returns the new value. Not retried after an
    /// ambiguous failure (it could apply twice): that is [`crate::Error::OutcomeUnknown`].
    pub async fn counter_add(&self, name: &str, delta: i64) -> Result<i64> {
        let req = pb::CounterRequest { name: name.into(), op: Some(pb::counter_request::Op::Add(delta)), group: 0 };
        self.attempts(self.plan(Op::CounterAdd), Target::Name(name), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.counter(req).await }
        })
        .await
        .map(|r| r.value)
    }

    /// Reads the counter `name` (linearizable).
    pub async fn counter_get(&self, name: &str) -> Result<i64> {
        let req = pb::CounterRequest { name: name.into(), op: Some(pb::counter_request::Op::Get(true)), group: 0 };
        self.attempts(self.plan(Op::Read), Target::Name(name), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.counter(req).await }
        })
        .await
        .map(|r| r.value)
    }

    /// Sets the counter `name` to `new` if it is `expected`; returns (swapped, value now).
    pub async fn counter_cas(&self, name: &str, expected: i64, new: i64) -> Result<(bool, i64)> {
        let op = pb::counter_request::Op::Cas(pb::CounterCas { expected, new });
        let req = pb::CounterRequest { name: name.into(), op: Some(op), group: 0 };
        self.attempts(self.plan(Op::CounterCas), Target::Name(name), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.counter(req).await }
        })
        .await
        .map(|r| (r.swapped, r.value))
    }

    /// Reads the register `name`: (value, version); version 0 means never written.
    pub async fn register_get(&self, name: &str) -> Result<(Vec<u8>, u64)> {
        let req = pb::RegisterRequest {
            name: name.into(),
            op: Some(pb::register_request::Op::Get(true)),
            if_version: None,
            group: 0,
        };
        self.attempts(self.plan(Op::Read), Target::Name(name), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.register(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| (r.value, r.version))
    }

    /// Writes (`Some`) or deletes (`None`) the register `name`, only if its version is
    /// `if_version` (when given); returns (swapped, version now).
    pub async fn register_set(
        &self,
        name: &str,
        value: Option<Vec<u8>>,
        if_version: Option<u64>,
    ) -> Result<(bool, u64)> {
        let op = match value {
            Some(v) => pb::register_request::Op::Set(v),
            None => pb::register_request::Op::Delete(true),
        };
        let req = pb::RegisterRequest { name: name.into(), op: Some(op), if_version, group: 0 };
        self.attempts(self.plan(Op::RegisterSet), Target::Name(name), |mut c, group| {
            let mut req = req.clone();
            req.group = group;
            async move { c.register(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| (r.swapped, r.version))
    }
}
