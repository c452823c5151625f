//! Shared subscriptions `$share/{group}/{filter}` (MQTT 5.0 §4.8.2): one
//! reader per group follows the streams the filter selects and hands each
//! matching record to one member in turn. A member that leaves with
//! deliveries unacknowledged gives them back, and they go to another
//! member. A group lives in memory while it has connected members.
//!
//! A group with a persistent member keeps a cursor per partition, as a
//! named consumer of the stream (`mqtt-share-<hash of the filter>`): the
//! first record not yet acknowledged by a member. When the group forms again
//! — its members come back, or after a broker restart — it reads from there,
//! so messages published while every member was away wait in the log for
//! them, as a persistent session's messages do (ARCHITECTURE §4).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use fjord_broker::{Broker, Followed, Position};
use fjord_core::{NamespaceName, Record, StreamName, StreamRef, TenantName};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::codec::topic;
use crate::mapping::{Selection, TopicMap, RESERVED_STREAMS};
use crate::record::from_record;

/// What a group hands a member: the full shared filter it is for, and the
/// record with the partition it came from.
pub type SharedDelivery = (String, StreamName, u32, Record);

/// What reaches a session from the tasks reading for it, in one queue (one
/// wait in the session's loop, which idle connections hold too): a record
/// of a partition it follows, or one a shared subscription's group hands it.
#[derive(Debug)]
pub enum Inbound {
    /// Stream, partition, record.
    Read(StreamName, u32, Record),
    Shared(SharedDelivery),
}

impl Inbound {
    pub fn into_shared(self) -> Option<SharedDelivery> {
        match self {
            Inbound::Shared(d) => Some(d),
            Inbound::Read(..) => None,
        }
    }
}

/// What the group's readers feed its dispatcher.
type Fed = (StreamName, u32, Record);

/// How often a group with persistent members saves its cursors.
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Per partition: records read, and those handed out and not yet settled.
#[derive(Default)]
struct GroupProgress {
    next: i64,
    inflight: BTreeSet<i64>,
}

impl GroupProgress {
    fn cursor(&self) -> i64 {
        self.inflight.first().copied().unwrap_or(self.next)
    }
}

const GROUP_QUEUE: usize = 256;

struct Group {
    members: Vec<(u64, mpsc::Sender<Inbound>)>,
    next: usize,
    tasks: Vec<AbortHandle>,
    feed: mpsc::Sender<Fed>,
    progress: HashMap<(StreamName, u32), GroupProgress>,
    /// A persistent session is a member: the cursors are saved.
    persistent: bool,
    last_commit: std::time::Instant,
    dirty: bool,
}

/// The named consumer holding a group's cursors: stable across restarts,
/// within the consumer-name rules (no '/').
pub fn consumer_name(shared_filter: &str) -> String {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in shared_filter.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mqtt-share-{h:016x}")
}

pub struct Groups {
    broker: Arc<Broker>,
    tenant: TenantName,
    namespace: NamespaceName,
    groups: Arc<Mutex<HashMap<String, Group>>>,
}

impl Groups {
    pub fn new(broker: Arc<Broker>, tenant: TenantName, namespace: NamespaceName) -> Self {
        Self {
            broker,
            tenant,
            namespace,
            groups: Arc::default(),
        }
    }

