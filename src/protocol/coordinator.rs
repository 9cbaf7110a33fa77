//! FindCoordinator: every consumer group is coordinated by the shard its id
//! hashes to, and the response names that shard's virtual broker.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::shard::Shard;

/// FindCoordinator key type of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;

/// First FindCoordinator version that looks up several keys at once.
const FIRST_BATCHED_VERSION: i16 = 4;

pub fn find_coordinator(shard: &Rc<Shard>, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    if version >= FIRST_BATCHED_VERSION {
        let coordinators =
            request.coordinator_keys.iter().map(|key| coordinator_for(shard, key, request.key_type)).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let found = coordinator_for(shard, &request.key, request.key_type);
    let mut response = FindCoordinatorResponse::default()
        .with_error_code(found.error_code)
        .with_node_id(found.node_id)
        .with_host(found.host)
        .with_port(found.port);
    if version >= 1 {
        response.error_message = found.error_message;
    }
    response
}

fn coordinator_for(shard: &Shard, key: &StrBytes, key_type: i8) -> Coordinator {
    let entry = Coordinator::default().with_key(key.clone());
    if key_type != KEY_TYPE_GROUP {
        // NOTE: transactions are not implemented, so there is no transaction coordinator.
        return entry
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_error_message(Some(StrBytes::from_static_str("transactions are not supported")));
    }
    let broker = shard.coordinator_broker(key);
    entry
        .with_node_id(BrokerId(broker.node_id))
        .with_host(StrBytes::from_string(broker.host.clone()))
        .with_port(i32::from(broker.port))
}
