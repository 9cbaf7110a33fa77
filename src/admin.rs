//! `weir groups`: shows consumer groups the way an operator needs them, with
//! no other tools.
//!
//! A small blocking Kafka client over `std::net::TcpStream` collects, for
//! each group: its state and protocol, its members (member id, client id,
//! host, assigned partitions), and per partition the committed offset, the
//! log end offset and the lag between them. It uses only standard Kafka
//! APIs, in this order:
//!
//! 1. Metadata from the bootstrap broker lists every broker.
//! 2. ListGroups goes to every broker, because each broker lists only the
//!    groups it coordinates (in Weir, each shard is a broker).
//!    With `--group`, FindCoordinator locates that one group instead.
//! 3. DescribeGroups and OffsetFetch go to the group's coordinator.
//! 4. ListOffsets (latest) goes to the leader of each partition, found by
//!    Metadata for the topics involved.
//!
//! Each connection negotiates versions with ApiVersions and uses the highest
//! version both sides support within the ranges this client implements.
//! NOTE: the tests run it against Weir only.
//!
//! This runs once at the binary's edge, so it blocks on sockets and DNS.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use serde::Serialize;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a broker may take to send a response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted; a larger size prefix means a broken stream.
const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Client id sent in every request header.
const CLIENT_ID: &str = "weir-admin";
/// ListOffsets timestamp that requests the log end offset.
const LATEST_TIMESTAMP: i64 = -1;
/// Protocol type of groups whose assignments use the consumer protocol.
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// Highest ConsumerProtocolAssignment version the codec decodes. Newer
/// versions only append fields, so they decode as this one.
const CONSUMER_ASSIGNMENT_VERSION_MAX: i16 = 3;

/// Version ranges this client implements, per API.
const METADATA_VERSIONS: (i16, i16) = (1, 12);
const LIST_GROUPS_VERSIONS: (i16, i16) = (0, 4);
const DESCRIBE_GROUPS_VERSIONS: (i16, i16) = (0, 5);
const FIND_COORDINATOR_VERSIONS: (i16, i16) = (1, 3);
/// OffsetFetch v2 is the first that returns every committed partition for a null topic list.
const OFFSET_FETCH_VERSIONS: (i16, i16) = (2, 7);
const LIST_OFFSETS_VERSIONS: (i16, i16) = (1, 7);

/// Errors of the admin client.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot resolve broker address {address}; check the host name")]
    Resolve { address: String, source: std::io::Error },
    #[error("cannot connect to broker {address}; check the address and that the broker is running")]
    Connect { address: String, source: std::io::Error },
    #[error("{api:?} request to {address} failed")]
    Io {
        api: ApiKey,
        address: String,
        source: std::io::Error,
    },
    #[error("invalid {api:?} exchange with {address}: {message}")]
    Protocol { api: ApiKey, address: String, message: String },
    #[error("broker {address} supports {api:?} v{broker_min}-v{broker_max}, but this client needs v{client_min}-v{client_max}")]
    UnsupportedVersion {
        api: ApiKey,
        address: String,
        broker_min: i16,
        broker_max: i16,
        client_min: i16,
        client_max: i16,
    },
    #[error("{api:?} to {address} returned {error}")]
    Broker { api: ApiKey, address: String, error: String },
    #[error("broker {node_id} is not in the cluster metadata")]
    UnknownBroker { node_id: i32 },
    #[error("group {group} not found")]
    GroupNotFound { group: String },
}

/// A consumer group as `weir groups` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupReport {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor of a Stable consumer group, e.g. `range`; empty otherwise.
    pub protocol: String,
    pub coordinator: i32,
    pub members: Vec<MemberReport>,
    pub partitions: Vec<PartitionReport>,
}

/// One member of a group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberReport {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Assigned partitions as (topic, partition), sorted.
    pub assignment: Vec<(String, i32)>,
}

/// Progress of a group on one partition. `None` means unknown: no committed
/// offset, or a partition whose log end offset could not be read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: Option<i64>,
    pub log_end_offset: Option<i64>,
    pub lag: Option<i64>,
    /// Member id of the member the partition is assigned to.
    pub member_id: Option<String>,
}