    /// Adds a member to the group of `shared_filter` (`$share/g/f`), forming
    /// the group if needed. `persistent`: the member's session outlives its
    /// connection. `resume`: the group existed while it had no connected
    /// member (a persistent member is coming back, or is away), so a new
    /// reader starts at the group's saved cursors rather than at the end.
    pub async fn join(
        &self,
        shared_filter: &str,
        map: &TopicMap,
        member: u64,
        tx: mpsc::Sender<Inbound>,
        persistent: bool,
        resume: bool,
    ) {
        let Some(Ok((_, inner))) = topic::shared(shared_filter) else {
            return;
        };
        {
            let mut groups = self.groups.lock();
            if let Some(g) = groups.get_mut(shared_filter) {
                if !g.members.iter().any(|(id, _)| *id == member) {
                    g.members.push((member, tx));
                }
                g.persistent |= persistent;
                return;
            }
        }
        let consumer = consumer_name(shared_filter);
        // Listen for new streams before listing the existing ones, so none
        // falls between the two.
        let created = self.broker.stream_created();
        let (feed, rx) = mpsc::channel(GROUP_QUEUE);
        let mut tasks = Vec::new();
        tasks.push(
            tokio::spawn(dispatch(
                self.groups.clone(),
                shared_filter.to_string(),
                inner.to_string(),
                rx,
            ))
            .abort_handle(),
        );
        let streams: Vec<StreamName> = match map.streams_for_filter(inner) {
            Selection::All => self
                .broker
                .list_streams(&self.tenant, &self.namespace)
                .map(|v| {
                    v.into_iter()
                        .map(|s| s.name)
                        .filter(|s| !RESERVED_STREAMS.contains(&s.as_str()))
                        .collect()
                })
                .unwrap_or_default(),
            Selection::Streams(set) => set.into_iter().collect(),
        };
        let mut followed = std::collections::HashSet::new();
        let mut starts: Vec<((StreamName, u32), i64)> = Vec::new();
        for stream in streams {
            let sref = self.sref(stream.clone());
            let saved: HashMap<u32, i64> = if resume {
                self.broker
                    .committed(&sref, &consumer)
                    .map(|v| v.into_iter().collect())
                    .unwrap_or_default()
            } else {
                HashMap::new()
            };
            // Resuming, a partition without a saved cursor belongs to a
            // stream created after the group first formed: all of it is
            // the group's.
            let from = move |p: u32| match saved.get(&p) {
                Some(&o) => Position::Offset(o),
                None if resume => Position::Earliest,
                None => Position::Latest,
            };
            let (handles, at) = follow_stream(self.broker.clone(), sref, from, feed.clone()).await;
            starts.extend(at.into_iter().map(|(p, o)| ((stream.clone(), p), o)));
            // A stream that does not exist yet is picked up when created.
            if !handles.is_empty() {
                followed.insert(stream);
            }
            tasks.extend(handles);
        }
        // Selected streams created later (the one a first publish creates,
        // too) are followed from their start.
        tasks.push(
            tokio::spawn(follow_new(
                self.broker.clone(),
                created,
                (self.tenant.clone(), self.namespace.clone()),
                map.streams_for_filter(inner),
                followed,
                feed.clone(),
            ))
            .abort_handle(),
        );
        let mut groups = self.groups.lock();
        match groups.get_mut(shared_filter) {
            // Formed meanwhile by another member: join that one.
            Some(g) => {
                tasks.iter().for_each(AbortHandle::abort);
                g.members.push((member, tx));
            }
            None => {
                groups.insert(
                    shared_filter.to_string(),
                    Group {
                        members: vec![(member, tx)],
                        next: 0,
                        tasks,
                        feed,
                        // Where each reader starts: saved even if nothing
                        // is read before the group dissolves.
                        progress: starts
                            .into_iter()
                            .map(|(k, next)| {
                                (
                                    k,
                                    GroupProgress {
                                        next,
                                        ..Default::default()
                                    },
                                )
                            })
                            .collect(),
                        persistent,
                        last_commit: std::time::Instant::now(),
                        dirty: true,
                    },
                );
            }
        }
    }

    /// Removes a member; the last one dissolves the group (its cursors
    /// saved when a member was persistent).
    pub fn leave(&self, shared_filter: &str, member: u64) {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get_mut(shared_filter) {
            g.members.retain(|(id, _)| *id != member);
            if g.members.is_empty() {
                if let Some(mut g) = groups.remove(shared_filter) {
                    g.tasks.iter().for_each(AbortHandle::abort);
                    self.commit(shared_filter, &mut g);
                }
            }
        }
    }

    /// A member is done with a delivery (acknowledged, or QoS 0 sent): the
    /// group's cursor may pass it.
    pub fn settled(&self, shared_filter: &str, stream: &StreamName, partition: u32, offset: i64) {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get_mut(shared_filter) {
            if let Some(pr) = g.progress.get_mut(&(stream.clone(), partition)) {
                pr.inflight.remove(&offset);
                g.dirty = true;
            }
            if g.persistent && g.dirty && g.last_commit.elapsed() >= COMMIT_EVERY {
                self.commit(shared_filter, g);
            }
        }
    }

    /// Gives a delivery a leaving member did not get acknowledged back to
    /// the group, for another member. With no group left, the saved cursor
    /// still stands before it: it is read again when the group re-forms.
    pub fn give_back(&self, shared_filter: &str, stream: StreamName, partition: u32, rec: Record) {
        let feed = self
            .groups
            .lock()
            .get(shared_filter)
            .map(|g| g.feed.clone());
        if let Some(feed) = feed {
            let _ = feed.try_send((stream, partition, rec));
        }
    }

    fn sref(&self, stream: StreamName) -> StreamRef {
        StreamRef {
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
            stream,
        }
    }

    /// Saves the group's cursors (persistent groups only).
    fn commit(&self, shared_filter: &str, g: &mut Group) {
        if !g.persistent || !g.dirty {
            return;
        }
        let consumer = consumer_name(shared_filter);
        let mut per_stream: HashMap<&StreamName, Vec<(u32, i64)>> = HashMap::new();
        for ((s, p), pr) in &g.progress {
            per_stream.entry(s).or_default().push((*p, pr.cursor()));
        }
        for (s, offsets) in per_stream {
            if let Err(e) = self
                .broker
                .commit(&self.sref(s.clone()), &consumer, &offsets)
            {
                tracing::warn!(group = %shared_filter, error = %e, "shared subscription cursor not saved");
            }
        }
        g.dirty = false;
        g.last_commit = std::time::Instant::now();
    }
}

