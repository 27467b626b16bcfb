//! `mapwatch report`: a record file in, the lines to change out. Pure: the recording
//! is analysed into a [`model::Report`] (`analyse/`: growth chains per slice, growths
//! per map, pauses; `advice.rs`: what to change at each site), which each format
//! renders; `diff/` rewrites the user's source (the one part that reads files).
pub mod advice;
pub mod analyse;
pub mod diagnostics;
pub mod diff;
pub mod gate;
pub mod markdown;
pub mod model;
pub mod pprof;
pub mod svg;