/// Collects the report of every group, or of `group` alone.
pub fn describe_groups(bootstrap: &str, group: Option<&str>) -> Result<Vec<GroupReport>, AdminError> {
    let mut cluster = Cluster::connect(bootstrap)?;

    let groups: Vec<(String, i32)> = match group {
        Some(group) => vec![(group.to_string(), cluster.find_coordinator(group)?)],
        None => cluster.list_groups()?,
    };

    let mut reports = Vec::with_capacity(groups.len());
    for (group_id, coordinator) in groups {
        let report = cluster.describe_group(&group_id, coordinator)?;
        if group.is_some() && report.state == "Dead" && report.partitions.is_empty() {
            return Err(AdminError::GroupNotFound { group: group_id });
        }
        reports.push(report);
    }
    cluster.fill_log_end_offsets(&mut reports)?;
    Ok(reports)
}

/// Formats reports as aligned text tables, one block per group.
pub fn render_text(reports: &[GroupReport]) -> String {
    if reports.is_empty() {
        return "no consumer groups\n".to_string();
    }
    let mut out = String::new();
    for (index, report) in reports.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        let protocol = match (report.protocol_type.as_str(), report.protocol.as_str()) {
            ("", _) => "-".to_string(),
            (kind, "") => kind.to_string(),
            (kind, name) => format!("{kind}/{name}"),
        };
        let _ = writeln!(
            out,
            "GROUP {}  STATE {}  PROTOCOL {}  COORDINATOR {}  MEMBERS {}",
            report.group_id,
            report.state,
            protocol,
            report.coordinator,
            report.members.len()
        );

        if !report.members.is_empty() {
            let mut rows = vec![row(&["MEMBER-ID", "INSTANCE-ID", "CLIENT-ID", "HOST", "ASSIGNMENT"])];
            for member in &report.members {
                let assignment: Vec<String> =
                    member.assignment.iter().map(|(topic, partition)| format!("{topic}-{partition}")).collect();
                rows.push(row(&[
                    &member.member_id,
                    member.group_instance_id.as_deref().unwrap_or("-"),
                    &member.client_id,
                    &member.client_host,
                    &or_dash(assignment.join(",")),
                ]));
            }
            out.push_str(&align(&rows));
        }

        if !report.partitions.is_empty() {
            let mut rows = vec![row(&["TOPIC", "PARTITION", "COMMITTED-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER-ID"])];
            for partition in &report.partitions {
                rows.push(row(&[
                    &partition.topic,
                    &partition.partition.to_string(),
                    &optional(partition.committed_offset),
                    &optional(partition.log_end_offset),
                    &optional(partition.lag),
                    partition.member_id.as_deref().unwrap_or("-"),
                ]));
            }
            out.push_str(&align(&rows));
        }
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|cell| cell.to_string()).collect()
}

