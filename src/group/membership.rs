//! JoinGroup, SyncGroup, Heartbeat and LeaveGroup, and the timers that drive
//! rebalances and session expiry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};

use super::journal::Record;
use super::state::{Group, GroupState, JoinOutcome, Member, SyncOutcome};
use super::{spawn_background, str_bytes, ClientInfo, Cx, GroupCoordinator, Inner};
use crate::runtime;

/// How long a new member may wait in a rebalance before it is dropped. It
/// has no member id to heartbeat with, so a client that gave up on its
/// JoinGroup would otherwise stay in the group until the rebalance timeout.
const NEW_MEMBER_JOIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Either an immediate result or a receiver that yields it once the rebalance progresses.
enum Pending<T> {
    Ready(T),
    Waiting(oneshot::Receiver<T>),
}

/// A JoinGroup request with its fields in the coordinator's own types.
struct JoinParams {
    member_id: String,
    group_instance_id: Option<String>,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    require_known_member_id: bool,
    client: ClientInfo,
    reason: String,
}

impl GroupCoordinator {
    /// Handles JoinGroup without client details; see [`GroupCoordinator::join_group_from`].
    pub async fn join_group(&self, req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
        self.join_group_from(req, version, ClientInfo::default())
            .await
    }

    /// Handles JoinGroup v0-v9, waiting until the rebalance the request
    /// takes part in completes. `client` is shown by DescribeGroups.
    pub async fn join_group_from(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client: ClientInfo,
    ) -> JoinGroupResponse {
        let member_id = req.member_id.as_str().to_string();
        let pending = self.inner.borrow_mut().begin_join(req, version, client);
        let outcome = match pending {
            Pending::Ready(outcome) => outcome,
            Pending::Waiting(receiver) => receiver
                .await
                .unwrap_or_else(|_| JoinOutcome::error(member_id, ResponseError::NotCoordinator)),
        };
        join_response(outcome, version)
    }

    /// Handles SyncGroup v0-v5; followers wait for the leader's assignment.
    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let pending = self.inner.borrow_mut().begin_sync(req);
        let outcome = match pending {
            Pending::Ready(outcome) => outcome,
            Pending::Waiting(receiver) => receiver
                .await
                .unwrap_or_else(|_| SyncOutcome::error(ResponseError::NotCoordinator)),
        };
        let mut response = SyncGroupResponse::default();
        response.error_code = error_code(outcome.error);
        response.assignment = outcome.assignment;
        if version >= 5 {
            response.protocol_type = outcome.protocol_type.as_deref().map(str_bytes);
            response.protocol_name = outcome.protocol_name.as_deref().map(str_bytes);
        }
        response
    }

    /// Handles Heartbeat v0-v4.
    pub async fn heartbeat(&self, req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        let error = self.inner.borrow_mut().heartbeat(&req);
        let mut response = HeartbeatResponse::default();
        response.error_code = error_code(error);
        response
    }

    /// Handles LeaveGroup v0-v5: a single member before v3, a batch of members after.
    pub async fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|member| {
                    (
                        member.member_id.as_str().to_string(),
                        member
                            .group_instance_id
                            .as_ref()
                            .map(|id| id.as_str().to_string()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.as_str().to_string(), None)]
        };
        let (top_error, member_errors) = self
            .inner
            .borrow_mut()
            .leave_group(req.group_id.0.as_str(), &leaving);

        let mut response = LeaveGroupResponse::default();
        if version >= 3 {
            response.error_code = error_code(top_error);
            response.members = leaving
                .iter()
                .zip(&member_errors)
                .map(|((member_id, instance_id), error)| {
                    let mut member = MemberResponse::default();
                    member.member_id = str_bytes(member_id);
                    member.group_instance_id = instance_id.as_deref().map(str_bytes);
                    member.error_code = error_code(*error);
                    member
                })
                .collect();
        } else {
            // Before v3 the only member's error is the response's error.
            response.error_code =
                error_code(top_error.or_else(|| member_errors.first().copied().flatten()));
        }
        response
    }
}

pub(super) fn error_code(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |error| error.code())
}

fn join_response(outcome: JoinOutcome, version: i16) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.error_code = error_code(outcome.error);
    response.generation_id = outcome.generation_id;
    if version >= 7 {
        response.protocol_type = outcome.protocol_type.as_deref().map(str_bytes);
        response.protocol_name = outcome.protocol_name.as_deref().map(str_bytes);
    } else {
        // The field is not nullable before v7.
        response.protocol_name = Some(str_bytes(
            outcome.protocol_name.as_deref().unwrap_or_default(),
        ));
    }
    response.leader = str_bytes(&outcome.leader_id);
    response.member_id = str_bytes(&outcome.member_id);
    response.members = outcome
        .members
        .into_iter()
        .map(|joined| {
            let mut member = JoinGroupResponseMember::default();
            member.member_id = str_bytes(&joined.member_id);
            if version >= 5 {
                member.group_instance_id = joined.group_instance_id.as_deref().map(str_bytes);
            }
            member.metadata = joined.metadata;
            member
        })
        .collect();
    response
}

