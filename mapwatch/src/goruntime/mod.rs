//! What the Go runtime does, per Go version: which versions are supported, which
//! functions exist under which names (`functions.rs`), which registers carry which
//! arguments, struct field offsets, and growth rules. Every fact names the Go source file
//! it mirrors. Adding a Go version means one entry here plus fixtures (see
//! docs/NEW_GO_VERSION.md).
pub mod functions;
pub mod offsets;
pub mod slice_growth;
pub mod versions;

pub use versions::{GoVersion, MapImplementation, RuntimeFacts, UnsupportedGoVersion, facts_for};
