// Empty on purpose: mapwatch/build.rs depends on this crate (so cargo rebuilds the BPF
// object when it changes); the programs themselves are the `mapwatch` bin target.
#![no_std]
