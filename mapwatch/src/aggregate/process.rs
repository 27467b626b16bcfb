//! State per process. Addresses in records are per process (PIE, ASLR) and pairs of
//! records are per goroutine of a process, so all of it goes when the process does:
//! dropping a [`ProcessState`] forgets it.
use super::{children::ProcessChildren, runtime::PauseStarts, slices::SliceCalls};
use crate::symbolize::Symbolizer;

#[derive(Default)]
pub(super) struct ProcessState {
    /// Sent before the process's slots are registered; without it records are counted
    /// but not named.
    pub symbolizer: Option<Box<Symbolizer>>,
    pub children: ProcessChildren,
    pub slices: SliceCalls,
    pub pauses: PauseStarts,
}
