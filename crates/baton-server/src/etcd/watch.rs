//! etcd's Watch service: many watches multiplexed on one stream, each from a start revision
//! (history replayed from this node's replica), over a key, a range or a prefix, with filters,
//! previous values, progress notifications and fragmentation, as etcd serves them.
//!
//! One task per stream owns its watches. It wakes when the feed publishes ([`super::feed`]),
//! and for each watch reads the changes from the revision that watch needs next: from the
//! feed's ring, or from the replica's history if the ring does not reach back that far. A
//! watch's next revision only moves past what it was sent, so each change reaches it exactly
//! once and in revision order; a start revision that was compacted away cancels the watch
//! with `compact_revision`, as etcd does.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use baton_core::etcd::{KeyEvent, KeyRange, Revision};
use baton_proto::etcd::etcdserverpb as pb;
use baton_proto::etcd::etcdserverpb::watch_server::Watch;
use baton_proto::etcd::mvccpb;
use futures::Stream;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::feed::{Change, EtcdFeed, History, Read};
use super::{convert, Backend, MAX_REQUEST_BYTES};
use crate::access::{Caller, Need};
use crate::runtime::Input;
use baton_core::auth::Permission;

/// etcd's default interval between progress notifications of a quiet watch.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(600);
/// Most watches on one stream.
pub const MAX_WATCHES_PER_STREAM: usize = 100_000;
/// Changes a watch is sent per read (etcd syncs a lagging watcher 1,000 revisions at a time).
const CHANGES_PER_READ: usize = 1_000;
/// Responses buffered per stream before the task waits for the client to read.
const RESPONSE_BUFFER: usize = 128;
/// The watch id etcd puts on answers that belong to no watch (progress requests, refusals).
const NO_WATCH: i64 = -1;