fn optional(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

/// Pads every column but the last to its widest cell, two spaces apart.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|column| rows.iter().filter_map(|row| row.get(column)).map(String::len).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[column]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Connections to the brokers of one cluster, opened on first use.
struct Cluster {
    /// Address of each broker by node id, from Metadata.
    brokers: BTreeMap<i32, String>,
    connections: HashMap<i32, Connection>,
    bootstrap: Connection,
}

impl Cluster {
    fn connect(bootstrap: &str) -> Result<Cluster, AdminError> {
        let mut connection = Connection::open(bootstrap)?;
        let request = MetadataRequest::default().with_topics(Some(Vec::new()));
        let version = connection.version(ApiKey::Metadata, METADATA_VERSIONS)?;
        let metadata = connection.send(&request, version)?;
        let brokers = metadata
            .brokers
            .iter()
            .map(|broker| (broker.node_id.0, format!("{}:{}", broker.host.as_str(), broker.port)))
            .collect();
        Ok(Cluster { brokers, connections: HashMap::new(), bootstrap: connection })
    }

    fn broker(&mut self, node_id: i32) -> Result<&mut Connection, AdminError> {
        if !self.connections.contains_key(&node_id) {
            let address = self.brokers.get(&node_id).ok_or(AdminError::UnknownBroker { node_id })?;
            let connection = Connection::open(address)?;
            self.connections.insert(node_id, connection);
        }
        Ok(self.connections.get_mut(&node_id).expect("inserted above"))
    }

    /// Lists the groups of every broker, as (group id, coordinator node id), sorted by group id.
    fn list_groups(&mut self) -> Result<Vec<(String, i32)>, AdminError> {
        let mut groups = Vec::new();
        let node_ids: Vec<i32> = self.brokers.keys().copied().collect();
        for node_id in node_ids {
            let connection = self.broker(node_id)?;
            let version = connection.version(ApiKey::ListGroups, LIST_GROUPS_VERSIONS)?;
            let response = connection.send(&ListGroupsRequest::default(), version)?;
            connection.check(ApiKey::ListGroups, response.error_code)?;
            groups.extend(response.groups.iter().map(|group| (group.group_id.to_string(), node_id)));
        }
        groups.sort();
        Ok(groups)
    }

    fn find_coordinator(&mut self, group: &str) -> Result<i32, AdminError> {
        let connection = &mut self.bootstrap;
        let version = connection.version(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSIONS)?;
        let request = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string())).with_key_type(0);
        let response = connection.send(&request, version)?;
        connection.check(ApiKey::FindCoordinator, response.error_code)?;
        Ok(response.node_id.0)
    }

    /// Describes one group at its coordinator and fetches its committed offsets.
    fn describe_group(&mut self, group_id: &str, coordinator: i32) -> Result<GroupReport, AdminError> {
        let connection = self.broker(coordinator)?;
        let version = connection.version(ApiKey::DescribeGroups, DESCRIBE_GROUPS_VERSIONS)?;
        let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from_string(group_id.to_string()))]);
        let response = connection.send(&request, version)?;
        let described = response.groups.into_iter().next().ok_or_else(|| connection.protocol_error(ApiKey::DescribeGroups, "no group in the response"))?;
        if described.error_code == ResponseError::GroupIdNotFound.code() {
            return Err(AdminError::GroupNotFound { group: group_id.to_string() });
        }
        connection.check(ApiKey::DescribeGroups, described.error_code)?;

        let protocol_type = described.protocol_type.to_string();
        let members: Vec<MemberReport> = described
            .members
            .iter()
            .map(|member| MemberReport {
                member_id: member.member_id.to_string(),
                group_instance_id: member.group_instance_id.as_ref().map(ToString::to_string),
                client_id: member.client_id.to_string(),
                client_host: member.client_host.to_string(),
                assignment: if protocol_type == CONSUMER_PROTOCOL_TYPE {
                    decode_assignment(&member.member_assignment)
                } else {
                    Vec::new()
                },
            })
            .collect();

        let committed = self.fetch_committed(group_id, coordinator)?;
        Ok(GroupReport {
            group_id: group_id.to_string(),
            state: described.group_state.to_string(),
            protocol_type,
            protocol: described.protocol_data.to_string(),
            coordinator,
            partitions: partition_rows(&members, &committed),
            members,
        })
    }

    /// Returns every committed offset of a group, keyed by (topic, partition).
    fn fetch_committed(&mut self, group_id: &str, coordinator: i32) -> Result<BTreeMap<(String, i32), i64>, AdminError> {
        let connection = self.broker(coordinator)?;
        let version = connection.version(ApiKey::OffsetFetch, OFFSET_FETCH_VERSIONS)?;
        let request = OffsetFetchRequest::default().with_group_id(GroupId(StrBytes::from_string(group_id.to_string()))).with_topics(None);
        let response = connection.send(&request, version)?;
        connection.check(ApiKey::OffsetFetch, response.error_code)?;
        let mut committed = BTreeMap::new();
        for topic in &response.topics {
            for partition in &topic.partitions {
                connection.check(ApiKey::OffsetFetch, partition.error_code)?;
                if partition.committed_offset >= 0 {
                    committed.insert((topic.name.to_string(), partition.partition_index), partition.committed_offset);
                }
            }
        }
        Ok(committed)
    }

    /// Reads the log end offset of every partition in the reports and fills in the lag.
    fn fill_log_end_offsets(&mut self, reports: &mut [GroupReport]) -> Result<(), AdminError> {
        let topics: BTreeSet<String> =
            reports.iter().flat_map(|report| report.partitions.iter().map(|partition| partition.topic.clone())).collect();
        if topics.is_empty() {
            return Ok(());
        }
        let leaders = self.partition_leaders(&topics)?;

        let mut by_leader: BTreeMap<i32, BTreeMap<String, BTreeSet<i32>>> = BTreeMap::new();
        for partition in reports.iter().flat_map(|report| report.partitions.iter()) {
            if let Some(leader) = leaders.get(&(partition.topic.clone(), partition.partition)) {
                by_leader.entry(*leader).or_default().entry(partition.topic.clone()).or_default().insert(partition.partition);
            }
        }
        let mut ends = HashMap::new();
        for (leader, topics) in by_leader {
            ends.extend(self.log_end_offsets(leader, &topics)?);
        }

        for partition in reports.iter_mut().flat_map(|report| report.partitions.iter_mut()) {
            partition.log_end_offset = ends.get(&(partition.topic.clone(), partition.partition)).copied();
            partition.lag = match (partition.log_end_offset, partition.committed_offset) {
                (Some(end), Some(committed)) => Some((end - committed).max(0)),
                _ => None,
            };
        }
        Ok(())
    }

    /// Returns the leader of every partition of `topics` that has one.
    fn partition_leaders(&mut self, topics: &BTreeSet<String>) -> Result<HashMap<(String, i32), i32>, AdminError> {
        let connection = &mut self.bootstrap;
        let version = connection.version(ApiKey::Metadata, METADATA_VERSIONS)?;
        let requested = topics.iter().map(|topic| MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(topic.clone()))))).collect();
        let request = MetadataRequest::default().with_topics(Some(requested)).with_allow_auto_topic_creation(false);
        let response = connection.send(&request, version)?;
        let mut leaders = HashMap::new();
        for topic in &response.topics {
            let Some(name) = &topic.name else { continue };
            for partition in &topic.partitions {
                if partition.error_code == 0 && partition.leader_id.0 >= 0 {
                    leaders.insert((name.to_string(), partition.partition_index), partition.leader_id.0);
                }
            }
        }
        Ok(leaders)
    }

    fn log_end_offsets(&mut self, leader: i32, topics: &BTreeMap<String, BTreeSet<i32>>) -> Result<HashMap<(String, i32), i64>, AdminError> {
        let connection = self.broker(leader)?;
        let version = connection.version(ApiKey::ListOffsets, LIST_OFFSETS_VERSIONS)?;
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(
            topics
                .iter()
                .map(|(topic, partitions)| {
                    ListOffsetsTopic::default().with_name(TopicName(StrBytes::from_string(topic.clone()))).with_partitions(
                        partitions
                            .iter()
                            .map(|partition| ListOffsetsPartition::default().with_partition_index(*partition).with_timestamp(LATEST_TIMESTAMP))
                            .collect(),
                    )
                })
                .collect(),
        );
        let response = connection.send(&request, version)?;
        let mut ends = HashMap::new();
        for topic in &response.topics {
            for partition in &topic.partitions {
                if partition.error_code == 0 && partition.offset >= 0 {
                    ends.insert((topic.name.to_string(), partition.partition_index), partition.offset);
                }
            }
        }
        Ok(ends)
    }
}

