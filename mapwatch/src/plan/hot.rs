//! The opt-in probes on hot runtime functions (`--hot-probes`): mapassign_fast64's
//! heatmap and mallocgc (with Go 1.27's size-specialised allocators).
use mapwatch_common::{MapAssignLayout, ProbeKind};

use super::*;

/// mapassign_fast64 (opt-in): an entry probe (map pointer in RBX, the type's bucket or
/// group size read through RAX — docs/go-runtime.md, "Arguments"), a probe where the hash call
/// returns (hash in RAX), and one per RET (element pointer in RAX). The kernel pairs
/// them per goroutine and locates the slot at RET (mapwatch-ebpf `map_assign`).
pub(super) fn plan_map_assign(
    binary: &GoBinary,
    maps: MapImplementation,
    offsets: Option<&StructOffsets>,
) -> Result<Vec<PlannedProbe>, String> {
    let base = MapAssignLayout {
        map_reg: RBX,
        hash_reg: RAX,
        elem_reg: RAX,
        ..MapAssignLayout::default()
    };
    let (stride, layout) = match maps {
        MapImplementation::Classic => (
            load(RAX, 2, required(offsets, Field::MapTypeBucketSize)?),
            MapAssignLayout {
                implementation: MapAssignLayout::CLASSIC,
                hmap_b: required(offsets, Field::HmapB)?,
                hmap_buckets: required(offsets, Field::HmapBuckets)?,
                ..base
            },
        ),
        MapImplementation::Swiss => {
            let groups = required(offsets, Field::SwissTableGroups)?;
            (
                load(RAX, 8, required(offsets, Field::SwissMapTypeGroupSize)?),
                MapAssignLayout {
                    implementation: MapAssignLayout::SWISS,
                    map_dir_ptr: required(offsets, Field::SwissMapDirPtr)?,
                    map_dir_len: required(offsets, Field::SwissMapDirLen)?,
                    map_global_shift: required(offsets, Field::SwissMapGlobalShift)?,
                    table_groups_data: groups + required(offsets, Field::SwissGroupsData)?,
                    table_groups_length_mask: groups
                        + required(offsets, Field::SwissGroupsLengthMask)?,
                    ..base
                },
            )
        }
    };
    // The linker keeps mapassign_fast64 only if the program assigns to a map with
    // 8-byte keys: without it the heatmap is empty, not unavailable (as growsliceBuf).
    if binary.function(MAPASSIGN_FAST64).is_none() {
        return Ok(Vec::new());
    }
    let assign = decode_function(binary, MAPASSIGN_FAST64)?;
    let with_layout = |mut probe: PlannedProbe| {
        probe.map_assign = Some(layout);
        probe
    };
    let mut probes = vec![with_layout(
        assign.entry(binary, spec(ProbeKind::MapAssignEntry, 0, &[stride]))?,
    )];
    for offset in hash_sites(binary, &assign)? {
        probes.push(with_layout(assign.probe(
            binary,
            Site::AfterCall,
            offset,
            spec(ProbeKind::MapAssignHash, 0, &[]),
        )?));
    }
    probes.extend(
        assign
            .rets(binary, spec(ProbeKind::MapAssignRet, 0, &[]))?
            .into_iter()
            .map(with_layout),
    );
    Ok(probes)
}

/// Where the key's hash is in RAX: after the calls to [`MEMHASH64`] (Go 1.27), else
/// after the first indirect CALL (`t.Hasher(&key, seed)`, the first call the function
/// makes outside race builds: src/runtime/map_fast64*.go for classic maps,
/// src/internal/runtime/maps/runtime_fast64*.go for Swiss ones).
fn hash_sites(binary: &GoBinary, assign: &Decoded<'_>) -> Result<Vec<u64>, String> {
    let calls = decode::call_returns(assign.code, assign.vaddr)
        .map_err(|e| format!("{}: {e}", assign.name))?;
    let hashers: Vec<u64> = MEMHASH64
        .iter()
        .filter_map(|name| binary.function(name).map(|f| f.vaddr))
        .collect();
    let direct: Vec<u64> = calls
        .iter()
        .filter(|c| c.target.is_some_and(|t| hashers.contains(&t)))
        .map(|c| c.return_offset)
        .collect();
    if !direct.is_empty() {
        return Ok(direct);
    }
    calls
        .iter()
        .find(|c| c.target.is_none())
        .map(|c| vec![c.return_offset])
        .ok_or_else(|| format!("{}: no hash call found", assign.name))
}

/// mallocgc (opt-in): entry with the caller, and Go 1.27's size-specialised functions
/// that compiled code calls directly (the signal would be partial without them).
pub(super) fn plan_malloc(binary: &GoBinary) -> Result<Vec<PlannedProbe>, String> {
    let flags = ProbeSpec::FLAG_CALLER_PC;
    let mut probes = vec![
        decode_function(binary, MALLOCGC)?.entry(binary, spec(ProbeKind::Mallocgc, flags, &[]))?,
    ];
    for name in MALLOCGC_SPECIALIZED {
        if binary.function(name).is_some() {
            probes.push(
                decode_function(binary, name)?
                    .entry(binary, spec(ProbeKind::MallocgcSpecialized, flags, &[]))?,
            );
        }
    }
    Ok(probes)
}
