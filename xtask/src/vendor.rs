//! `vendor/aya` must stay "aya 0.14.0 + vendor/aya-0.14.0-uprobe-multi.patch" and nothing
//! else (vendor/README.md says why it exists): reverse the patch in a scratch copy and
//! compare every file with the published crate's hashes.
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::util::{self, Cmd};

pub fn check() -> anyhow::Result<()> {
    let vendor = util::workspace_root().join("vendor");
    let scratch =
        std::env::temp_dir().join(format!("mapwatch-vendor-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = check_in(&vendor, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn check_in(vendor: &Path, scratch: &Path) -> anyhow::Result<()> {
    Cmd::new("cp")
        .args(["-r"])
        .args([vendor.join("aya"), scratch.to_path_buf()])
        .run()?;
    Cmd::new("git")
        .args(["apply", "-R", "--unidiff-zero"])
        .args([vendor.join("aya-0.14.0-uprobe-multi.patch")])
        .current_dir(scratch)
        .run()
        .context("vendor/aya does not contain vendor/aya-0.14.0-uprobe-multi.patch as is")?;
    let listed = std::fs::read_to_string(vendor.join("aya-0.14.0.sha256"))?;
    Cmd::new("sha256sum")
        .args(["--check", "--quiet", "--strict"])
        .args([vendor.join("aya-0.14.0.sha256")])
        .current_dir(scratch)
        .run()
        .context("a file in vendor/aya differs from aya 0.14.0 beyond the patch")?;
    let present = Cmd::new("find")
        .args([".", "-type", "f"])
        .current_dir(scratch)
        .output()
        .context("cannot list vendor/aya")?;
    let extra: Vec<&str> = present
        .lines()
        .filter(|file| {
            !listed
                .lines()
                .any(|line| line.ends_with(&format!("  {file}")))
        })
        .collect();
    if !extra.is_empty() {
        bail!("vendor/aya has files that aya 0.14.0 does not: {extra:?}");
    }
    println!("    vendor/aya = aya 0.14.0 + the uprobe_multi patch");
    Ok(())
}
