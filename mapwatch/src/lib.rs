//! mapwatch: an eBPF profiler for the growth of maps and slices in running Go programs.
//!
//! Data flows uprobe → ring buffer → [`attach::reader`] → [`aggregate`] →
//! [`metrics`]; see ARCHITECTURE.md for the rooms and where a change goes.
pub mod aggregate;
pub mod attach;
pub mod budget;
pub mod cli;
pub mod config;
pub mod discover;
pub mod goelf;
pub mod goruntime;
pub mod metrics;
pub mod plan;
pub mod record;
pub mod report;
pub mod symbolize;
