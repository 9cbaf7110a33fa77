//! Weir: a Kafka-compatible, thread-per-core message broker for Linux.
//!
//! See ARCHITECTURE.md for the code map and the invariants of each module.

pub mod admin;
pub mod alloc;
pub mod client;
pub mod config;
pub mod group;
pub mod metadata;
pub mod net;
pub mod protocol;
pub mod runtime;
pub mod shard;
pub mod storage;