fn generate_member_id(prefix: &str) -> String {
    let prefix = if prefix.is_empty() { "member" } else { prefix };
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// Builds the JoinGroup result of the current generation. Only the leader gets the member list.
fn current_generation(group: &Group, member_id: &str, leader_id: Option<&str>) -> JoinOutcome {
    let leader_id = leader_id.or(group.leader_id.as_deref()).unwrap_or_default();
    JoinOutcome {
        error: None,
        member_id: member_id.to_string(),
        generation_id: group.generation_id,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        leader_id: leader_id.to_string(),
        members: if leader_id == member_id {
            group.joined_members()
        } else {
            Vec::new()
        },
    }
}

impl Inner {
    fn begin_join(
        &mut self,
        req: JoinGroupRequest,
        version: i16,
        client: ClientInfo,
    ) -> Pending<JoinOutcome> {
        let member_id = req.member_id.as_str().to_string();
        let reject = |error| Pending::Ready(JoinOutcome::error(member_id.clone(), error));
        if self.closed {
            return reject(ResponseError::NotCoordinator);
        }
        let group_id = req.group_id.0.as_str().to_string();
        if group_id.is_empty() {
            return reject(ResponseError::InvalidGroupId);
        }
        let session_timeout_ms = req.session_timeout_ms;
        if session_timeout_ms < self.config.group_min_session_timeout_ms
            || session_timeout_ms > self.config.group_max_session_timeout_ms
        {
            return reject(ResponseError::InvalidSessionTimeout);
        }
        let protocols: Vec<(String, Bytes)> = req
            .protocols
            .iter()
            .map(|protocol| {
                (
                    protocol.name.as_str().to_string(),
                    protocol.metadata.clone(),
                )
            })
            .collect();
        if req.protocol_type.is_empty() || protocols.is_empty() {
            return reject(ResponseError::InconsistentGroupProtocol);
        }

        let params = JoinParams {
            member_id,
            group_instance_id: req
                .group_instance_id
                .as_ref()
                .map(|id| id.as_str().to_string()),
            protocol_type: req.protocol_type.as_str().to_string(),
            protocols,
            session_timeout_ms,
            // v0 has no rebalance timeout, so the session timeout is used instead.
            rebalance_timeout_ms: if version == 0 || req.rebalance_timeout_ms <= 0 {
                session_timeout_ms
            } else {
                req.rebalance_timeout_ms
            },
            require_known_member_id: version >= 4,
            client,
            reason: req.reason.as_ref().map_or_else(
                || "member joined".to_string(),
                |reason| reason.as_str().to_string(),
            ),
        };

        let pending = if params.member_id.is_empty() {
            let (group, mut cx) = self.split_or_create(&group_id);
            join_new_member(&mut cx, group, params)
        } else {
            let (group, mut cx) = self.split(&group_id);
            match group {
                None => Pending::Ready(JoinOutcome::error(
                    params.member_id,
                    ResponseError::UnknownMemberId,
                )),
                Some(group) => join_current_member(&mut cx, group, params),
            }
        };

        let (group, mut cx) = self.split(&group_id);
        if let Some(group) = group {
            if group.is(GroupState::PreparingRebalance) {
                try_complete_join(&mut cx, group);
            }
        }
        pending
    }

    fn begin_sync(&mut self, req: SyncGroupRequest) -> Pending<SyncOutcome> {
        let reject = |error| Pending::Ready(SyncOutcome::error(error));
        if self.closed {
            return reject(ResponseError::NotCoordinator);
        }
        let group_id = req.group_id.0.as_str();
        if group_id.is_empty() {
            return reject(ResponseError::InvalidGroupId);
        }
        let (group, mut cx) = self.split(group_id);
        let Some(group) = group else {
            return reject(ResponseError::UnknownMemberId);
        };
        if group.is(GroupState::Dead) {
            return reject(ResponseError::CoordinatorNotAvailable);
        }
        let member_id = req.member_id.as_str();
        let instance_id = req.group_instance_id.as_ref().map(|id| id.as_str());
        if let Some(error) =
            validate_current_member(group, member_id, instance_id, Some(req.generation_id))
        {
            return reject(error);
        }
        // SyncGroup v5+ names the protocol the member expects.
        let type_matches = req
            .protocol_type
            .as_ref()
            .is_none_or(|value| group.protocol_type.as_deref() == Some(value.as_str()));
        let name_matches = req
            .protocol_name
            .as_ref()
            .is_none_or(|value| group.protocol_name.as_deref() == Some(value.as_str()));
        if !type_matches || !name_matches {
            return reject(ResponseError::InconsistentGroupProtocol);
        }

        match group.state {
            GroupState::Empty | GroupState::Dead => reject(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => reject(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                let (sender, receiver) = oneshot::channel();
                let member = group.members.get_mut(member_id).expect("validated member");
                member.complete_sync(SyncOutcome::error(ResponseError::RebalanceInProgress));
                member.awaiting_sync = Some(sender);
                group.pending_sync.remove(member_id);
                if group.is_leader(member_id) {
                    let assignments: HashMap<&str, &Bytes> = req
                        .assignments
                        .iter()
                        .map(|assignment| (assignment.member_id.as_str(), &assignment.assignment))
                        .collect();
                    propagate_assignment(&mut cx, group, &assignments);
                }
                Pending::Waiting(receiver)
            }
            GroupState::Stable => {
                group.pending_sync.remove(member_id);
                let member = group.members.get_mut(member_id).expect("validated member");
                member.heartbeat_deadline = session_deadline(member);
                Pending::Ready(SyncOutcome {
                    error: None,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    assignment: member.assignment.clone(),
                })
            }
        }
    }

    fn heartbeat(&mut self, req: &HeartbeatRequest) -> Option<ResponseError> {
        if self.closed {
            return Some(ResponseError::NotCoordinator);
        }
        let group_id = req.group_id.0.as_str();
        if group_id.is_empty() {
            return Some(ResponseError::InvalidGroupId);
        }
        let (group, _cx) = self.split(group_id);
        let Some(group) = group else {
            return Some(ResponseError::UnknownMemberId);
        };
        if group.is(GroupState::Dead) {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let member_id = req.member_id.as_str();
        let instance_id = req.group_instance_id.as_ref().map(|id| id.as_str());
        if let Some(error) =
            validate_current_member(group, member_id, instance_id, Some(req.generation_id))
        {
            return Some(error);
        }
        let state = group.state;
        if state == GroupState::Empty {
            return Some(ResponseError::UnknownMemberId);
        }
        let member = group.members.get_mut(member_id).expect("validated member");
        member.heartbeat_deadline = session_deadline(member);
        (state == GroupState::PreparingRebalance).then_some(ResponseError::RebalanceInProgress)
    }

    /// Removes the leaving members. Returns the response's top-level error and
    /// one error per leaving member.
    fn leave_group(
        &mut self,
        group_id: &str,
        leaving: &[(String, Option<String>)],
    ) -> (Option<ResponseError>, Vec<Option<ResponseError>>) {
        if self.closed {
            return (Some(ResponseError::NotCoordinator), Vec::new());
        }
        if group_id.is_empty() {
            return (Some(ResponseError::InvalidGroupId), Vec::new());
        }
        let (group, mut cx) = self.split(group_id);
        let Some(group) = group else {
            return (
                None,
                vec![Some(ResponseError::UnknownMemberId); leaving.len()],
            );
        };
        if group.is(GroupState::Dead) {
            return (Some(ResponseError::CoordinatorNotAvailable), Vec::new());
        }

        let errors = leaving
            .iter()
            .map(|(member_id, instance_id)| {
                leave_one(&mut cx, group, member_id, instance_id.as_deref())
            })
            .collect();
        (None, errors)
    }

    /// Checks a member's session. Returns how long to sleep before the next
    /// check, or None once the member is gone.
    fn check_member_session(&mut self, group_id: &str, member_id: &str) -> Option<Duration> {
        if self.closed {
            return None;
        }
        let (group, mut cx) = self.split(group_id);
        let group = group?;
        let now = Instant::now();

        if let Some(deadline) = group.pending_members.get(member_id).copied() {
            if now < deadline {
                return Some(deadline - now);
            }
            group.pending_members.remove(member_id);
            tracing::info!(
                target: "weir::group",
                group = %group.id,
                member = member_id,
                "pending member did not join within its session timeout"
            );
            if group.is(GroupState::PreparingRebalance) {
                try_complete_join(&mut cx, group);
            }
            return None;
        }

        let member = group.members.get_mut(member_id)?;
        if now < member.heartbeat_deadline {
            return Some(member.heartbeat_deadline - now);
        }
        // Members waiting in a rebalance count as alive, unless they are new.
        let waiting = member.awaiting_join.is_some() || member.awaiting_sync.is_some();
        if waiting && !member.is_new {
            member.heartbeat_deadline = session_deadline(member);
            return Some(member.heartbeat_deadline - now);
        }
        tracing::info!(
            target: "weir::group",
            group = %group.id,
            member = member_id,
            "member session expired; removing it from the group"
        );
        remove_member_and_update_group(&mut cx, group, member_id, "session timeout");
        None
    }

    fn on_join_timer(&mut self, group_id: &str, epoch: u64) {
        if self.closed {
            return;
        }
        let initial_delay_ms = self.config.group_initial_rebalance_delay_ms.max(0) as i64;
        let (group, mut cx) = self.split(group_id);
        let Some(group) = group else {
            return;
        };
        if group.join_timer_epoch != epoch || !group.is(GroupState::PreparingRebalance) {
            return;
        }
        if let Some(remaining_ms) = group.initial_delay_remaining_ms {
            if group.new_member_added && remaining_ms > 0 {
                group.new_member_added = false;
                let delay_ms = initial_delay_ms.min(remaining_ms);
                group.initial_delay_remaining_ms = Some(remaining_ms - delay_ms);
                schedule_join_timer(&mut cx, group, delay_ms);
                return;
            }
            group.initial_delay_remaining_ms = None;
        }
        complete_join(&mut cx, group);
    }

    fn on_sync_timer(&mut self, group_id: &str, epoch: u64) {
        if self.closed {
            return;
        }
        let (group, mut cx) = self.split(group_id);
        let Some(group) = group else {
            return;
        };
        if group.sync_timer_epoch != epoch {
            return;
        }
        let syncing = group.is(GroupState::CompletingRebalance) || group.is(GroupState::Stable);
        if !syncing || group.pending_sync.is_empty() {
            return;
        }
        let missing: Vec<String> = group.pending_sync.drain().collect();
        tracing::info!(
            target: "weir::group",
            group = %group.id,
            members = ?missing,
            "members sent no SyncGroup within the rebalance timeout; removing them"
        );
        for member_id in &missing {
            if let Some(mut member) = group.remove_member(member_id) {
                member.complete_join(JoinOutcome::error("", ResponseError::UnknownMemberId));
                member.complete_sync(SyncOutcome::error(ResponseError::UnknownMemberId));
            }
        }
        prepare_rebalance(&mut cx, group, "members sent no SyncGroup in time");
    }
}

fn session_deadline(member: &Member) -> Instant {
    Instant::now() + Duration::from_millis(member.session_timeout_ms.max(0) as u64)
}

/// Checks that `member_id` (and `instance_id`, for static members) belongs
/// to the group and, when given, that the generation is current.
pub(super) fn validate_current_member(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
    generation_id: Option<i32>,
) -> Option<ResponseError> {
    if let Some(instance_id) = instance_id {
        match group.static_members.get(instance_id) {
            None => return Some(ResponseError::UnknownMemberId),
            Some(current) if current != member_id => return Some(ResponseError::FencedInstanceId),
            Some(_) => {}
        }
    } else if !group.members.contains_key(member_id) {
        return Some(ResponseError::UnknownMemberId);
    }
    match generation_id {
        Some(generation_id) if generation_id != group.generation_id => {
            Some(ResponseError::IllegalGeneration)
        }
        _ => None,
    }
}

/// Checks whether a member that is not yet in the group may join it.
fn accepts_new_member(cx: &Cx, group: &Group) -> bool {
    let max = cx.config.group_max_size;
    match group.state {
        GroupState::Empty | GroupState::Dead => group.pending_members.len() < max,
        GroupState::PreparingRebalance => {
            group.awaiting_join_count() + group.pending_members.len() < max
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            group.members.len() + group.pending_members.len() < max
        }
    }
}

fn join_new_member(cx: &mut Cx, group: &mut Group, params: JoinParams) -> Pending<JoinOutcome> {
    if group.is(GroupState::Dead) {
        return Pending::Ready(JoinOutcome::error(
            "",
            ResponseError::CoordinatorNotAvailable,
        ));
    }
    if !group.supports_protocols(&params.protocol_type, &params.protocols) {
        return Pending::Ready(JoinOutcome::error(
            "",
            ResponseError::InconsistentGroupProtocol,
        ));
    }

    if let Some(instance_id) = params.group_instance_id.clone() {
        let new_member_id = generate_member_id(&instance_id);
        if let Some(old_member_id) = group.static_members.get(&instance_id).cloned() {
            return rejoin_static_member(cx, group, old_member_id, new_member_id, params);
        }
        if !accepts_new_member(cx, group) {
            return Pending::Ready(JoinOutcome::error("", ResponseError::GroupMaxSizeReached));
        }
        return Pending::Waiting(add_member_and_rebalance(
            cx,
            group,
            new_member_id,
            params,
            true,
        ));
    }

    if !accepts_new_member(cx, group) {
        return Pending::Ready(JoinOutcome::error("", ResponseError::GroupMaxSizeReached));
    }
    let new_member_id = generate_member_id(&params.client.client_id);
    if params.require_known_member_id {
        let deadline = Instant::now() + Duration::from_millis(params.session_timeout_ms as u64);
        group
            .pending_members
            .insert(new_member_id.clone(), deadline);
        spawn_member_timer(cx.weak, &group.id, &new_member_id);
        return Pending::Ready(JoinOutcome::error(
            new_member_id,
            ResponseError::MemberIdRequired,
        ));
    }
    Pending::Waiting(add_member_and_rebalance(
        cx,
        group,
        new_member_id,
        params,
        true,
    ))
}

fn join_current_member(cx: &mut Cx, group: &mut Group, params: JoinParams) -> Pending<JoinOutcome> {
    let member_id = params.member_id.clone();
    let reject = |error| Pending::Ready(JoinOutcome::error(member_id.clone(), error));
    if group.is(GroupState::Dead) {
        return reject(ResponseError::CoordinatorNotAvailable);
    }
    if !group.supports_protocols(&params.protocol_type, &params.protocols) {
        return reject(ResponseError::InconsistentGroupProtocol);
    }

    if group.pending_members.contains_key(&member_id) {
        if let Some(instance_id) = &params.group_instance_id {
            if group.static_members.contains_key(instance_id) {
                return reject(ResponseError::FencedInstanceId);
            }
        }
        group.pending_members.remove(&member_id);
        // The member's timer was started with the pending entry and keeps running.
        return Pending::Waiting(add_member_and_rebalance(
            cx, group, member_id, params, false,
        ));
    }

    let instance_id = params.group_instance_id.as_deref();
    if let Some(error) = validate_current_member(group, &member_id, instance_id, None) {
        return reject(error);
    }
    let member = &group.members[&member_id];
    let same_protocols = member.matches(&params.protocols);
    match group.state {
        GroupState::PreparingRebalance => {
            Pending::Waiting(update_member_and_rebalance(cx, group, params))
        }
        GroupState::CompletingRebalance if same_protocols => {
            // The member lost the join response; send the current generation again.
            Pending::Ready(current_generation(group, &member_id, None))
        }
        GroupState::Stable if same_protocols && !group.is_leader(&member_id) => {
            Pending::Ready(current_generation(group, &member_id, None))
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            Pending::Waiting(update_member_and_rebalance(cx, group, params))
        }
        GroupState::Empty | GroupState::Dead => reject(ResponseError::UnknownMemberId),
    }
}

fn add_member_and_rebalance(
    cx: &mut Cx,
    group: &mut Group,
    member_id: String,
    params: JoinParams,
    start_timer: bool,
) -> oneshot::Receiver<JoinOutcome> {
    let (sender, receiver) = oneshot::channel();
    let member = Member {
        member_id: member_id.clone(),
        group_instance_id: params.group_instance_id,
        client_id: params.client.client_id,
        client_host: params.client.client_host,
        rebalance_timeout_ms: params.rebalance_timeout_ms,
        session_timeout_ms: params.session_timeout_ms,
        protocol_type: params.protocol_type,
        protocols: params.protocols,
        assignment: Bytes::new(),
        awaiting_join: Some(sender),
        awaiting_sync: None,
        is_new: true,
        heartbeat_deadline: Instant::now() + NEW_MEMBER_JOIN_TIMEOUT,
    };
    if group.is(GroupState::PreparingRebalance) && group.generation_id == 0 {
        group.new_member_added = true;
    }
    group.add_member(member);
    if start_timer {
        spawn_member_timer(cx.weak, &group.id, &member_id);
    }
    let reason = format!("{} ({member_id})", params.reason);
    maybe_prepare_rebalance(cx, group, &reason);
    receiver
}

fn update_member_and_rebalance(
    cx: &mut Cx,
    group: &mut Group,
    params: JoinParams,
) -> oneshot::Receiver<JoinOutcome> {
    let (sender, receiver) = oneshot::channel();
    let member = group
        .members
        .get_mut(&params.member_id)
        .expect("caller validated the member");
    member.protocols = params.protocols;
    member.rebalance_timeout_ms = params.rebalance_timeout_ms;
    member.session_timeout_ms = params.session_timeout_ms;
    // One outstanding JoinGroup per member: an older one gets REBALANCE_IN_PROGRESS now.
    member.complete_join(JoinOutcome::error(
        params.member_id.clone(),
        ResponseError::RebalanceInProgress,
    ));
    member.awaiting_join = Some(sender);
    let reason = format!("{} ({})", params.reason, params.member_id);
    maybe_prepare_rebalance(cx, group, &reason);
    receiver
}

/// Gives a static member that rejoined without its member id a new id in
/// place of the old one. The member keeps its assignment.
fn rejoin_static_member(
    cx: &mut Cx,
    group: &mut Group,
    old_member_id: String,
    new_member_id: String,
    params: JoinParams,
) -> Pending<JoinOutcome> {
    let current_leader = group.leader_id.clone();
    let Some(mut member) = group.members.shift_remove(&old_member_id) else {
        return Pending::Ready(JoinOutcome::error("", ResponseError::UnknownMemberId));
    };
    // Requests still waiting under the old id come from a fenced duplicate.
    member.complete_join(JoinOutcome::error(
        old_member_id.clone(),
        ResponseError::FencedInstanceId,
    ));
    member.complete_sync(SyncOutcome::error(ResponseError::FencedInstanceId));
    tracing::info!(
        target: "weir::group",
        group = %group.id,
        instance = params.group_instance_id.as_deref().unwrap_or_default(),
        old_member = %old_member_id,
        new_member = %new_member_id,
        "static member rejoined with a new member id"
    );

    let (sender, receiver) = oneshot::channel();
    member.member_id = new_member_id.clone();
    member.protocols = params.protocols;
    member.rebalance_timeout_ms = params.rebalance_timeout_ms;
    member.session_timeout_ms = params.session_timeout_ms;
    member.client_id = params.client.client_id;
    member.client_host = params.client.client_host;
    member.awaiting_join = Some(sender);
    member.heartbeat_deadline = session_deadline(&member);
    if group.is_leader(&old_member_id) {
        group.leader_id = Some(new_member_id.clone());
    }
    if group.pending_sync.remove(&old_member_id) {
        group.pending_sync.insert(new_member_id.clone());
    }
    if let Some(instance_id) = &member.group_instance_id {
        group
            .static_members
            .insert(instance_id.clone(), new_member_id.clone());
    }
    group.members.insert(new_member_id.clone(), member);
    spawn_member_timer(cx.weak, &group.id, &new_member_id);

    match group.state {
        GroupState::Stable if group.select_protocol() == group.protocol_name => {
            // Nothing changes for the other members. The old leader id is
            // returned so that a rejoining leader does not compute a new
            // assignment that a Stable group would never distribute.
            let outcome = current_generation(group, &new_member_id, current_leader.as_deref());
            let member = group
                .members
                .get_mut(&new_member_id)
                .expect("just inserted");
            member.awaiting_join = None;
            Pending::Ready(JoinOutcome {
                members: Vec::new(),
                ..outcome
            })
        }
        GroupState::Stable => {
            maybe_prepare_rebalance(cx, group, "static member rejoined with other protocols");
            Pending::Waiting(receiver)
        }
        GroupState::CompletingRebalance => {
            // The leader may be assigning to the old member id; start over.
            prepare_rebalance(
                cx,
                group,
                "static member rejoined during CompletingRebalance",
            );
            Pending::Waiting(receiver)
        }
        GroupState::PreparingRebalance | GroupState::Empty | GroupState::Dead => {
            Pending::Waiting(receiver)
        }
    }
}

fn leave_one(
    cx: &mut Cx,
    group: &mut Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Option<ResponseError> {
    if member_id.is_empty() {
        // Administrative removal of a static member by instance id.
        let Some(current) = instance_id
            .and_then(|id| group.static_members.get(id))
            .cloned()
        else {
            return Some(ResponseError::UnknownMemberId);
        };
        remove_member_and_update_group(cx, group, &current, "removed by instance id");
        return None;
    }
    if group.pending_members.remove(member_id).is_some() {
        if group.is(GroupState::PreparingRebalance) {
            try_complete_join(cx, group);
        }
        return None;
    }
    if let Some(error) = validate_current_member(group, member_id, instance_id, None) {
        return Some(error);
    }
    tracing::info!(target: "weir::group", group = %group.id, member = member_id, "member left the group");
    remove_member_and_update_group(cx, group, member_id, "member left");
    None
}

fn remove_member_and_update_group(cx: &mut Cx, group: &mut Group, member_id: &str, reason: &str) {
    if let Some(mut member) = group.remove_member(member_id) {
        // A new member may be removed while its JoinGroup waits; it will retry.
        member.complete_join(JoinOutcome::error("", ResponseError::UnknownMemberId));
        member.complete_sync(SyncOutcome::error(ResponseError::UnknownMemberId));
    }
    match group.state {
        GroupState::Dead | GroupState::Empty => {}
        GroupState::Stable | GroupState::CompletingRebalance => {
            let reason = format!("{reason} ({member_id})");
            maybe_prepare_rebalance(cx, group, &reason);
        }
        GroupState::PreparingRebalance => try_complete_join(cx, group),
    }
}

fn maybe_prepare_rebalance(cx: &mut Cx, group: &mut Group, reason: &str) {
    if matches!(
        group.state,
        GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance
    ) {
        prepare_rebalance(cx, group, reason);
    }
}

fn prepare_rebalance(cx: &mut Cx, group: &mut Group, reason: &str) {
    if group.is(GroupState::CompletingRebalance) {
        // Assignments of the abandoned generation are void.
        for member in group.members.values_mut() {
            member.assignment = Bytes::new();
            member.complete_sync(SyncOutcome::error(ResponseError::RebalanceInProgress));
        }
    }
    let rebalance_timeout_ms = group.rebalance_timeout_ms().max(0) as i64;
    let initial_delay_ms = cx.config.group_initial_rebalance_delay_ms.max(0) as i64;
    let from_empty = group.is(GroupState::Empty);

    transition(cx, group, GroupState::PreparingRebalance);
    group.pending_sync.clear();
    group.sync_timer_epoch = 0;
    tracing::info!(
        target: "weir::group",
        group = %group.id,
        generation = group.generation_id,
        reason,
        "preparing to rebalance"
    );

    if from_empty && initial_delay_ms > 0 {
        let delay_ms = initial_delay_ms.min(rebalance_timeout_ms);
        group.initial_delay_remaining_ms = Some((rebalance_timeout_ms - delay_ms).max(0));
        schedule_join_timer(cx, group, delay_ms);
    } else {
        group.initial_delay_remaining_ms = None;
        schedule_join_timer(cx, group, rebalance_timeout_ms);
        try_complete_join(cx, group);
    }
}

fn try_complete_join(cx: &mut Cx, group: &mut Group) {
    if group.is(GroupState::PreparingRebalance)
        && group.initial_delay_remaining_ms.is_none()
        && group.all_members_joined()
    {
        complete_join(cx, group);
    }
}

fn complete_join(cx: &mut Cx, group: &mut Group) {
    // Invalidate the join timer of this rebalance.
    group.join_timer_epoch = cx.next_epoch();

    let not_rejoined: Vec<String> = group
        .members
        .values()
        .filter(|member| member.awaiting_join.is_none() && member.group_instance_id.is_none())
        .map(|member| member.member_id.clone())
        .collect();
    for member_id in &not_rejoined {
        tracing::info!(
            target: "weir::group",
            group = %group.id,
            member = %member_id,
            "member did not rejoin within the rebalance timeout; removing it"
        );
        group.remove_member(member_id);
    }

    if !elect_joined_leader(group) && !group.members.is_empty() {
        // Only static members that did not rejoin are left: wait another
        // rebalance timeout, by which their sessions may have expired.
        let timeout_ms = group.rebalance_timeout_ms().max(0) as i64;
        schedule_join_timer(cx, group, timeout_ms);
        return;
    }

    group.generation_id += 1;
    group.pending_sync.clear();
    if group.members.is_empty() {
        group.protocol_name = None;
        transition(cx, group, GroupState::Empty);
        tracing::info!(
            target: "weir::group",
            group = %group.id,
            generation = group.generation_id,
            "group is empty"
        );
        return;
    }

    group.protocol_name = group.select_protocol();
    transition(cx, group, GroupState::CompletingRebalance);
    tracing::info!(
        target: "weir::group",
        group = %group.id,
        generation = group.generation_id,
        protocol = group.protocol_name.as_deref().unwrap_or_default(),
        members = group.members.len(),
        "rebalance completed the join phase"
    );

    let leader_members = group.joined_members();
    let leader_id = group.leader_id.clone().unwrap_or_default();
    let member_ids: Vec<String> = group.members.keys().cloned().collect();
    for member_id in member_ids {
        let outcome = JoinOutcome {
            error: None,
            member_id: member_id.clone(),
            generation_id: group.generation_id,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            leader_id: leader_id.clone(),
            members: if member_id == leader_id {
                leader_members.clone()
            } else {
                Vec::new()
            },
        };
        let member = group.members.get_mut(&member_id).expect("listed member");
        member.complete_join(outcome);
        member.heartbeat_deadline = session_deadline(member);
        member.is_new = false;
        group.pending_sync.insert(member_id);
    }
    let timeout_ms = group.rebalance_timeout_ms().max(0) as i64;
    schedule_sync_timer(cx, group, timeout_ms);
}

/// Makes sure the leader is a member that rejoined. Returns false when no member rejoined.
fn elect_joined_leader(group: &mut Group) -> bool {
    let Some(leader_id) = group.leader_id.clone() else {
        return false;
    };
    let leader_joined = group
        .members
        .get(&leader_id)
        .is_some_and(|member| member.awaiting_join.is_some());
    if leader_joined {
        return true;
    }
    let joined = group
        .members
        .values()
        .find(|member| member.awaiting_join.is_some())
        .map(|member| member.member_id.clone());
    match joined {
        Some(member_id) => {
            group.leader_id = Some(member_id);
            true
        }
        None => false,
    }
}

/// Stores the leader's assignments, completes every waiting SyncGroup and makes the group Stable.
fn propagate_assignment(cx: &mut Cx, group: &mut Group, assignments: &HashMap<&str, &Bytes>) {
    let protocol_type = group.protocol_type.clone();
    let protocol_name = group.protocol_name.clone();
    for member in group.members.values_mut() {
        member.assignment = assignments
            .get(member.member_id.as_str())
            .map(|assignment| (*assignment).clone())
            .unwrap_or_default();
        if member.awaiting_sync.is_some() {
            member.heartbeat_deadline = session_deadline(member);
        }
        member.complete_sync(SyncOutcome {
            error: None,
            protocol_type: protocol_type.clone(),
            protocol_name: protocol_name.clone(),
            assignment: member.assignment.clone(),
        });
    }
    transition(cx, group, GroupState::Stable);
    tracing::info!(
        target: "weir::group",
        group = %group.id,
        generation = group.generation_id,
        "group is stable"
    );
}

/// Changes the group's state and journals the moments it becomes Empty or
/// stops being Empty, which the retention of its offsets depends on.
pub(super) fn transition(cx: &mut Cx, group: &mut Group, to: GroupState) {
    let from = group.state;
    debug_assert!(
        valid_transition(from, to),
        "group {} cannot go from {from:?} to {to:?}",
        group.id
    );
    group.state = to;
    let Some(protocol_type) = group.protocol_type.clone() else {
        return;
    };
    let empty_since_ms = if to == GroupState::Empty && from != GroupState::Empty {
        group.empty_since_ms = Some(cx.now_ms);
        cx.now_ms
    } else if from == GroupState::Empty && to != GroupState::Empty && to != GroupState::Dead {
        group.empty_since_ms = None;
        -1
    } else {
        return;
    };
    cx.append_detached(vec![Record::GroupState {
        group: group.id.clone(),
        protocol_type,
        empty_since_ms,
    }]);
}

fn valid_transition(from: GroupState, to: GroupState) -> bool {
    use GroupState::*;
    match to {
        Empty => from == PreparingRebalance,
        PreparingRebalance => matches!(from, Empty | Stable | CompletingRebalance),
        CompletingRebalance => from == PreparingRebalance,
        Stable => from == CompletingRebalance,
        Dead => true,
    }
}

fn spawn_member_timer(weak: &Weak<RefCell<Inner>>, group_id: &str, member_id: &str) {
    let weak = weak.clone();
    let group_id = group_id.to_string();
    let member_id = member_id.to_string();
    spawn_background(async move {
        loop {
            let wait = {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let mut inner = inner.borrow_mut();
                inner.check_member_session(&group_id, &member_id)
            };
            let Some(wait) = wait else {
                return;
            };
            runtime::sleep(wait.max(Duration::from_millis(1))).await;
        }
    });
}

fn schedule_join_timer(cx: &mut Cx, group: &mut Group, delay_ms: i64) {
    let epoch = cx.next_epoch();
    group.join_timer_epoch = epoch;
    let weak = cx.weak.clone();
    let group_id = group.id.clone();
    spawn_background(async move {
        runtime::sleep(Duration::from_millis(delay_ms.max(0) as u64)).await;
        if let Some(inner) = weak.upgrade() {
            inner.borrow_mut().on_join_timer(&group_id, epoch);
        }
    });
}

fn schedule_sync_timer(cx: &mut Cx, group: &mut Group, delay_ms: i64) {
    let epoch = cx.next_epoch();
    group.sync_timer_epoch = epoch;
    let weak = cx.weak.clone();
    let group_id = group.id.clone();
    spawn_background(async move {
        runtime::sleep(Duration::from_millis(delay_ms.max(0) as u64)).await;
        if let Some(inner) = weak.upgrade() {
            inner.borrow_mut().on_sync_timer(&group_id, epoch);
        }
    });
}
