//! `mapwatch inspect BINARY`: what can be probed, without root.
use super::{InspectArgs, UsageError};
use crate::{
    goelf::GoBinary,
    plan::{self, PlanRequest},
};

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let binary = GoBinary::open(&args.binary).map_err(|e| UsageError(e.to_string()))?;
    let info = binary.build_info().clone();
    let plan = plan::plan_probes(
        &binary,
        PlanRequest {
            slice_growth: true,
            exact: true,
        },
    )
    .map_err(|e| UsageError(e.to_string()))?;
    if args.json {
        let doc = serde_json::json!({
            "path": args.binary,
            "go_version": info.go_version,
            "goexperiment": info.goexperiment(),
            "stripped": !binary.has_symtab(),
            "probes": plan.probes,
            "unavailable": plan.unavailable,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("{}", args.binary.display());
    println!("  Go version:   {}", info.go_version);
    println!(
        "  GOEXPERIMENT: {}",
        if info.goexperiment().is_empty() {
            "(none)"
        } else {
            info.goexperiment()
        }
    );
    println!(
        "  symbols:      {}",
        if binary.has_symtab() {
            ".symtab"
        } else {
            "stripped"
        }
    );
    println!("  probes:");
    for p in &plan.probes {
        println!(
            "    {:<14} {} {:?} vaddr {:#x} file offset {:#x}",
            p.probe, p.function, p.site, p.vaddr, p.file_offset
        );
    }
    for u in &plan.unavailable {
        println!("  unavailable: {}: {}", u.signal, u.reason);
    }
    Ok(())
}