/// Builds one row per partition that is committed or assigned, sorted by topic and partition.
fn partition_rows(members: &[MemberReport], committed: &BTreeMap<(String, i32), i64>) -> Vec<PartitionReport> {
    let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
    for member in members {
        for assigned in &member.assignment {
            owners.insert(assigned.clone(), member.member_id.clone());
        }
    }
    let keys: BTreeSet<&(String, i32)> = committed.keys().chain(owners.keys()).collect();
    keys.into_iter()
        .map(|key| PartitionReport {
            topic: key.0.clone(),
            partition: key.1,
            committed_offset: committed.get(key).copied(),
            log_end_offset: None,
            lag: None,
            member_id: owners.get(key).cloned(),
        })
        .collect()
}

/// Decodes a consumer protocol assignment into sorted (topic, partition)
/// pairs. Bytes that do not decode give no partitions.
pub fn decode_assignment(bytes: &Bytes) -> Vec<(String, i32)> {
    let mut buffer = bytes.clone();
    if buffer.remaining() < 2 {
        return Vec::new();
    }
    let version = buffer.get_i16().clamp(0, CONSUMER_ASSIGNMENT_VERSION_MAX);
    let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut buffer, version) else {
        return Vec::new();
    };
    let mut partitions: Vec<(String, i32)> = assignment
        .assigned_partitions
        .iter()
        .flat_map(|topic| topic.partitions.iter().map(move |partition| (topic.topic.to_string(), *partition)))
        .collect();
    partitions.sort();
    partitions
}

