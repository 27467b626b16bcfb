//! `mapwatch report`: a record file in, the lines to change out. Pure: the recording
//! is analysed into a [`model::Report`] (`analyse.rs`: growth chains per slice, growths
//! per map, pauses, advice), which each format renders.
pub mod analyse;
pub mod model;
pub mod pprof;
pub mod svg;
