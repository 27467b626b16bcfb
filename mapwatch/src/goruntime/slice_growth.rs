//! The capacity `runtime.growslice` returns, derived from its entry arguments — so the
//! profiler needs no (single-stepped, ~4× dearer) probe on growslice's RET.
//!
//! Mirrors src/runtime/slice.go (`growslice`, `nextslicecap`) and
//! src/runtime/msize.go (`roundupsize`) of Go 1.19 and 1.21–1.27. Checked identical
//! across those versions: `nextslicecap` (inline in ≤1.21's growslice, same
//! arithmetic), the size
//! class table and the page size. What differs is `roundupsize`: Go 1.22 added malloc
//! headers (GOEXPERIMENT allocheaders, on by default in 1.22–1.23, unconditional from
//! 1.24), which shift where pointerful objects land in the size classes.

/// How `roundupsize` rounds an allocation to a size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundupRule {
    /// Go 1.19–1.21, or 1.22–1.23 built with GOEXPERIMENT=noallocheaders:
    /// `roundupsize(size)` (src/runtime/msize_noallocheaders.go in 1.22–1.23).
    Plain,
    /// Go 1.22+: objects with pointers larger than 512 bytes carry an 8-byte malloc
    /// header inside their size class (src/runtime/msize_allocheaders.go 1.22–1.23,
    /// msize.go 1.24+).
    MallocHeaders,
}

/// Everything about growslice's capacity computation that varies by Go version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceGrowthRule {
    pub roundup: RoundupRule,
}

/// One growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Capacity in elements of the new backing array.
    pub new_cap: u64,
    /// `new_cap * elem_size`: the usable bytes of the new backing array.
    pub new_bytes: u64,
}

/// The rule for Go 1.`minor`, given the binary's GOEXPERIMENT setting; None outside
/// the versions checked (1.19, 1.21–1.27).
pub fn rule_for(minor: u32, goexperiment: &str) -> Option<SliceGrowthRule> {
    let experiment_off = |name: &str| {
        goexperiment
            .split(',')
            .any(|e| e.trim() == format!("no{name}"))
    };
    let roundup = match minor {
        19 | 21 => RoundupRule::Plain,
        22 | 23 if experiment_off("allocheaders") => RoundupRule::Plain,
        22..=27 => RoundupRule::MallocHeaders,
        _ => return None,
    };
    Some(SliceGrowthRule { roundup })
}

/// `class_to_size` from src/runtime/sizeclasses.go (1.19–1.24) =
/// `SizeClassToSize` in src/internal/runtime/gc/sizeclasses.go (1.25–1.27); identical
/// in all eight versions (checked byte for byte).
const CLASS_TO_SIZE: [u16; 68] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];
/// `_MaxSmallSize` / `gc.MaxSmallSize`.
const MAX_SMALL_SIZE: u64 = 32768;
/// `_PageSize` = 1 << 13.
const PAGE_SIZE: u64 = 8192;
/// `mallocHeaderSize` (src/runtime/mbitmap.go; gc.MallocHeaderSize from 1.25).
const MALLOC_HEADER_SIZE: u64 = 8;
/// `minSizeForMallocHeader` = PtrSize * ptrBits = 8 * 64: below it the heap bits live
/// in the span, no header.
const MIN_SIZE_FOR_MALLOC_HEADER: u64 = 512;
/// `threshold` in nextslicecap: below it capacity doubles.
const DOUBLING_THRESHOLD: u64 = 256;

/// The smallest size class holding `size` bytes. The runtime looks this up through
/// `size_to_class8`/`size_to_class128`, which are built from the same table with
/// 8- and 128-byte granularity; every class size is a multiple of that granularity,
/// so "smallest class ≥ size" is the same answer.
fn size_class_bytes(size: u64) -> u64 {
    let at = CLASS_TO_SIZE.partition_point(|&class| u64::from(class) < size);
    u64::from(CLASS_TO_SIZE[at])
}

/// `roundupsize`: the bytes mallocgc will really hand out for a `size`-byte request.
fn roundupsize(rule: SliceGrowthRule, size: u64, noscan: bool) -> u64 {
    match rule.roundup {
        RoundupRule::Plain => {
            if size < MAX_SMALL_SIZE {
                return size_class_bytes(size);
            }
        }
        RoundupRule::MallocHeaders => {
            if size <= MAX_SMALL_SIZE - MALLOC_HEADER_SIZE {
                let header = if !noscan && size > MIN_SIZE_FOR_MALLOC_HEADER {
                    MALLOC_HEADER_SIZE
                } else {
                    0
                };
                return size_class_bytes(size + header) - header;
            }
        }
    }
    // Large object: whole pages; on overflow the request itself.
    size.checked_add(PAGE_SIZE - 1)
        .map_or(size, |padded| padded & !(PAGE_SIZE - 1))
}

