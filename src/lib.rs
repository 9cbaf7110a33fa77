pub mod group;
pub mod runtime;
pub mod storage;
