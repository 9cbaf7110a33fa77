//! The cluster view: brokers, topic metadata, one connection per broker,
//! and the admin requests.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::connection::{Connection, ConnectionConfig};
use super::error::ClientError;

/// Settings shared by the connections of one client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` addresses tried in order until one answers Metadata.
    pub bootstrap: Vec<String>,
    pub connection: ConnectionConfig,
    /// Whether Metadata requests may create missing topics
    /// (`allow.auto.create.topics`).
    pub allow_auto_topic_creation: bool,
    /// Attempts to open a connection before a call fails.
    pub connect_attempts: u32,
    pub retry_backoff: Duration,
}

impl ClientConfig {
    pub fn new(bootstrap: &str) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.split(',').map(|addr| addr.trim().to_string()).collect(),
            connection: ConnectionConfig::default(),
            allow_auto_topic_creation: false,
            connect_attempts: 3,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// One partition as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    /// Node id of the leader, -1 when there is none.
    pub leader: i32,
    pub leader_epoch: i32,
    pub error_code: i16,
}

/// One topic as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub error_code: i16,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionMetadata>,
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// Which offset ListOffsets looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (high watermark): the offset the next record gets.
    Latest,
    /// The first offset whose timestamp is at or after this many ms since the epoch.
    Timestamp(i64),
}

impl OffsetSpec {
    fn to_wire(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// A handle to a cluster; clones share the metadata and connections.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// node id → host:port
    brokers: RefCell<BTreeMap<i32, String>>,
    controller_id: RefCell<i32>,
    topics: RefCell<HashMap<String, TopicMetadata>>,
    connections: RefCell<HashMap<i32, Rc<Connection>>>,
    bootstrap_connection: RefCell<Option<Rc<Connection>>>,
    /// Bytes sent and received on connections closed so far.
    retired_byte_counts: RefCell<(u64, u64)>,
}

impl Client {
    /// Connects to the first bootstrap address that answers and loads the
    /// metadata of every topic.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::Config("no bootstrap address given".into()));
        }
        let client = Client {
            inner: Rc::new(Inner {
                config,
                brokers: RefCell::new(BTreeMap::new()),
                controller_id: RefCell::new(-1),
                topics: RefCell::new(HashMap::new()),
                connections: RefCell::new(HashMap::new()),
                bootstrap_connection: RefCell::new(None),
                retired_byte_counts: RefCell::new((0, 0)),
            }),
        };
        client.refresh_metadata(None).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Brokers from the last Metadata response, as (node id, host:port).
    pub fn brokers(&self) -> Vec<(i32, String)> {
        self.inner.brokers.borrow().iter().map(|(id, addr)| (*id, addr.clone())).collect()
    }

    /// Cached metadata of `topic`, if the last refresh returned it.
    pub fn topic(&self, topic: &str) -> Option<TopicMetadata> {
        self.inner.topics.borrow().get(topic).cloned()
    }

    /// Number of partitions of `topic` in the cached metadata.
    pub fn partition_count(&self, topic: &str) -> Option<usize> {
        self.inner.topics.borrow().get(topic).map(|topic| topic.partitions.len())
    }

    /// Leader node id of a partition from the cached metadata.
    pub fn leader(&self, topic: &str, partition: i32) -> Result<i32, ClientError> {
        let topics = self.inner.topics.borrow();
        let no_leader = || ClientError::NoLeader { topic: topic.to_string(), partition };
        let metadata = topics.get(topic).ok_or_else(no_leader)?;
        let partition_metadata =
            usize::try_from(partition).ok().and_then(|index| metadata.partitions.get(index)).ok_or_else(no_leader)?;
        if partition_metadata.leader < 0 {
            return Err(no_leader());
        }
        Ok(partition_metadata.leader)
    }

