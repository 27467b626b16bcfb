//! Prints `mapwatch::metrics::families()` as JSON: every metric family the registry
//! registers, with its type, HELP and labels. `cargo xtask deploy-check` checks the
//! dashboards and alert rules against this list.
//!
//! An example rather than a dependency of xtask: building the mapwatch library builds
//! the BPF object, which needs bpf-linker — and `cargo xtask setup` is what installs
//! it, so xtask itself must build without it.
fn main() -> anyhow::Result<()> {
    let families = mapwatch::metrics::families()?;
    println!("{}", serde_json::to_string_pretty(&families)?);
    Ok(())
}
