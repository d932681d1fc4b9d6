//! Test fixtures shared by every crate's tests: real ZooKeeper and
//! PostgreSQL servers (never fakes), temporary databases, and (later) the
//! cluster sandbox.

pub mod postgres;
pub mod net;
pub mod proxy;
pub mod seed;
pub mod zookeeper;
