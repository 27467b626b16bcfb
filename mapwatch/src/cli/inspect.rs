//! `mapwatch inspect BINARY`: what can be probed, without root. The JSON form is
//! documented in docs/inspect-json.md.
use std::collections::BTreeMap;

use super::{InspectArgs, UsageError};
use crate::{
    goelf::GoBinary,
    goruntime::offsets::{Field, OffsetsSource},
    plan::{self, PlanRequest},
};

/// Version of the `--json` document; bump on incompatible changes.
const SCHEMA_VERSION: u32 = 1;

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let binary = GoBinary::open(&args.binary).map_err(|e| UsageError(e.to_string()))?;
    let info = binary.build_info().clone();
    let plan =
        plan::plan_probes(&binary, PlanRequest::ALL).map_err(|e| UsageError(e.to_string()))?;
    let offsets: BTreeMap<Field, u32> = plan
        .offsets
        .as_ref()
        .map(|o| o.offsets.iter().map(|(f, v)| (*f, *v)).collect())
        .unwrap_or_default();
    let offsets_source: Option<OffsetsSource> = plan.offsets.as_ref().map(|o| o.source);
    if args.json {
        let doc = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "path": args.binary,
            "go_version": plan.go_version,
            "go_version_raw": info.go_version,
            "goexperiment": info.goexperiment(),
            "main_path": info.path,
            "build_settings": info.settings.iter().cloned().collect::<BTreeMap<_, _>>(),
            "map_implementation": plan.map_implementation,
            "stripped": !binary.has_symtab(),
            "struct_offsets": { "source": offsets_source, "fields": offsets },
            "probes": plan.probes,
            "unavailable": plan.unavailable,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("{}", args.binary.display());
    println!("  Go version:     {}", info.go_version);
    println!(
        "  GOEXPERIMENT:   {}",
        if info.goexperiment().is_empty() {
            "(none)"
        } else {
            info.goexperiment()
        }
    );
    println!("  maps:           {:?}", plan.map_implementation);
    println!(
        "  symbols:        {}",
        if binary.has_symtab() {
            ".symtab"
        } else {
            "stripped (no .symtab)"
        }
    );
    match offsets_source {
        Some(source) => println!("  struct offsets: {} fields from {source:?}", offsets.len()),
        None => println!("  struct offsets: unknown (no DWARF, version not in the table)"),
    }
    println!("  probes:");
    let width = plan.probes.iter().map(|p| p.probe.len()).max().unwrap_or(0);
    for p in &plan.probes {
        let site = match p.site {
            plan::Site::Entry => "entry",
            plan::Site::Ret => "ret  ",
            plan::Site::AfterCall => "call ",
        };
        println!(
            "    {:<width$}  {site}  file offset {:#8x}  {}",
            p.probe, p.file_offset, p.function
        );
    }
    for u in &plan.unavailable {
        println!("  unavailable: {}: {}", u.signal, u.reason);
    }
    Ok(())
}
