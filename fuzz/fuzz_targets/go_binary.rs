//! A whole executable: ELF, build info, symbols, DWARF, the probe plan, type names,
//! inlined frames.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mapwatch::{
    goelf::{GoBinary, types::TypeLayout},
    plan::{PlanRequest, plan_probes},
};

fuzz_target!(|data: &[u8]| {
    let Ok(binary) = GoBinary::from_bytes(Path::new("fuzz-input"), data.to_vec()) else {
        return;
    };
    if let Ok(plan) = plan_probes(&binary, PlanRequest::ALL) {
        let layout = TypeLayout { tflag: 20, str: 40 };
        if let Some(base) = binary.types_base(Some(296)) {
            for probe in &plan.probes {
                let _ = binary.type_name(base, probe.vaddr, layout);
            }
        }
        let gofunc = binary
            .gofunc_base(Some(320))
            .and_then(|base| binary.gofunc(base));
        if let Ok(Some(table)) = binary.pclntab() {
            for probe in &plan.probes {
                let _ = table.frames(probe.vaddr, gofunc);
            }
        }
    }
});
