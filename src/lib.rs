pub mod client;
pub mod runtime;
pub mod storage;
