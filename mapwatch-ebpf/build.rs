// Rebuild the BPF object when bpf-linker changes (e.g. reinstalled against another LLVM).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