/// The `etcdserverpb.Watch` service.
#[derive(Clone)]
pub struct WatchService {
    pub(crate) backend: Backend,
    /// How often a quiet watch that asked for them gets a progress notification.
    pub(crate) progress_every: Duration,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<Streaming<pb::WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        let caller = self.backend.admit(&request, "Watch", &[])?;
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let task = StreamTask {
            feed: self.backend.node.etcd_feed.clone(),
            backend: self.backend.clone(),
            caller,
            tx,
            watches: BTreeMap::new(),
            next_auto_id: 0,
        };
        tokio::spawn(task.run(requests, self.progress_every));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watch of a stream.
struct OneWatch {
    range: KeyRange,
    /// The read permission on its range, checked before anything is sent to it.
    need: Need,
    /// The next revision it needs.
    next: Revision,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Something was sent to it since the last progress tick.
    spoke: bool,
    /// It has caught up with the replica: from then on each revision is sent as its own
    /// response (etcd's synced watcher); before, what it replays goes out in batches headed by
    /// the revision they reach (etcd's unsynced watcher).
    synced: bool,
}

/// The client went away: the stream's task ends.
struct Gone;

struct StreamTask {
    feed: Arc<EtcdFeed>,
    backend: Backend,
    /// Who opened the stream (every watch it creates is checked against that user's grants).
    caller: Caller,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watches: BTreeMap<i64, OneWatch>,
    next_auto_id: i64,
}

impl StreamTask {
    async fn run(mut self, mut requests: Streaming<pb::WatchRequest>, progress_every: Duration) {
        let mut published = self.feed.subscribe();
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.deliver().await.is_err() {
                return;
            }
            let step = tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(r)) => self.handle(r).await,
                    // The client closed its side or broke the stream.
                    _ => Err(Gone),
                },
                changed = published.changed() => match changed {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Gone), // the server is stopping
                },
                _ = progress.tick() => self.progress().await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Gone> {
        self.tx.send(Ok(response)).await.map_err(|_| Gone)
    }

    fn header(&self, revision: Revision) -> Option<pb::ResponseHeader> {
        self.backend.header(revision)
    }

    async fn handle(&mut self, request: pb::WatchRequest) -> Result<(), Gone> {
        use pb::watch_request::RequestUnion as U;
        match request.request_union {
            Some(U::CreateRequest(c)) => self.create(c).await,
            Some(U::CancelRequest(c)) => {
                // etcd answers a cancel of an unknown watch with nothing.
                if self.watches.remove(&c.watch_id).is_some() {
                    let header = self.header(self.feed.revision());
                    self.send(pb::WatchResponse { header, watch_id: c.watch_id, canceled: true, ..Default::default() })
                        .await?;
                }
                Ok(())
            }
            Some(U::ProgressRequest(_)) => {
                // A progress answer promises every event up to its revision was sent: bring the
                // watches up to date first, and name only a revision all of them reached (etcd
                // fixed answering with the store's revision regardless in its #15220).
                let current = self.feed.revision();
                self.deliver().await?;
                let reached = self.watches.values().map(|w| w.next - 1).min().map_or(current, |r| r.min(current));
                let header = self.header(reached);
                self.send(pb::WatchResponse { header, watch_id: NO_WATCH, ..Default::default() }).await
            }
            None => Ok(()),
        }
    }

    async fn refuse(&self, watch_id: i64, reason: String) -> Result<(), Gone> {
        let header = self.header(self.feed.revision());
        self.send(pb::WatchResponse {
            header,
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        if !self.feed.present() {
            let reason = "this node holds no replica of the etcd keyspace's group: watch through a node that does";
            return self.refuse(NO_WATCH, reason.into()).await;
        }
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            let reason = format!("too many watches on one stream (at most {MAX_WATCHES_PER_STREAM})");
            return self.refuse(NO_WATCH, reason).await;
        }
        let id = if c.watch_id == 0 {
            // etcd's automatic ids count from 0, skipping ids the client chose.
            while self.watches.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            self.next_auto_id - 1
        } else if self.watches.contains_key(&c.watch_id) {
            return self.refuse(NO_WATCH, "mvcc: duplicate watch ID provided on the WatchStream".into()).await;
        } else {
            c.watch_id
        };
        let need = Need::range(Permission::Read, super::auth::key_range(&c.key, &c.range_end));
        if let Err(s) = self.backend.check(&self.caller, "Watch", std::slice::from_ref(&need)) {
            return self.refuse(NO_WATCH, super::auth::cancel_reason(&s)).await;
        }
        let current = self.feed.revision();
        // An empty key is the smallest one, "\0" (with a range end of "\0": every key).
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let filters = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
        let next = if c.start_revision == 0 { current + 1 } else { c.start_revision };
        let watch = OneWatch {
            range: KeyRange::new(&key, &c.range_end),
            need,
            next,
            no_put: filters(pb::watch_create_request::FilterType::Noput),
            no_delete: filters(pb::watch_create_request::FilterType::Nodelete),
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            spoke: false,
            synced: next > current,
        };
        self.watches.insert(id, watch);
        let header = self.header(current);
        self.send(pb::WatchResponse { header, watch_id: id, created: true, ..Default::default() }).await
    }

    /// Sends every watch what was published since it was last served.
    async fn deliver(&mut self) -> Result<(), Gone> {
        if !self.feed.present() && !self.watches.is_empty() {
            // This node lost its replica (placement moved it): the watches cannot go on here.
            let reason = "this node no longer holds a replica of the etcd keyspace's group: watch again through \
                          another node";
            for id in std::mem::take(&mut self.watches).into_keys() {
                let header = self.header(0);
                let response = pb::WatchResponse {
                    header,
                    watch_id: id,
                    canceled: true,
                    cancel_reason: reason.into(),
                    ..Default::default()
                };
                self.send(response).await?;
            }
            return Ok(());
        }
        let ids: Vec<i64> = self.watches.keys().copied().collect();
        for id in ids {
            // A grant revoked, a user removed or a token expired since: the watch ends instead
            // of showing more (the review found Baton's own watches needed this).
            let refused = self
                .watches
                .get(&id)
                .and_then(|w| self.backend.check(&self.caller, "Watch", std::slice::from_ref(&w.need)).err());
            if let Some(s) = refused {
                self.watches.remove(&id);
                let header = self.header(self.feed.revision());
                let cancel_reason = super::auth::cancel_reason(&s);
                let response =
                    pb::WatchResponse { header, watch_id: id, canceled: true, cancel_reason, ..Default::default() };
                self.send(response).await?;
                continue;
            }
            while let Some(next) = self.watches.get(&id).map(|w| w.next) {
                if next > self.feed.revision() {
                    break;
                }
                let synced = self.watches.get(&id).is_some_and(|w| w.synced);
                let (changes, through) = match self.feed.read(next, CHANGES_PER_READ, synced) {
                    Read::Changes { changes, through } => (changes, through),
                    Read::Behind => match self.history(next).await? {
                        History::Changes { changes, through } => {
                            (changes.into_iter().map(|(r, e)| (r, Arc::new(e))).collect(), through)
                        }
                        History::Compacted(compacted) => {
                            self.watches.remove(&id);
                            let header = self.header(self.feed.revision());
                            // etcd cancels a watch whose start was compacted, naming the compaction.
                            let response = pb::WatchResponse {
                                header,
                                watch_id: id,
                                compact_revision: compacted,
                                canceled: true,
                                ..Default::default()
                            };
                            self.send(response).await?;
                            break;
                        }
                        History::NoReplica => break,
                    },
                };
                if through < next {
                    break;
                }
                self.send_changes(id, &changes, through).await?;
                let caught_up = through >= self.feed.revision();
                if let Some(w) = self.watches.get_mut(&id) {
                    w.next = through + 1;
                    w.synced |= caught_up;
                }
            }
        }
        Ok(())
    }

    async fn history(&self, from: Revision) -> Result<History, Gone> {
        let (tx, rx) = oneshot::channel();
        if !self.backend.node.send(Input::EtcdHistory { from, max: CHANGES_PER_READ, tx }) {
            return Err(Gone);
        }
        rx.await.map_err(|_| Gone)
    }

    /// Sends watch `id` the changes it selects (which reach through revision `through`): one
    /// response per revision once it is synced, else one for them all; fragmented if the
    /// watch asked for it and a response is too large.
    async fn send_changes(&mut self, id: i64, changes: &[Change], through: Revision) -> Result<(), Gone> {
        let Some(w) = self.watches.get(&id) else { return Ok(()) };
        let mut by_revision: Vec<(Revision, Vec<mvccpb::Event>)> = Vec::new();
        for (rev, e) in changes {
            if !selects(w, e) {
                continue;
            }
            let event = event_out(e, w.prev_kv);
            match by_revision.last_mut() {
                Some((r, events)) if r == rev => events.push(event),
                _ => by_revision.push((*rev, vec![event])),
            }
        }
        let fragment = w.fragment;
        if by_revision.is_empty() {
            return Ok(());
        }
        if !w.synced {
            let events = by_revision.drain(..).flat_map(|(_, e)| e).collect();
            by_revision.push((through, events));
        }
        if let Some(w) = self.watches.get_mut(&id) {
            w.spoke = true;
        }
        for (rev, events) in by_revision {
            let header = self.header(rev);
            let response = pb::WatchResponse { header, watch_id: id, events, ..Default::default() };
            if fragment && response.encoded_len() > MAX_REQUEST_BYTES {
                for part in fragments(response) {
                    self.send(part).await?;
                }
            } else {
                self.send(response).await?;
            }
        }
        Ok(())
    }

    /// A progress notification to every quiet, caught-up watch that asked for them.
    async fn progress(&mut self) -> Result<(), Gone> {
        let revision = self.feed.revision();
        let due: Vec<i64> = self
            .watches
            .iter_mut()
            .filter_map(|(id, w)| {
                let quiet = !std::mem::take(&mut w.spoke);
                (w.progress_notify && quiet && w.next > revision).then_some(*id)
            })
            .collect();
        for id in due {
            let header = self.header(revision);
            self.send(pb::WatchResponse { header, watch_id: id, ..Default::default() }).await?;
        }
        Ok(())
    }
}

