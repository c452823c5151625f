//! The classic consumer-group coordinator (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup): members join, one generation after another; the leader
//! gets every member's subscription and hands out the assignment its
//! client-side assignor made, which the coordinator passes through.
//!
//! A rebalance starts when a member joins, leaves or times out; it ends
//! when every known member has joined again or the rebalance timeout has
//! passed (those that did not rejoin are dropped). Group state lives in
//! memory; committed offsets are Fjord cursors (see `offsets`), so they
//! survive a restart while group membership re-forms from the clients.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::Notify;

/// A member as the coordinator sees it.
struct Member {
    client_id: String,
    group_instance_id: Option<String>,
    /// (protocol name, metadata) in the member's order of preference.
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
}

impl Member {
    /// The member's metadata for the group's chosen protocol.
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Empty,
    /// Waiting for members to (re)join.
    Preparing,
    /// Joined; waiting for the leader's assignment.
    Completing,
    Stable,
}

struct State {
    phase: Phase,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Members that joined in the rebalance under way.
    joined: HashSet<String>,
    /// Member ids handed out (MEMBER_ID_REQUIRED) not yet joined.
    pending: HashSet<String>,
    rebalance_deadline: Option<Instant>,
    assignments: HashMap<String, Bytes>,
    /// Member ids replaced by a newer member with the same static
    /// instance id (KIP-345): their requests get FENCED_INSTANCE_ID.
    fenced: HashSet<String>,
}

impl State {
    /// The error for a member id this group does not have.
    fn unknown(&self, member_id: &str) -> ResponseError {
        if self.fenced.contains(member_id) {
            ResponseError::FencedInstanceId
        } else {
            ResponseError::UnknownMemberId
        }
    }

    /// Moves static member `old`'s place (assignment, leadership) to `new`
    /// and fences `old`; the caller inserts `new`'s entry. Returns whether
    /// `old` had the same protocols.
    fn hand_over(&mut self, old: &str, new: &str, protocols: &[(String, Bytes)]) -> bool {
        let same = self
            .members
            .remove(old)
            .is_some_and(|m| m.protocols == protocols);
        if let Some(a) = self.assignments.remove(old) {
            self.assignments.insert(new.to_string(), a);
        }
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new.to_string());
        }
        self.joined.remove(old);
        if self.fenced.len() > 10_000 {
            self.fenced.clear();
        }
        self.fenced.insert(old.to_string());
        same
    }

    fn static_member(&self, instance: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.group_instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.clone())
    }
}

