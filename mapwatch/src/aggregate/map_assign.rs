//! Where a `mapassign_fast64` put its key, from what the kernel read at the RET
//! (mapwatch-ebpf `map_assign`): the bucket heatmap position and the probe length.
//! Pure: no kernel, unit-tested here.
use mapwatch_common::{MAP_SLOT_CLASSIC, MAP_SLOT_SWISS_SMALL, MAP_SLOT_SWISS_TABLE};

/// One assignment's slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssignedSlot {
    /// Home bucket (classic) or slot's group (Swiss) / buckets or groups of the table:
    /// 0 ≤ position < 1.
    pub position: f64,
    /// Buckets or groups visited to reach the slot; 1 = the home bucket or first group.
    pub probe_length: u64,
}

/// Interprets a RET record's loads: `[index, count, depth or hash, tag]`.
/// None when the values cannot describe a slot (a torn read the kernel did not catch).
pub fn assigned_slot(loads: [u64; 4]) -> Option<AssignedSlot> {
    let [index, count, third, tag] = loads;
    if count == 0 || index >= count {
        return None;
    }
    let position = index as f64 / count as f64;
    let probe_length = match tag {
        // Overflow buckets followed from the home bucket (src/runtime/map.go).
        MAP_SLOT_CLASSIC => third + 1,
        // One group, no probing (src/internal/runtime/maps/map.go putSlotSmall).
        MAP_SLOT_SWISS_SMALL => 1,
        MAP_SLOT_SWISS_TABLE => swiss_probe_length(third, index, count)?,
        _ => return None,
    };
    Some(AssignedSlot {
        position,
        probe_length,
    })
}

/// Position (1-based) of `group` in the probe sequence of `hash` over `groups` groups
/// (a power of two): offset₀ = h1(hash) & mask, offsetᵢ = offsetᵢ₋₁ + i (triangular
/// probing, src/internal/runtime/maps/table.go `makeProbeSeq`, `probeSeq.next`;
/// h1 = hash >> 7, group.go). Triangular probing visits every group once in the first
/// `groups` steps, so the answer is unique; None if `groups` is not a power of two.
pub fn swiss_probe_length(hash: u64, group: u64, groups: u64) -> Option<u64> {
    if !groups.is_power_of_two() {
        return None;
    }
    let mask = groups - 1;
    let mut offset = (hash >> 7) & mask;
    for step in 0..groups {
        if offset == group {
            return Some(step + 1);
        }
        offset = (offset + step + 1) & mask;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_slot_counts_overflow_buckets_from_the_home_bucket() {
        let slot = assigned_slot([3, 8, 0, MAP_SLOT_CLASSIC]).unwrap();
        assert_eq!(slot.position, 3.0 / 8.0);
        assert_eq!(slot.probe_length, 1);
        assert_eq!(
            assigned_slot([3, 8, 2, MAP_SLOT_CLASSIC])
                .unwrap()
                .probe_length,
            3
        );
        assert_eq!(assigned_slot([8, 8, 0, MAP_SLOT_CLASSIC]), None);
        assert_eq!(assigned_slot([0, 0, 0, MAP_SLOT_CLASSIC]), None);
    }

    #[test]
    fn small_swiss_map_is_one_group_probed_once() {
        let slot = assigned_slot([0, 1, 0xdead_beef, MAP_SLOT_SWISS_SMALL]).unwrap();
        assert_eq!(slot.position, 0.0);
        assert_eq!(slot.probe_length, 1);
    }

    #[test]
    fn swiss_probe_sequence_is_triangular_from_h1() {
        // h1 = hash >> 7 = 5, mask 7: offsets 5, 6, 0, 3, 7, 4, 2, 1.
        let hash = 5 << 7 | 0x55;
        let expected = [
            (5, 1),
            (6, 2),
            (0, 3),
            (3, 4),
            (7, 5),
            (4, 6),
            (2, 7),
            (1, 8),
        ];
        for (group, length) in expected {
            assert_eq!(
                swiss_probe_length(hash, group, 8),
                Some(length),
                "group {group}"
            );
        }
        let slot = assigned_slot([0, 8, hash, MAP_SLOT_SWISS_TABLE]).unwrap();
        assert_eq!(slot.probe_length, 3);
        assert_eq!(slot.position, 0.0);
    }

    #[test]
    fn every_group_has_exactly_one_probe_length() {
        for groups in [1u64, 2, 4, 16, 128] {
            let mut seen: Vec<u64> = (0..groups)
                .map(|g| swiss_probe_length(0x1234_5678_9abc, g, groups).unwrap())
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (1..=groups).collect::<Vec<_>>(), "{groups} groups");
        }
        assert_eq!(swiss_probe_length(0, 0, 6), None);
    }

    #[test]
    fn unknown_tag_is_not_a_slot() {
        assert_eq!(assigned_slot([0, 8, 0, 99]), None);
    }
}
