//! `mapwatch record`'s file: its format (`format.rs`, version 1), writing it block by
//! block (`write.rs`), reading it back, damaged tails included (`read.rs`), and the
//! capture task that turns the aggregator's decoded events into its entries
//! (`capture.rs`). The report (report/) reads what this room writes.
pub mod capture;
pub mod format;
pub mod read;
pub mod write;
