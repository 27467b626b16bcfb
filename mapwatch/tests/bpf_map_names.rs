//! Userspace takes the BPF maps by the names in `mapwatch_common::map_names`, while the
//! BPF side names each map by its static's identifier: aya-ebpf's `#[map(name = …)]`
//! takes only a string literal, so the constants cannot be used there. This test reads
//! the map names out of the object that `attach` embeds (the one build.rs leaves in
//! OUT_DIR), which is exactly what `Ebpf::take_map` searches, so a renamed, added or
//! removed map on either side fails here without root rather than at load time.
//!
//! Parsing the object, not the eBPF crate's source: the object is the truth however a
//! map got its name (identifier, `name = …`, a macro), and parsing needs no kernel.
use std::collections::BTreeSet;

use aya_obj::{EbpfSectionKind, Object};
use mapwatch_common::map_names;

/// aya-log-ebpf's own map, taken by `aya_log::EbpfLogger::init`, not by name.
const AYA_LOG_MAP: &str = "AYA_LOGS";

#[test]
fn the_bpf_object_defines_exactly_the_named_maps() {
    let bytes = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mapwatch"));
    let object = Object::parse(bytes).expect("the BPF object built by build.rs parses");
    let in_object: BTreeSet<&str> = object
        .maps
        .iter()
        .filter(|(_, map)| {
            matches!(
                map.section_kind(),
                EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
            )
        })
        .map(|(name, _)| name.as_str())
        .filter(|&name| name != AYA_LOG_MAP)
        .collect();
    let named: BTreeSet<&str> = map_names::ALL.into_iter().collect();
    assert_eq!(
        in_object, named,
        "the maps of the BPF object (left) and mapwatch_common::map_names::ALL (right) differ"
    );
}