    /// Total bytes written to and read from every connection of this client.
    pub fn byte_counts(&self) -> (u64, u64) {
        let (mut sent, mut received) = *self.inner.retired_byte_counts.borrow();
        let connections = self.inner.connections.borrow();
        let bootstrap = self.inner.bootstrap_connection.borrow();
        for connection in connections.values().chain(bootstrap.iter()) {
            let (connection_sent, connection_received) = connection.byte_counts();
            sent += connection_sent;
            received += connection_received;
        }
        (sent, received)
    }

    /// Loads metadata for `topics` (every topic when None) and replaces the
    /// broker list. Topics not named keep their cached entry.
    pub async fn refresh_metadata(&self, topics: Option<&[&str]>) -> Result<(), ClientError> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names.iter().map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name)))).collect()
            }))
            .with_allow_auto_topic_creation(self.inner.config.allow_auto_topic_creation);
        let connection = self.any_connection().await?;
        let response = match connection.call(&request).await {
            Ok(response) => response,
            Err(err) => {
                self.drop_connection_if_closed(&connection);
                return Err(err);
            }
        };
        self.apply_metadata(response, topics.is_none());
        Ok(())
    }

    fn apply_metadata(&self, response: MetadataResponse, all_topics: bool) {
        let mut brokers = BTreeMap::new();
        for broker in &response.brokers {
            brokers.insert(broker.node_id.0, format!("{}:{}", broker.host.as_str(), broker.port));
        }
        *self.inner.controller_id.borrow_mut() = response.controller_id.0;

        // A broker whose address changed gets a new connection.
        {
            let mut connections = self.inner.connections.borrow_mut();
            connections
                .retain(|node_id, connection| brokers.get(node_id).is_some_and(|addr| addr == connection.addr()));
        }
        *self.inner.brokers.borrow_mut() = brokers;

        let mut topics = self.inner.topics.borrow_mut();
        if all_topics {
            topics.clear();
        }
        for topic in response.topics {
            let Some(name) = topic.name.as_ref().map(|name| name.0.as_str().to_string()) else {
                continue;
            };
            let mut partitions: Vec<PartitionMetadata> = topic
                .partitions
                .iter()
                .map(|partition| PartitionMetadata {
                    partition: partition.partition_index,
                    leader: partition.leader_id.0,
                    leader_epoch: partition.leader_epoch,
                    error_code: partition.error_code,
                })
                .collect();
            partitions.sort_by_key(|partition| partition.partition);
            if topic.error_code != 0 && partitions.is_empty() {
                topics.remove(&name);
                continue;
            }
            topics.insert(
                name.clone(),
                TopicMetadata {
                    name,
                    topic_id: uuid::Uuid::from_bytes(*topic.topic_id.as_bytes()),
                    error_code: topic.error_code,
                    partitions,
                },
            );
        }
    }

    /// The connection to broker `node_id`, opened on first use and reopened
    /// after a failure.
    pub async fn connection(&self, node_id: i32) -> Result<Rc<Connection>, ClientError> {
        if let Some(connection) = self.inner.connections.borrow().get(&node_id) {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
        }
        let addr = self.inner.brokers.borrow().get(&node_id).cloned().ok_or(ClientError::UnknownBroker { node_id })?;
        let connection = Rc::new(self.open(&addr).await?);

        // Another task may have connected meanwhile; keep the first open one.
        let mut connections = self.inner.connections.borrow_mut();
        if let Some(existing) = connections.get(&node_id) {
            if !existing.is_closed() {
                return Ok(existing.clone());
            }
            self.retire(existing);
        }
        connections.insert(node_id, connection.clone());
        Ok(connection)
    }

    /// The open connection to broker `node_id`, if there is one.
    pub fn cached_connection(&self, node_id: i32) -> Option<Rc<Connection>> {
        self.inner.connections.borrow().get(&node_id).filter(|connection| !connection.is_closed()).cloned()
    }

    /// A connection to any broker: the controller or first known broker, or a
    /// bootstrap address before metadata is known.
    pub async fn any_connection(&self) -> Result<Rc<Connection>, ClientError> {
        let known: Vec<i32> = self.inner.brokers.borrow().keys().copied().collect();
        let controller = *self.inner.controller_id.borrow();
        let mut candidates: Vec<i32> = known.iter().copied().filter(|id| *id == controller).collect();
        candidates.extend(known.iter().copied().filter(|id| *id != controller));
        let mut last_error = None;
        for node_id in candidates {
            match self.connection(node_id).await {
                Ok(connection) => return Ok(connection),
                Err(err) => last_error = Some(err),
            }
        }

        if let Some(connection) = self.inner.bootstrap_connection.borrow().as_ref() {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
        }
        for addr in &self.inner.config.bootstrap {
            match self.open(addr).await {
                Ok(connection) => {
                    let connection = Rc::new(connection);
                    if let Some(old) = self.inner.bootstrap_connection.borrow_mut().replace(connection.clone()) {
                        self.retire(&old);
                    }
                    return Ok(connection);
                }
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Config("no broker address known".into())))
    }

    /// The controller's connection (for CreateTopics and DeleteTopics).
    async fn controller_connection(&self) -> Result<Rc<Connection>, ClientError> {
        let controller = *self.inner.controller_id.borrow();
        if controller >= 0 {
            if let Ok(connection) = self.connection(controller).await {
                return Ok(connection);
            }
        }
        self.any_connection().await
    }

    async fn open(&self, addr: &str) -> Result<Connection, ClientError> {
        let attempts = self.inner.config.connect_attempts.max(1);
        let mut last_error = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                crate::runtime::sleep(self.inner.config.retry_backoff).await;
            }
            match Connection::connect(addr, &self.inner.config.connection).await {
                Ok(connection) => return Ok(connection),
                Err(err) => {
                    tracing::debug!(target: "weir::client", addr, attempt, error = %err, "connect failed");
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.expect("at least one connect attempt ran"))
    }

    fn retire(&self, connection: &Connection) {
        let (sent, received) = connection.byte_counts();
        let mut retired = self.inner.retired_byte_counts.borrow_mut();
        retired.0 += sent;
        retired.1 += received;
    }

    /// Forgets a failed connection so the next call opens a new one.
    pub fn drop_connection_if_closed(&self, connection: &Rc<Connection>) {
        if !connection.is_closed() {
            return;
        }
        let mut connections = self.inner.connections.borrow_mut();
        let failed: Vec<i32> = connections
            .iter()
            .filter(|(_, existing)| Rc::ptr_eq(existing, connection))
            .map(|(node_id, _)| *node_id)
            .collect();
        for node_id in failed {
            if let Some(old) = connections.remove(&node_id) {
                self.retire(&old);
            }
        }
    }

    /// Creates topics. Returns one result per topic, in request order, so the
    /// caller decides whether TOPIC_ALREADY_EXISTS (code 36) is an error.
    pub async fn create_topics(
        &self,
        topics: &[NewTopic],
        timeout: Duration,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
            .with_topics(
                topics
                    .iter()
                    .map(|topic| {
                        CreatableTopic::default()
                            .with_name(topic_name(&topic.name))
                            .with_num_partitions(topic.partitions)
                            .with_replication_factor(topic.replication_factor)
                            .with_configs(
                                topic
                                    .configs
                                    .iter()
                                    .map(|(name, value)| {
                                        CreatableTopicConfig::default()
                                            .with_name(StrBytes::from_string(name.clone()))
                                            .with_value(Some(StrBytes::from_string(value.clone())))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let connection = self.controller_connection().await?;
        let response = connection.call(&request).await?;

        let results = topics
            .iter()
            .map(|topic| {
                let result =
                    response.topics.iter().find(|result| result.name.0.as_str() == topic.name).ok_or_else(|| {
                        ClientError::protocol("CreateTopics", format!("no result for topic {}", topic.name))
                    })?;
                if result.error_code != 0 {
                    return Err(ClientError::Kafka {
                        api: "CreateTopics",
                        topic: Some(topic.name.clone()),
                        partition: None,
                        code: result.error_code,
                    });
                }
                Ok(())
            })
            .collect();
        Ok(results)
    }

    /// Deletes topics; one result per topic, in request order.
    pub async fn delete_topics(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let connection = self.controller_connection().await?;
        let version = connection.version_for::<DeleteTopicsRequest>()?;
        // Versions up to 5 name topics in topic_names, 6 and later in topics.
        let mut request =
            DeleteTopicsRequest::default().with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32);
        if version >= 6 {
            request.topics =
                topics.iter().map(|name| DeleteTopicState::default().with_name(Some(topic_name(name)))).collect();
        } else {
            request.topic_names = topics.iter().map(|name| topic_name(name)).collect();
        }
        let response = connection.send(&request, version).await?.await?;

        let results = topics
            .iter()
            .map(|name| {
                let result = response
                    .responses
                    .iter()
                    .find(|result| result.name.as_ref().is_some_and(|found| found.0.as_str() == *name))
                    .ok_or_else(|| ClientError::protocol("DeleteTopics", format!("no result for topic {name}")))?;
                if result.error_code != 0 {
                    return Err(ClientError::Kafka {
                        api: "DeleteTopics",
                        topic: Some(name.to_string()),
                        partition: None,
                        code: result.error_code,
                    });
                }
                Ok(())
            })
            .collect();
        for name in topics {
            self.inner.topics.borrow_mut().remove(*name);
        }
        Ok(results)
    }

    /// Looks up one offset per partition of `topic`, asking each partition's
    /// leader. Returns (partition, offset) in the order of `partitions`.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        spec: OffsetSpec,
    ) -> Result<Vec<(i32, i64)>, ClientError> {
        if self.topic(topic).is_none() {
            self.refresh_metadata(Some(&[topic])).await?;
        }
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &partition in partitions {
            by_leader.entry(self.leader(topic, partition)?).or_default().push(partition);
        }

        let mut offsets: HashMap<i32, i64> = HashMap::new();
        for (leader, leader_partitions) in by_leader {
            let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
                ListOffsetsTopic::default().with_name(topic_name(topic)).with_partitions(
                    leader_partitions
                        .iter()
                        .map(|partition| {
                            ListOffsetsPartition::default()
                                .with_partition_index(*partition)
                                .with_current_leader_epoch(-1)
                                .with_timestamp(spec.to_wire())
                        })
                        .collect(),
                ),
            ]);
            let connection = self.connection(leader).await?;
            let response =
                connection.call(&request).await.inspect_err(|_| self.drop_connection_if_closed(&connection))?;
            for topic_response in response.topics {
                for partition in topic_response.partitions {
                    if partition.error_code != 0 {
                        return Err(ClientError::kafka(
                            "ListOffsets",
                            topic,
                            partition.partition_index,
                            partition.error_code,
                        ));
                    }
                    offsets.insert(partition.partition_index, partition.offset);
                }
            }
        }

        partitions
            .iter()
            .map(|partition| {
                offsets
                    .get(partition)
                    .map(|offset| (*partition, *offset))
                    .ok_or_else(|| ClientError::protocol("ListOffsets", format!("no result for {topic}-{partition}")))
            })
            .collect()
    }

    /// Waits until metadata names a leader for every partition of `topic`,
    /// refreshing up to `attempts` times `retry_backoff` apart.
    pub async fn wait_for_leaders(&self, topic: &str, attempts: u32) -> Result<TopicMetadata, ClientError> {
        let mut last_error = ClientError::UnknownTopic { topic: topic.to_string() };
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                crate::runtime::sleep(self.inner.config.retry_backoff).await;
            }
            if let Err(err) = self.refresh_metadata(Some(&[topic])).await {
                last_error = err;
                continue;
            }
            if let Some(metadata) = self.topic(topic) {
                if !metadata.partitions.is_empty() && metadata.partitions.iter().all(|partition| partition.leader >= 0)
                {
                    return Ok(metadata);
                }
            }
        }
        Err(last_error)
    }
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}