/// `nextslicecap(newLen, oldCap)`.
fn next_slice_cap(new_len: u64, old_cap: u64) -> u64 {
    let double = old_cap.saturating_mul(2);
    if new_len > double {
        return new_len;
    }
    if old_cap < DOUBLING_THRESHOLD {
        return double;
    }
    // Go computes in int and falls back to newLen when newcap overflows to <= 0.
    let mut new_cap = old_cap;
    while new_cap < new_len {
        new_cap += (new_cap + 3 * DOUBLING_THRESHOLD) >> 2;
        if new_cap > i64::MAX as u64 {
            return new_len;
        }
    }
    new_cap
}

/// The capacity growslice returns for `growslice(oldPtr, newLen, oldCap, num, et)`,
/// where `elem_size = et.Size_` and `noscan = et.PtrBytes == 0`.
pub fn grown_capacity(
    rule: SliceGrowthRule,
    old_cap: u64,
    new_len: u64,
    elem_size: u64,
    noscan: bool,
) -> Growth {
    if elem_size == 0 {
        // "append should not create a slice with nil pointer but non-zero len":
        // growslice returns cap == newLen for zero-size elements.
        return Growth {
            new_cap: new_len,
            new_bytes: 0,
        };
    }
    let new_cap = next_slice_cap(new_len, old_cap);
    // The size-specialised branches (1, PtrSize, powers of two, other) all compute
    // roundupsize(newcap*size)/size; they differ only in how they multiply.
    let bytes = new_cap.saturating_mul(elem_size);
    let rounded = roundupsize(rule, bytes, noscan);
    let new_cap = rounded / elem_size;
    Growth {
        new_cap,
        new_bytes: new_cap * elem_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS: SliceGrowthRule = SliceGrowthRule {
        roundup: RoundupRule::MallocHeaders,
    };
    const PLAIN: SliceGrowthRule = SliceGrowthRule {
        roundup: RoundupRule::Plain,
    };

    /// Appends one element at a time from empty; returns the capacities seen.
    fn caps(rule: SliceGrowthRule, elem_size: u64, noscan: bool, up_to: u64) -> Vec<u64> {
        let (mut len, mut cap, mut seen) = (0, 0, Vec::new());
        while len < up_to {
            len += 1;
            if len > cap {
                cap = grown_capacity(rule, cap, len, elem_size, noscan).new_cap;
                seen.push(cap);
            }
        }
        seen
    }

    #[test]
    fn int_slices_grow_as_observed_on_go_1_21_to_1_27() {
        // go-runtime.md §5: observed []int capacities.
        let expected = [
            1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 848, 1280, 1792, 2560, 3408,
        ];
        for rule in [PLAIN, HEADERS] {
            assert_eq!(caps(rule, 8, true, 3408), expected);
        }
    }

    #[test]
    fn twenty_four_byte_elements_round_to_size_classes() {
        // go-runtime.md §5: "24-byte element: … 512 853 1365".
        let seen = caps(HEADERS, 24, true, 1365);
        assert_eq!(&seen[seen.len() - 3..], [512, 853, 1365]);
    }

    #[test]
    fn malloc_headers_shift_pointerful_objects_only() {
        // 100 pointers (800 B) → 1600 B request: scan objects need 1608 B → class 1792,
        // minus the header: 1784/8 = 223; without headers 1792/8 = 224.
        assert_eq!(grown_capacity(HEADERS, 100, 101, 8, false).new_cap, 223);
        assert_eq!(grown_capacity(HEADERS, 100, 101, 8, true).new_cap, 224);
        assert_eq!(grown_capacity(PLAIN, 100, 101, 8, false).new_cap, 224);
    }

    #[test]
    fn zero_size_and_large_objects() {
        assert_eq!(
            grown_capacity(HEADERS, 5, 6, 0, true),
            Growth {
                new_cap: 6,
                new_bytes: 0
            }
        );
        // 40000 bytes: a large object, rounded to 5 pages.
        let g = grown_capacity(HEADERS, 0, 40000, 1, true);
        assert_eq!(g.new_cap, 5 * 8192);
    }

    #[test]
    fn version_rules() {
        assert_eq!(rule_for(21, ""), Some(PLAIN));
        assert_eq!(rule_for(22, ""), Some(HEADERS));
        assert_eq!(rule_for(23, "noallocheaders"), Some(PLAIN));
        assert_eq!(rule_for(24, "noswissmap"), Some(HEADERS));
        assert_eq!(rule_for(27, ""), Some(HEADERS));
        assert_eq!(rule_for(19, ""), Some(PLAIN));
        assert_eq!(rule_for(20, ""), None);
        assert_eq!(rule_for(28, ""), None);
    }
}
