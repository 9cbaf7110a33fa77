//! ListGroups, DescribeGroups and DeleteGroups.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    ListGroupsRequest, ListGroupsResponse,
};

use super::journal::Record;
use super::membership::error_code;
use super::state::{GroupState, CLASSIC_GROUP_TYPE};
use super::{str_bytes, GroupCoordinator};

/// ACL operation codes, as bits of DescribeGroups `authorized_operations`.
const ACL_OPERATION_READ: i32 = 3;
const ACL_OPERATION_DELETE: i32 = 6;
const ACL_OPERATION_DESCRIBE: i32 = 8;

/// Operations every client may perform on a group: Weir has no ACLs yet.
const GROUP_AUTHORIZED_OPERATIONS: i32 =
    (1 << ACL_OPERATION_READ) | (1 << ACL_OPERATION_DELETE) | (1 << ACL_OPERATION_DESCRIBE);

impl GroupCoordinator {
    /// Handles ListGroups v0-v5, applying the state (v4+) and type (v5+)
    /// filters case-insensitively. Groups are sorted by id.
    pub async fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let inner = self.inner.borrow();
        let mut response = ListGroupsResponse::default();
        if inner.closed {
            response.error_code = ResponseError::NotCoordinator.code();
            return response;
        }
        let state_matches = |state: GroupState| {
            req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|wanted| wanted.as_str().eq_ignore_ascii_case(state.as_str()))
        };
        let type_matches = req.types_filter.is_empty()
            || req
                .types_filter
                .iter()
                .any(|wanted| wanted.as_str().eq_ignore_ascii_case(CLASSIC_GROUP_TYPE));
        if !type_matches {
            return response;
        }

        let mut groups: Vec<_> = inner
            .groups
            .values()
            .filter(|group| !group.is(GroupState::Dead) && state_matches(group.state))
            .collect();
        groups.sort_by(|a, b| a.id.cmp(&b.id));
        response.groups = groups
            .into_iter()
            .map(|group| {
                let mut listed = ListedGroup::default();
                listed.group_id = str_bytes(&group.id).into();
                listed.protocol_type =
                    str_bytes(group.protocol_type.as_deref().unwrap_or_default());
                if version >= 4 {
                    listed.group_state = str_bytes(group.state.as_str());
                }
                if version >= 5 {
                    listed.group_type = str_bytes(CLASSIC_GROUP_TYPE);
                }
                listed
            })
            .collect();
        response
    }

    /// Handles DescribeGroups v0-v6. An unknown group is reported as Dead
    /// before v6 and as GROUP_ID_NOT_FOUND from v6 on.
    pub async fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let inner = self.inner.borrow();
        let mut response = DescribeGroupsResponse::default();
        response.groups = req
            .groups
            .iter()
            .map(|group_id| {
                let mut described = DescribedGroup::default();
                described.group_id = group_id.clone();
                if version >= 3 && req.include_authorized_operations {
                    described.authorized_operations = GROUP_AUTHORIZED_OPERATIONS;
                }
                if inner.closed {
                    described.error_code = ResponseError::NotCoordinator.code();
                    return described;
                }
                let group = inner
                    .groups
                    .get(group_id.0.as_str())
                    .filter(|group| !group.is(GroupState::Dead));
                let Some(group) = group else {
                    described.group_state = str_bytes(GroupState::Dead.as_str());
                    if version >= 6 {
                        described.error_code = ResponseError::GroupIdNotFound.code();
                        described.error_message = Some(str_bytes(&format!(
                            "group {} not found",
                            group_id.0.as_str()
                        )));
                    }
                    return described;
                };

                described.group_state = str_bytes(group.state.as_str());
                described.protocol_type =
                    str_bytes(group.protocol_type.as_deref().unwrap_or_default());
                // Metadata and assignments are shown only once the group is Stable.
                let stable_protocol = group
                    .protocol_name
                    .as_deref()
                    .filter(|_| group.is(GroupState::Stable));
                described.protocol_data = str_bytes(stable_protocol.unwrap_or_default());
                described.members = group
                    .members
                    .values()
                    .map(|member| {
                        let mut described_member = DescribedGroupMember::default();
                        described_member.member_id = str_bytes(&member.member_id);
                        if version >= 4 {
                            described_member.group_instance_id =
                                member.group_instance_id.as_deref().map(str_bytes);
                        }
                        described_member.client_id = str_bytes(&member.client_id);
                        described_member.client_host = str_bytes(&member.client_host);
                        if let Some(protocol) = stable_protocol {
                            described_member.member_metadata = member.metadata(protocol);
                            described_member.member_assignment = member.assignment.clone();
                        }
                        described_member
                    })
                    .collect();
                described
            })
            .collect();
        response
    }

    /// Handles DeleteGroups v0-v2 by deleting Empty groups with their
    /// offsets. Responds once the deletion is durable.
    pub async fn delete_groups(
        &self,
        req: DeleteGroupsRequest,
        _version: i16,
    ) -> DeleteGroupsResponse {
        let (mut results, durable) = {
            let mut inner = self.inner.borrow_mut();
            let closed = inner.closed;
            let mut records = Vec::new();
            let results: Vec<(String, Option<ResponseError>)> = req
                .groups_names
                .iter()
                .map(|group_id| {
                    let group_id = group_id.0.as_str().to_string();
                    if closed {
                        return (group_id, Some(ResponseError::NotCoordinator));
                    }
                    let error = match inner.groups.get_mut(&group_id) {
                        None => Some(ResponseError::GroupIdNotFound),
                        Some(group) => match group.state {
                            GroupState::Dead => Some(ResponseError::GroupIdNotFound),
                            GroupState::Empty => {
                                group.state = GroupState::Dead;
                                records.push(Record::GroupDelete {
                                    group: group_id.clone(),
                                });
                                None
                            }
                            _ => Some(ResponseError::NonEmptyGroup),
                        },
                    };
                    (group_id, error)
                })
                .collect();
            let durable = (!records.is_empty()).then(|| inner.append_records(records));
            (results, durable)
        };

        if let Some(durable) = durable {
            if !matches!(durable.await, Ok(Ok(()))) {
                // The deletion was not stored: the groups are Empty again.
                let mut inner = self.inner.borrow_mut();
                for (group_id, error) in results.iter_mut().filter(|(_, error)| error.is_none()) {
                    if let Some(group) = inner.groups.get_mut(group_id.as_str()) {
                        if group.is(GroupState::Dead) {
                            group.state = GroupState::Empty;
                        }
                    }
                    *error = Some(ResponseError::CoordinatorNotAvailable);
                }
            } else {
                let deleted = results.iter().filter(|(_, error)| error.is_none()).count();
                tracing::info!(target: "weir::group", groups = deleted, "deleted groups");
            }
        }

        let mut response = DeleteGroupsResponse::default();
        response.results = results
            .into_iter()
            .map(|(group_id, error)| {
                let mut result = DeletableGroupResult::default();
                result.group_id = str_bytes(&group_id).into();
                result.error_code = error_code(error);
                result
            })
            .collect();
        response
    }
}
