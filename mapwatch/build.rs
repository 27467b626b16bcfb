//! Builds the BPF object (mapwatch-ebpf) for bpfel-unknown-none on the nightly toolchain
//! and leaves it in OUT_DIR, where `attach` embeds it with `include_bytes_aligned!`.
use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    if which_bpf_linker().is_none() && std::env::var_os("AYA_BUILD_SKIP").is_none() {
        bail!(
            "bpf-linker is not on PATH; it links the BPF object. \
             Run `cargo xtask setup` (installs bpf-linker 0.13.0 against LLVM 22)."
        );
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../mapwatch-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non UTF-8 path to mapwatch-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mapwatch-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