struct Group {
    state: parking_lot::Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
pub struct Coordinator {
    groups: parking_lot::Mutex<HashMap<String, Arc<Group>>>,
    next_id: std::sync::atomic::AtomicU64,
}

pub struct JoinArgs {
    pub group: String,
    pub member_id: String,
    pub client_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// JoinGroup v4+: a new member first gets its id with
    /// MEMBER_ID_REQUIRED and joins again with it.
    pub require_known_id: bool,
}

pub struct Joined {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member and its metadata for the protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl Joined {
    fn error(e: ResponseError, member_id: String) -> Joined {
        Joined {
            error: Some(e),
            generation: -1,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            member_id,
            members: Vec::new(),
        }
    }
}

impl Coordinator {
    fn group(&self, id: &str) -> Arc<Group> {
        self.groups
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Group {
                    state: parking_lot::Mutex::new(State {
                        phase: Phase::Empty,
                        generation: 0,
                        protocol_type: String::new(),
                        protocol: None,
                        leader: None,
                        members: BTreeMap::new(),
                        joined: HashSet::new(),
                        pending: HashSet::new(),
                        rebalance_deadline: None,
                        assignments: HashMap::new(),
                        fenced: HashSet::new(),
                    }),
                    changed: Notify::new(),
                })
            })
            .clone()
    }

    fn existing(&self, id: &str) -> Option<Arc<Group>> {
        self.groups.lock().get(id).cloned()
    }

    pub async fn join(&self, a: JoinArgs) -> Joined {
        if a.group.is_empty() {
            return Joined::error(ResponseError::InvalidGroupId, a.member_id);
        }
        if a.protocols.is_empty() || a.protocol_type.is_empty() {
            return Joined::error(ResponseError::InconsistentGroupProtocol, a.member_id);
        }
        let g = self.group(&a.group);
        let member_id = {
            let mut st = g.state.lock();
            if !st.members.is_empty() && st.protocol_type != a.protocol_type {
                return Joined::error(ResponseError::InconsistentGroupProtocol, a.member_id);
            }
            let new_id = || {
                let n = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!(
                    "{}-{n}",
                    if a.client_id.is_empty() {
                        "member"
                    } else {
                        &a.client_id
                    }
                )
            };
            let known = a
                .group_instance_id
                .as_deref()
                .and_then(|i| st.static_member(i));
            // A static member back (restarted) takes over its old entry
            // under a new id; while the group is stable and its protocols
            // are unchanged, no rebalance: it gets its previous assignment
            // at SyncGroup.
            let mut unchanged_static = false;
            let member_id = if let Some(old) = known.filter(|old| *old != a.member_id) {
                if !a.member_id.is_empty() {
                    return Joined::error(ResponseError::FencedInstanceId, a.member_id);
                }
                let id = new_id();
                unchanged_static = st.hand_over(&old, &id, &a.protocols);
                id
            } else if a.member_id.is_empty() {
                let id = new_id();
                // Static members skip the member-id round trip.
                if a.require_known_id && a.group_instance_id.is_none() {
                    st.pending.insert(id.clone());
                    return Joined::error(ResponseError::MemberIdRequired, id);
                }
                id
            } else {
                if !st.members.contains_key(&a.member_id) && !st.pending.remove(&a.member_id) {
                    let e = st.unknown(&a.member_id);
                    return Joined::error(e, a.member_id);
                }
                a.member_id.clone()
            };
            st.protocol_type = a.protocol_type.clone();
            st.members.insert(
                member_id.clone(),
                Member {
                    client_id: a.client_id.clone(),
                    group_instance_id: a.group_instance_id.clone(),
                    protocols: a.protocols.clone(),
                    session_timeout: a.session_timeout,
                    rebalance_timeout: a.rebalance_timeout,
                    last_seen: Instant::now(),
                },
            );
            if unchanged_static && st.phase == Phase::Stable {
                return joined_response(&st, &member_id);
            }
            if st.phase != Phase::Preparing {
                start_rebalance(&mut st);
            }
            st.joined.insert(member_id.clone());
            try_complete(&mut st, &g.changed);
            member_id
        };
        // Wait for the rebalance to complete (or this member to be dropped).
        loop {
            let notified = g.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut st = g.state.lock();
                if !st.members.contains_key(&member_id) {
                    return Joined::error(ResponseError::UnknownMemberId, member_id);
                }
                if st.phase != Phase::Preparing {
                    return joined_response(&st, &member_id);
                }
                if st.rebalance_deadline.is_some_and(|d| Instant::now() >= d) {
                    expire_rebalance(&mut st, &g.changed);
                    continue;
                }
                st.rebalance_deadline
            };
            match deadline {
                Some(d) => {
                    let _ = tokio::time::timeout_at(d.into(), notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// SyncGroup: the leader's assignment in, each member's share out.
    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<(Bytes, String, String), ResponseError> {
        let Some(g) = self.existing(group) else {
            return Err(ResponseError::UnknownMemberId);
        };
        loop {
            let notified = g.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let timeout = {
                let mut st = g.state.lock();
                let Some(m) = st.members.get_mut(member_id) else {
                    return Err(st.unknown(member_id));
                };
                m.last_seen = Instant::now();
                let timeout = m.session_timeout;
                if generation != st.generation {
                    return Err(ResponseError::IllegalGeneration);
                }
                match st.phase {
                    Phase::Preparing | Phase::Empty => {
                        return Err(ResponseError::RebalanceInProgress)
                    }
                    Phase::Stable => {
                        let a = st.assignments.get(member_id).cloned().unwrap_or_default();
                        return Ok((
                            a,
                            st.protocol_type.clone(),
                            st.protocol.clone().unwrap_or_default(),
                        ));
                    }
                    Phase::Completing => {
                        if st.leader.as_deref() == Some(member_id) {
                            st.assignments = assignments.iter().cloned().collect();
                            st.phase = Phase::Stable;
                            g.changed.notify_waiters();
                            continue;
                        }
                    }
                }
                timeout
            };
            if tokio::time::timeout(timeout, notified).await.is_err() {
                return Err(ResponseError::RebalanceInProgress);
            }
        }
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), ResponseError> {
        let Some(g) = self.existing(group) else {
            return Err(ResponseError::UnknownMemberId);
        };
        let mut st = g.state.lock();
        let phase = st.phase;
        let current = st.generation;
        let Some(m) = st.members.get_mut(member_id) else {
            return Err(st.unknown(member_id));
        };
        m.last_seen = Instant::now();
        if phase == Phase::Preparing {
            return Err(ResponseError::RebalanceInProgress);
        }
        if generation != current {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Removes members, named by member id or (static members) by
    /// instance id; those left rebalance.
    pub fn leave(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), ResponseError>> {
        let Some(g) = self.existing(group) else {
            return members
                .iter()
                .map(|_| Err(ResponseError::UnknownMemberId))
                .collect();
        };
        let mut st = g.state.lock();
        let out = members
            .iter()
            .map(|(id, instance)| {
                let id = match instance.as_deref().map(|i| st.static_member(i)) {
                    // The instance's current member, unless the request
                    // names an older, fenced one.
                    Some(Some(current)) if id.is_empty() || *id == current => current,
                    Some(Some(_)) => return Err(ResponseError::FencedInstanceId),
                    Some(None) => return Err(ResponseError::UnknownMemberId),
                    None => id.clone(),
                };
                match st.members.remove(&id) {
                    Some(_) => {
                        st.joined.remove(&id);
                        Ok(())
                    }
                    None => Err(st.unknown(&id)),
                }
            })
            .collect();
        after_departure(&mut st, &g.changed);
        out
    }

    /// Drops members whose session timed out (no heartbeat, sync or join
    /// within it); called periodically.
    pub fn expire(&self) {
        let groups: Vec<Arc<Group>> = self.groups.lock().values().cloned().collect();
        let now = Instant::now();
        for g in groups {
            let mut st = g.state.lock();
            if st.phase == Phase::Preparing && st.rebalance_deadline.is_some_and(|d| now >= d) {
                expire_rebalance(&mut st, &g.changed);
                continue;
            }
            // As Kafka's coordinator: a member waiting for its JoinGroup
            // answer does not expire; any other whose session ran out goes,
            // also in the middle of a rebalance (which may then complete).
            let before = st.members.len();
            let waiting = std::mem::take(&mut st.joined);
            let in_rebalance = st.phase == Phase::Preparing;
            st.members.retain(|id, m| {
                (in_rebalance && waiting.contains(id))
                    || now.duration_since(m.last_seen) < m.session_timeout
            });
            st.joined = waiting;
            if st.members.len() != before {
                after_departure(&mut st, &g.changed);
            }
        }
    }

    /// Whether `member_id` belongs to `group` in `generation` (offset
    /// commits from group members are checked; standalone ones are not).
    pub fn check_member(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), ResponseError> {
        let Some(g) = self.existing(group) else {
            return Err(ResponseError::UnknownMemberId);
        };
        let st = g.state.lock();
        if !st.members.contains_key(member_id) {
            return Err(st.unknown(member_id));
        }
        if st.generation != generation {
            return Err(ResponseError::IllegalGeneration);
        }
        // As Kafka's coordinator: a member of the current generation may
        // commit while others rejoin, not while the assignment is pending.
        if st.phase == Phase::Completing {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }
}

/// A group as ListGroups and DescribeGroups show it.
pub struct GroupView {
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, Bytes, Bytes)>,
}

impl Phase {
    /// Kafka's names for the group states.
    fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::Preparing => "PreparingRebalance",
            Phase::Completing => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

impl Coordinator {
    pub fn list(&self) -> Vec<GroupView> {
        let groups: Vec<(String, Arc<Group>)> = self
            .groups
            .lock()
            .iter()
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        groups
            .into_iter()
            .map(|(id, g)| view(&id, &g.state.lock()))
            .collect()
    }

    /// Forgets an empty group (DeleteGroups); one with members is refused
    /// with NON_EMPTY_GROUP. `Ok(false)`: the group was not here.
    pub fn remove_if_empty(&self, group: &str) -> Result<bool, ResponseError> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get(group) else {
            return Ok(false);
        };
        if !g.state.lock().members.is_empty() {
            return Err(ResponseError::NonEmptyGroup);
        }
        groups.remove(group);
        Ok(true)
    }

    /// Whether a member of `group` subscribes to `topic` (consumer
    /// protocol metadata; metadata that cannot be read counts as yes).
    pub fn subscribes_to(&self, group: &str, topic: &str) -> bool {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        let Some(g) = self.existing(group) else {
            return false;
        };
        let st = g.state.lock();
        let protocol = st.protocol.clone().unwrap_or_default();
        st.members.values().any(|m| {
            let mut meta = m.metadata_for(&protocol);
            if st.protocol_type != "consumer" || meta.len() < 2 {
                return true;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]);
            let _ = bytes::Buf::get_i16(&mut meta);
            match ConsumerProtocolSubscription::decode(&mut meta, version.clamp(0, 3)) {
                Ok(sub) => sub.topics.iter().any(|t| &**t == topic),
                Err(_) => true,
            }
        })
    }

    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let g = self.existing(group)?;
        let st = g.state.lock();
        Some(view(group, &st))
    }
}

fn view(id: &str, st: &State) -> GroupView {
    let protocol = st.protocol.clone().unwrap_or_default();
    GroupView {
        group_id: id.to_string(),
        state: st.phase.name(),
        protocol_type: st.protocol_type.clone(),
        protocol: protocol.clone(),
        members: st
            .members
            .iter()
            .map(|(mid, m)| {
                let meta = m.metadata_for(&protocol);
                let assignment = st.assignments.get(mid).cloned().unwrap_or_default();
                (
                    mid.clone(),
                    m.group_instance_id.clone(),
                    m.client_id.clone(),
                    meta,
                    assignment,
                )
            })
            .collect(),
    }
}

fn start_rebalance(st: &mut State) {
    st.phase = Phase::Preparing;
    st.joined.clear();
    let wait = st
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or(Duration::from_secs(30));
    st.rebalance_deadline = Some(Instant::now() + wait);
}

fn after_departure(st: &mut State, changed: &Notify) {
    if st.members.is_empty() {
        st.phase = Phase::Empty;
        st.leader = None;
        st.protocol = None;
        st.assignments.clear();
        st.generation += 1;
        changed.notify_waiters();
        return;
    }
    if st.phase != Phase::Preparing {
        start_rebalance(st);
    }
    try_complete(st, changed);
    changed.notify_waiters();
}

/// The rebalance timed out: members that did not rejoin are dropped.
fn expire_rebalance(st: &mut State, changed: &Notify) {
    let joined = st.joined.clone();
    st.members.retain(|id, _| joined.contains(id));
    if st.members.is_empty() {
        after_departure(st, changed);
        return;
    }
    complete(st, changed);
}

fn try_complete(st: &mut State, changed: &Notify) {
    if st.phase == Phase::Preparing && st.members.keys().all(|id| st.joined.contains(id)) {
        complete(st, changed);
    }
}

fn complete(st: &mut State, changed: &Notify) {
    st.generation += 1;
    // The first protocol, in the leader's order, that every member has.
    let leader = st
        .leader
        .clone()
        .filter(|l| st.members.contains_key(l))
        .or_else(|| st.members.keys().next().cloned());
    let protocol = leader.as_ref().and_then(|l| {
        st.members[l]
            .protocols
            .iter()
            .map(|(n, _)| n.clone())
            .find(|n| {
                st.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
    });
    st.leader = leader;
    st.protocol = protocol;
    st.assignments.clear();
    st.joined.clear();
    st.rebalance_deadline = None;
    st.phase = Phase::Completing;
    changed.notify_waiters();
}

fn joined_response(st: &State, member_id: &str) -> Joined {
    let Some(protocol) = st.protocol.clone() else {
        return Joined::error(
            ResponseError::InconsistentGroupProtocol,
            member_id.to_string(),
        );
    };
    let leader = st.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        st.members
            .iter()
            .map(|(id, m)| {
                let meta = m.metadata_for(&protocol);
                (id.clone(), m.group_instance_id.clone(), meta)
            })
            .collect()
    } else {
        Vec::new()
    };
    Joined {
        error: None,
        generation: st.generation,
        protocol_type: st.protocol_type.clone(),
        protocol,
        leader,
        member_id: member_id.to_string(),
        members,
    }
}