async fn follow_stream(
    broker: Arc<Broker>,
    sref: StreamRef,
    from: impl Fn(u32) -> Position,
    feed: mpsc::Sender<Fed>,
) -> (Vec<AbortHandle>, Vec<(u32, i64)>) {
    let Ok(n) = broker.partition_count(&sref) else {
        return (Vec::new(), Vec::new());
    };
    let mut handles = Vec::new();
    let mut starts = Vec::new();
    for p in 0..n {
        let next = match broker.resolve(&sref, p, from(p)).await {
            Ok(next) => next,
            // A saved cursor retention has passed: from what is left.
            Err(_) => match broker.resolve(&sref, p, Position::Earliest).await {
                Ok(next) => next,
                Err(_) => continue,
            },
        };
        starts.push((p, next));
        let (broker, sref, feed) = (broker.clone(), sref.clone(), feed.clone());
        handles.push(
            tokio::spawn(async move {
                broker
                    .follow(&sref, p, next, "mqtt", |item| {
                        let feed = feed.clone();
                        let stream = sref.stream.clone();
                        async move {
                            match item {
                                Followed::Record(rec) => feed.send((stream, p, rec)).await.is_ok(),
                                Followed::Skipped { .. } => true,
                            }
                        }
                    })
                    .await;
            })
            .abort_handle(),
        );
    }
    (handles, starts)
}

/// Follows streams created later that `selection` covers, from their
/// start.
async fn follow_new(
    broker: Arc<Broker>,
    mut created: tokio::sync::broadcast::Receiver<StreamRef>,
    (tenant, namespace): (TenantName, NamespaceName),
    selection: Selection,
    mut followed: std::collections::HashSet<StreamName>,
    feed: mpsc::Sender<Fed>,
) {
    let mut tasks: Vec<AbortHandle> = Vec::new();
    while let Ok(s) = created.recv().await {
        let selected = match &selection {
            Selection::All => !RESERVED_STREAMS.contains(&s.stream.as_str()),
            Selection::Streams(set) => set.contains(&s.stream),
        };
        if selected
            && followed.insert(s.stream.clone())
            && s.tenant == tenant
            && s.namespace == namespace
        {
            tasks.extend(
                follow_stream(broker.clone(), s, |_| Position::Earliest, feed.clone())
                    .await
                    .0,
            );
        }
        if feed.is_closed() {
            break;
        }
    }
    tasks.iter().for_each(AbortHandle::abort);
}

/// Hands each matching record to the next member with room, waiting on one
/// when all are busy (back pressure into the log).
async fn dispatch(
    groups: Arc<Mutex<HashMap<String, Group>>>,
    shared_filter: String,
    inner: String,
    mut rx: mpsc::Receiver<Fed>,
) {
    while let Some((stream, p, rec)) = rx.recv().await {
        let msg = from_record(stream.as_str(), &rec, fjord_core::time::now_ms());
        let wanted = topic::matches(&inner, &msg.topic);
        {
            let mut g = groups.lock();
            let Some(group) = g.get_mut(&shared_filter) else {
                return;
            };
            let pr = group.progress.entry((stream.clone(), p)).or_default();
            pr.next = pr.next.max(rec.offset + 1);
            if wanted {
                pr.inflight.insert(rec.offset);
            }
            group.dirty = true;
        }
        if !wanted {
            continue;
        }
        let mut item = (shared_filter.clone(), stream, p, rec);
        loop {
            let candidates: Vec<mpsc::Sender<Inbound>> = {
                let mut g = groups.lock();
                let Some(group) = g.get_mut(&shared_filter) else {
                    return;
                };
                if group.members.is_empty() {
                    break;
                }
                let start = group.next % group.members.len();
                group.next = group.next.wrapping_add(1);
                let n = group.members.len();
                (0..n)
                    .map(|i| group.members[(start + i) % n].1.clone())
                    .collect()
            };
            let mut pending = Some(item);
            for tx in &candidates {
                let Some(d) = pending.take() else { break };
                if let Err(e) = tx.try_send(Inbound::Shared(d)) {
                    pending = e.into_inner().into_shared();
                }
            }
            let Some(back) = pending else { break };
            // Everyone is busy: wait for the first member to take it.
            match candidates[0].send(Inbound::Shared(back)).await {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => match back.into_shared() {
                    Some(back) => item = back,
                    None => break,
                },
            }
        }
    }
}
