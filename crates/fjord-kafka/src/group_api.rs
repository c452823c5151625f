//! Consumer groups as the admin APIs see them: ListGroups, DescribeGroups,
//! DeleteGroups and OffsetDelete. A group is live in the coordinator
//! ([`crate::groups`]) or only has committed offsets (Fjord cursors named
//! after it), as after a restart; both are listed, the latter as `Empty`.

use std::collections::BTreeMap;

use fjord_core::StreamRef;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, ListGroupsRequest, ListGroupsResponse, OffsetDeleteRequest, OffsetDeleteResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::handlers::str_bytes;
use crate::names::stream_for_topic;
use crate::server::Session;
use fjord_auth::Action;

/// Every name with committed offsets in the connection's tenant, with the
/// streams it has them on.
fn committed_groups(sh: &Session<'_>) -> BTreeMap<String, Vec<StreamRef>> {
    let mut out: BTreeMap<String, Vec<StreamRef>> = BTreeMap::new();
    for s in crate::handlers::all_streams(sh) {
        for (name, _) in sh.broker.consumers(&s).unwrap_or_default() {
            out.entry(name).or_default().push(s.clone());
        }
    }
    out
}

fn listed(group_id: String, protocol_type: String, state: &'static str) -> ListedGroup {
    let mut l = ListedGroup::default();
    l.group_id = GroupId(str_bytes(group_id));
    l.protocol_type = str_bytes(protocol_type);
    l.group_state = StrBytes::from_static_str(state);
    l.group_type = StrBytes::from_static_str("classic");
    l
}

pub fn list_groups(sh: &Session<'_>, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut r = ListGroupsResponse::default();
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
    let wanted =
        |state: &str| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(state));
    let live = sh.groups_of_tenant();
    let mut groups: Vec<ListedGroup> = Vec::new();
    for name in committed_groups(sh).into_keys() {
        if !live.iter().any(|g| g.group_id == name)
            && wanted("Empty")
            && sh.may_group(Action::Describe, &name)
        {
            groups.push(listed(name, "consumer".into(), "Empty"));
        }
    }
    for g in live {
        if wanted(g.state) && sh.may_group(Action::Describe, &g.group_id) {
            groups.push(listed(g.group_id, g.protocol_type, g.state));
        }
    }
    r.groups = groups;
    r
}

pub fn describe_groups(sh: &Session<'_>, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut r = DescribeGroupsResponse::default();
    let committed = committed_groups(sh);
    r.groups = req
        .groups
        .into_iter()
        .map(|id| {
            let mut d = DescribedGroup::default();
            d.group_id = id.clone();
            if !sh.may_group(Action::Describe, &id.0) {
                d.error_code = ResponseError::GroupAuthorizationFailed.code();
                return d;
            }
            match sh.groups.describe(&sh.group_key(&id.0)) {
                // Offsets but no members: Empty, as Kafka shows a group
                // whose consumers are all gone.
                None if committed.contains_key(&*id.0) => {
                    d.group_state = StrBytes::from_static_str("Empty");
                    d.protocol_type = StrBytes::from_static_str("consumer");
                }
                // Kafka describes a group it does not know as Dead.
                None => d.group_state = StrBytes::from_static_str("Dead"),
                Some(g) => {
                    d.group_state = StrBytes::from_static_str(g.state);
                    d.protocol_type = str_bytes(g.protocol_type);
                    d.protocol_data = str_bytes(g.protocol);
                    d.members = g
                        .members
                        .into_iter()
                        .map(|(mid, instance, client, meta, assignment)| {
                            let mut m = DescribedGroupMember::default();
                            m.member_id = str_bytes(mid);
                            m.group_instance_id = instance.map(str_bytes);
                            m.client_id = str_bytes(client);
                            m.member_metadata = meta;
                            m.member_assignment = assignment;
                            m
                        })
                        .collect();
                }
            }
            d
        })
        .collect();
    r
}

/// Deletes empty groups and every offset they committed.
pub fn delete_groups(sh: &Session<'_>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut r = DeleteGroupsResponse::default();
    let committed = committed_groups(sh);
    for id in req.groups_names {
        let mut res = DeletableGroupResult::default();
        res.group_id = id.clone();
        if !sh.may_group(Action::Admin, &id.0) {
            res.error_code = ResponseError::GroupAuthorizationFailed.code();
            r.results.push(res);
            continue;
        }
        res.error_code = match sh.groups.remove_if_empty(&sh.group_key(&id.0)) {
            Err(e) => e.code(),
            Ok(live) => {
                let streams = committed.get(&*id.0).cloned().unwrap_or_default();
                if !live && streams.is_empty() {
                    ResponseError::GroupIdNotFound.code()
                } else {
                    let failed = streams
                        .iter()
                        .any(|s| sh.broker.delete_committed(s, &id.0, None).is_err());
                    if failed {
                        ResponseError::UnknownServerError.code()
                    } else {
                        0
                    }
                }
            }
        };
        r.results.push(res);
    }
    r
}

/// Deletes a group's committed offsets on some partitions; refused for a
/// topic the group's live members subscribe to.
pub fn offset_delete(sh: &Session<'_>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let mut r = OffsetDeleteResponse::default();
    let group = req.group_id.0.to_string();
    if !sh.may_group(Action::Admin, &group) {
        r.error_code = ResponseError::GroupAuthorizationFailed.code();
        return r;
    }
    let key = sh.group_key(&group);
    let live = sh.groups.describe(&key).is_some();
    if !live && !committed_groups(sh).contains_key(&group) {
        r.error_code = ResponseError::GroupIdNotFound.code();
        return r;
    }
    for t in req.topics {
        let mut tr = OffsetDeleteResponseTopic::default();
        tr.name = t.name.clone();
        let sref = stream_for_topic(&sh.tenant, &t.name.0);
        let subscribed = live && sh.groups.subscribes_to(&key, &t.name.0);
        for p in t.partitions {
            let mut pr = OffsetDeleteResponsePartition::default();
            pr.partition_index = p.partition_index;
            pr.error_code = match &sref {
                _ if subscribed => ResponseError::GroupSubscribedToTopic.code(),
                Some(s) if p.partition_index >= 0 => {
                    match sh
                        .broker
                        .delete_committed(s, &group, Some(&[p.partition_index as u32]))
                    {
                        Ok(_) => 0,
                        Err(e) => crate::handlers::error_code(&e),
                    }
                }
                _ => ResponseError::UnknownTopicOrPartition.code(),
            };
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    r
}
