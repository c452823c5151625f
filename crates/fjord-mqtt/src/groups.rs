//! Shared subscriptions `$share/{group}/{filter}` (MQTT 5.0 §4.8.2): one
//! reader per group follows the streams the filter selects, from when the
//! group forms, and hands each matching record to one member in turn. A
//! member that leaves with deliveries unacknowledged gives them back, and
//! they go to another member. A group lives while it has members.

use std::collections::HashMap;
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
/// record.
pub type SharedDelivery = (String, StreamName, Record);

const GROUP_QUEUE: usize = 256;

struct Group {
    members: Vec<(u64, mpsc::Sender<SharedDelivery>)>,
    next: usize,
    tasks: Vec<AbortHandle>,
    feed: mpsc::Sender<(StreamName, Record)>,
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
    /// the group if needed.
    pub async fn join(
        &self,
        shared_filter: &str,
        map: &TopicMap,
        member: u64,
        tx: mpsc::Sender<SharedDelivery>,
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
                return;
            }
        }
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
        for stream in streams {
            let handles = self
                .follow(stream.clone(), Position::Latest, feed.clone())
                .await;
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
                    },
                );
            }
        }
    }

    /// Removes a member; the last one dissolves the group.
    pub fn leave(&self, shared_filter: &str, member: u64) {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get_mut(shared_filter) {
            g.members.retain(|(id, _)| *id != member);
            if g.members.is_empty() {
                if let Some(g) = groups.remove(shared_filter) {
                    g.tasks.iter().for_each(AbortHandle::abort);
                }
            }
        }
    }

    /// Gives a delivery a leaving member did not get acknowledged back to
    /// the group, for another member.
    pub fn give_back(&self, shared_filter: &str, stream: StreamName, rec: Record) {
        let feed = self
            .groups
            .lock()
            .get(shared_filter)
            .map(|g| g.feed.clone());
        if let Some(feed) = feed {
            let _ = feed.try_send((stream, rec));
        }
    }

    async fn follow(
        &self,
        stream: StreamName,
        from: Position,
        feed: mpsc::Sender<(StreamName, Record)>,
    ) -> Vec<AbortHandle> {
        let sref = StreamRef {
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
            stream,
        };
        follow_stream(self.broker.clone(), sref, from, feed).await
    }
}

async fn follow_stream(
    broker: Arc<Broker>,
    sref: StreamRef,
    from: Position,
    feed: mpsc::Sender<(StreamName, Record)>,
) -> Vec<AbortHandle> {
    let Ok(n) = broker.partition_count(&sref) else {
        return Vec::new();
    };
    let mut handles = Vec::new();
    for p in 0..n {
        let Ok(next) = broker.resolve(&sref, p, from).await else {
            continue;
        };
        let (broker, sref, feed) = (broker.clone(), sref.clone(), feed.clone());
        handles.push(
            tokio::spawn(async move {
                broker
                    .follow(&sref, p, next, "mqtt", |item| {
                        let feed = feed.clone();
                        let stream = sref.stream.clone();
                        async move {
                            match item {
                                Followed::Record(rec) => feed.send((stream, rec)).await.is_ok(),
                                Followed::Skipped { .. } => true,
                            }
                        }
                    })
                    .await;
            })
            .abort_handle(),
        );
    }
    handles
}

/// Follows streams created later that `selection` covers, from their
/// start.
async fn follow_new(
    broker: Arc<Broker>,
    mut created: tokio::sync::broadcast::Receiver<StreamRef>,
    (tenant, namespace): (TenantName, NamespaceName),
    selection: Selection,
    mut followed: std::collections::HashSet<StreamName>,
    feed: mpsc::Sender<(StreamName, Record)>,
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
            tasks.extend(follow_stream(broker.clone(), s, Position::Earliest, feed.clone()).await);
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
    mut rx: mpsc::Receiver<(StreamName, Record)>,
) {
    while let Some((stream, rec)) = rx.recv().await {
        let msg = from_record(stream.as_str(), &rec, fjord_core::time::now_ms());
        if !topic::matches(&inner, &msg.topic) {
            continue;
        }
        let mut item = (shared_filter.clone(), stream, rec);
        loop {
            let candidates: Vec<mpsc::Sender<SharedDelivery>> = {
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
                match tx.try_send(pending.take().expect("an item")) {
                    Ok(()) => break,
                    Err(mpsc::error::TrySendError::Full(back))
                    | Err(mpsc::error::TrySendError::Closed(back)) => pending = Some(back),
                }
            }
            let Some(back) = pending else { break };
            // Everyone is busy: wait for the first member to take it.
            match candidates[0].send(back).await {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
    }
}