/// A blocking connection to one broker.
struct Connection {
    address: String,
    stream: TcpStream,
    next_correlation_id: i32,
    /// The broker's supported version range per API key, from ApiVersions.
    versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    fn open(address: &str) -> Result<Connection, AdminError> {
        let resolved: Vec<_> = address
            .to_socket_addrs()
            .map_err(|source| AdminError::Resolve { address: address.to_string(), source })?
            .collect();
        let mut last_error = std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolved to no address");
        for socket_address in resolved {
            match TcpStream::connect_timeout(&socket_address, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let io = |source| AdminError::Connect { address: address.to_string(), source };
                    stream.set_read_timeout(Some(RESPONSE_TIMEOUT)).map_err(io)?;
                    stream.set_write_timeout(Some(RESPONSE_TIMEOUT)).map_err(io)?;
                    stream.set_nodelay(true).map_err(io)?;
                    let mut connection =
                        Connection { address: address.to_string(), stream, next_correlation_id: 1, versions: HashMap::new() };
                    connection.negotiate()?;
                    return Ok(connection);
                }
                Err(error) => last_error = error,
            }
        }
        Err(AdminError::Connect { address: address.to_string(), source: last_error })
    }

    /// Requests the broker's version ranges with ApiVersions v0, which every broker accepts.
    fn negotiate(&mut self) -> Result<(), AdminError> {
        let response = self.send(&ApiVersionsRequest::default(), 0)?;
        self.check(ApiKey::ApiVersions, response.error_code)?;
        self.versions = response.api_keys.iter().map(|api| (api.api_key, (api.min_version, api.max_version))).collect();
        Ok(())
    }

    /// Returns the highest version of `api` within `client` that the broker supports.
    fn version(&self, api: ApiKey, client: (i16, i16)) -> Result<i16, AdminError> {
        let (client_min, client_max) = client;
        let (broker_min, broker_max) = self.versions.get(&(api as i16)).copied().unwrap_or((0, -1));
        let version = client_max.min(broker_max);
        if version < client_min.max(broker_min) {
            return Err(AdminError::UnsupportedVersion {
                api,
                address: self.address.clone(),
                broker_min,
                broker_max,
                client_min,
                client_max,
            });
        }
        Ok(version)
    }

    fn check(&self, api: ApiKey, error_code: i16) -> Result<(), AdminError> {
        if error_code == 0 {
            return Ok(());
        }
        let error = ResponseError::try_from_code(error_code)
            .map_or_else(|| format!("error code {error_code}"), |error| format!("{error:?} ({error_code})"));
        Err(AdminError::Broker { api, address: self.address.clone(), error })
    }

    fn protocol_error(&self, api: ApiKey, message: impl Into<String>) -> AdminError {
        AdminError::Protocol { api, address: self.address.clone(), message: message.into() }
    }

    /// Sends one request and waits for its response.
    fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response, AdminError> {
        let api = ApiKey::try_from(R::KEY).map_err(|_| self.protocol_error(ApiKey::ApiVersions, format!("unknown api key {}", R::KEY)))?;
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;

        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, api.request_header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|error| self.protocol_error(api, format!("cannot encode v{version} request: {error}")))?;
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let io = |address: &str, source| AdminError::Io { api, address: address.to_string(), source };
        self.stream.write_all(&frame).map_err(|source| io(&self.address, source))?;

        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(|source| io(&self.address, source))?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > RESPONSE_BYTES_MAX {
            return Err(self.protocol_error(api, format!("response size {size} is out of range")));
        }
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).map_err(|source| io(&self.address, source))?;

        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|error| self.protocol_error(api, format!("cannot decode the response header: {error}")))?;
        if header.correlation_id != correlation_id {
            return Err(self.protocol_error(
                api,
                format!("response has correlation id {}, expected {correlation_id}", header.correlation_id),
            ));
        }
        R::Response::decode(&mut body, version)
            .map_err(|error| self.protocol_error(api, format!("cannot decode the v{version} response: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    fn encoded_assignment(version: i16, topics: &[(&str, &[i32])]) -> Bytes {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
            topics
                .iter()
                .map(|(topic, partitions)| {
                    TopicPartition::default().with_topic(TopicName(StrBytes::from_string(topic.to_string()))).with_partitions(partitions.to_vec())
                })
                .collect(),
        );
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&version.to_be_bytes());
        assignment.encode(&mut buffer, version.min(CONSUMER_ASSIGNMENT_VERSION_MAX)).expect("encode assignment");
        buffer.freeze()
    }

    #[test]
    fn assignment_decodes_sorted_partitions() {
        let bytes = encoded_assignment(0, &[("orders", &[3, 1]), ("audit", &[0])]);
        let expected = vec![("audit".to_string(), 0), ("orders".to_string(), 1), ("orders".to_string(), 3)];
        assert_eq!(decode_assignment(&bytes), expected);
    }

    #[test]
    fn assignment_of_newer_version_decodes() {
        let bytes = encoded_assignment(7, &[("orders", &[2])]);
        assert_eq!(decode_assignment(&bytes), vec![("orders".to_string(), 2)]);
    }

    #[test]
    fn malformed_assignment_gives_no_partitions() {
        assert_eq!(decode_assignment(&Bytes::new()), Vec::new());
        assert_eq!(decode_assignment(&Bytes::from_static(&[0, 0, 0, 0, 0, 9])), Vec::new());
    }

    #[test]
    fn partition_rows_join_committed_and_assigned() {
        let member = MemberReport {
            member_id: "m-1".to_string(),
            group_instance_id: None,
            client_id: "app".to_string(),
            client_host: "/127.0.0.1".to_string(),
            assignment: vec![("orders".to_string(), 0), ("orders".to_string(), 1)],
        };
        let committed = BTreeMap::from([(("orders".to_string(), 1), 40), (("old".to_string(), 0), 7)]);
        let rows = partition_rows(&[member], &committed);
        let summary: Vec<(&str, i32, Option<i64>, Option<&str>)> =
            rows.iter().map(|row| (row.topic.as_str(), row.partition, row.committed_offset, row.member_id.as_deref())).collect();
        assert_eq!(summary, vec![("old", 0, Some(7), None), ("orders", 0, None, Some("m-1")), ("orders", 1, Some(40), Some("m-1"))]);
    }

    #[test]
    fn text_report_aligns_columns() {
        let report = GroupReport {
            group_id: "billing".to_string(),
            state: "Stable".to_string(),
            protocol_type: "consumer".to_string(),
            protocol: "range".to_string(),
            coordinator: 1,
            members: Vec::new(),
            partitions: vec![
                PartitionReport {
                    topic: "orders".to_string(),
                    partition: 0,
                    committed_offset: Some(5),
                    log_end_offset: Some(12),
                    lag: Some(7),
                    member_id: None,
                },
                PartitionReport {
                    topic: "orders".to_string(),
                    partition: 10,
                    committed_offset: None,
                    log_end_offset: Some(3),
                    lag: None,
                    member_id: Some("m-1".to_string()),
                },
            ],
        };
        let text = render_text(&[report]);
        let expected = "\
GROUP billing  STATE Stable  PROTOCOL consumer/range  COORDINATOR 1  MEMBERS 0
TOPIC   PARTITION  COMMITTED-OFFSET  LOG-END-OFFSET  LAG  MEMBER-ID
orders  0          5                 12              7    -
orders  10         -                 3               -    m-1
";
        assert_eq!(text, expected);
        assert_eq!(render_text(&[]), "no consumer groups\n");
    }
}