/// Whether watch `w` is sent change `e`.
fn selects(w: &OneWatch, e: &KeyEvent) -> bool {
    w.range.contains(&e.kv.key) && if e.deleted { !w.no_delete } else { !w.no_put }
}

fn event_out(e: &KeyEvent, prev_kv: bool) -> mvccpb::Event {
    let kind = if e.deleted { mvccpb::event::EventType::Delete } else { mvccpb::event::EventType::Put };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(convert::kv_out(e.kv.clone())),
        prev_kv: if prev_kv { e.prev.clone().map(convert::kv_out) } else { None },
    }
}

/// Splits a response into parts of at most about [`MAX_REQUEST_BYTES`] each (at least one
/// event per part); every part but the last has `fragment` set, as etcd's.
fn fragments(response: pb::WatchResponse) -> Vec<pb::WatchResponse> {
    let pb::WatchResponse { header, watch_id, events, .. } = response;
    let mut parts: Vec<pb::WatchResponse> = Vec::new();
    let mut current: Vec<mvccpb::Event> = Vec::new();
    let mut size = 0;
    for e in events {
        let len = e.encoded_len() + 8;
        if !current.is_empty() && size + len > MAX_REQUEST_BYTES {
            parts.push(pb::WatchResponse {
                header,
                watch_id,
                fragment: true,
                events: std::mem::take(&mut current),
                ..Default::default()
            });
            size = 0;
        }
        size += len;
        current.push(e);
    }
    parts.push(pb::WatchResponse { header, watch_id, events: current, ..Default::default() });
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_response_is_cut_into_fragments_flagged_all_but_the_last() {
        let event = |i: u8| mvccpb::Event {
            kv: Some(mvccpb::KeyValue { key: vec![i], value: vec![0; 600 * 1024], ..Default::default() }),
            ..Default::default()
        };
        let response = pb::WatchResponse { watch_id: 7, events: (0..5).map(event).collect(), ..Default::default() };
        let parts = fragments(response);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        assert!(parts.iter().all(|p| p.watch_id == 7 && p.encoded_len() <= MAX_REQUEST_BYTES + 1024));
        let keys: Vec<u8> = parts.iter().flat_map(|p| p.events.iter().map(|e| e.kv.as_ref().unwrap().key[0])).collect();
        assert_eq!(keys, vec![0, 1, 2, 3, 4]);
    }
}
