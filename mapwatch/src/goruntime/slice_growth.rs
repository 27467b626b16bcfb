//! The capacity `runtime.growslice` returns, derived from its entry arguments, so the
//! profiler needs no (single-stepped, dearer) uprobe on growslice's RET instructions.
//!
//! This is a line-by-line mirror of, for linux/amd64:
//! - src/runtime/slice.go `growslice` (the size-specialised branches) and `nextslicecap`;
//! - src/runtime/msize.go `roundupsize` (msize_allocheaders.go / msize_noallocheaders.go
//!   in 1.22);
//! - the size-class tables of src/runtime/sizeclasses.go (1.19–1.24), which moved to
//!   src/internal/runtime/gc/sizeclasses.go in 1.25.
//!
//! What was compared in the shipped sources of go1.19.8 (Debian), 1.21.13, 1.22.10,
//! 1.23.9, 1.24.11, 1.25.5, 1.26.6 and 1.27.3:
//! - `nextslicecap` has a byte-identical body in 1.22–1.27. 1.19 and 1.21 compute the
//!   capacity inline in `growslice` with the same arithmetic (`/ 4` instead of `>> 2`,
//!   and `0 < newcap && newcap < newLen` as the loop test). They differ only once
//!   newcap has overflowed int, and such a request always panics (it is far above
//!   maxAlloc), so no returned capacity differs.
//! - The size-specialised branches of `growslice` (1, PtrSize, powers of two, other)
//!   compute the same capacity in 1.19–1.27. In 1.21–1.27 the last two also recompute
//!   `capmem` from the new capacity (1.19 does not), which changes the size passed to
//!   mallocgc but not the capacity returned.
//! - The size-class tables (`class_to_size`, `size_to_class8`, `size_to_class128`),
//!   `_MaxSmallSize`, `smallSizeDiv`, `smallSizeMax`, `largeSizeDiv` and `_PageShift`
//!   are identical in every version listed.
//! - `roundupsize` is what varies, and [`RoundupRule`] captures it. Go 1.22 added malloc
//!   headers (GOEXPERIMENT allocheaders; on by default in 1.22). Go 1.23 removed the
//!   experiment and its old code path (`GOEXPERIMENT=noallocheaders` fails there with
//!   "unknown GOEXPERIMENT allocheaders"). The 1.23–1.27 `roundupsize` bodies are the
//!   same; 1.25 only renamed the constants into package internal/runtime/gc.
//! - `mallocHeaderSize` = 8 and `minSizeForMallocHeader` = PtrSize·ptrBits = 512 in
//!   1.22–1.27 (src/runtime/mbitmap_allocheaders.go 1.22, mbitmap.go 1.23–1.24,
//!   src/internal/runtime/gc/malloc.go 1.25+). `maxAlloc` = 1<<48 on linux/amd64
//!   (src/runtime/malloc.go, heapAddrBits = 48) in every version.
//!
//! Differences outside the capacity arithmetic:
//! - Go 1.19's growslice has another signature (`growslice(et, old slice, cap)`; see
//!   `versions.rs`). Its entry check panics when `cap < old.cap`, not when `newLen < 0`.
//!   The compiler calls it only when the new length is above the old capacity, where
//!   the two checks agree.
//! - Some appends never reach growslice: Go 1.25+ stack buffers and 1.26+
//!   `growsliceBuf`/`moveSlice*` (docs/go-runtime.md, "Slice growth"). This module only describes what
//!   growslice returns when it is called.

/// How `roundupsize` rounds an allocation to a size class; chosen per Go version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundupRule {
    /// `roundupsize(size)`: the smallest size class holding `size` bytes, or whole
    /// pages for large objects. src/runtime/msize.go 1.19–1.21 and
    /// src/runtime/msize_noallocheaders.go 1.22 (GOEXPERIMENT=noallocheaders). In the
    /// 1.22 file the function takes `noscan` but ignores it.
    Plain,
    /// `roundupsize(size, noscan)`: an object with pointers that is over 512 bytes
    /// carries an 8-byte malloc header inside its size class, so the usable size is the
    /// class size minus 8. src/runtime/msize_allocheaders.go 1.22 (the default there)
    /// and src/runtime/msize.go 1.23–1.27.
    MallocHeaders,
}

/// Everything about growslice's capacity computation that varies by Go version.
/// Only `roundupsize` does in 1.19–1.27; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceGrowthRule {
    pub roundup: RoundupRule,
}

/// Result of one growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// The capacity, in elements, of the slice growslice returns.
    pub new_cap: u64,
    /// `new_cap * elem_size`: the bytes of the new backing array. In Go 1.21–1.27 this
    /// is the `capmem` passed to mallocgc. For element sizes other than 1 and 8, Go 1.19
    /// passes the size-class bytes instead (less than one element more).
    pub new_bytes: u64,
}

/// The rule for Go 1.`minor`, given the GOEXPERIMENT build setting recorded in the
/// binary's build info: a comma-separated list such as `noswissmap,noallocheaders`,
/// empty for a default build. None for versions whose sources were not checked:
/// 1.19 and 1.21–1.27 are. 1.19 stays supported because the rest of mapwatch
/// supports Go 1.19 (Debian's toolchain).
pub fn rule_for(minor: u32, goexperiment: &str) -> Option<SliceGrowthRule> {
    let roundup = match minor {
        // src/runtime/msize.go 1.19 and 1.21: `roundupsize(size uintptr)`.
        19 | 21 => RoundupRule::Plain,
        // src/runtime/msize_{allocheaders,noallocheaders}.go 1.22, chosen by the
        // `goexperiment.allocheaders` build tag. It is on by default
        // (src/internal/buildcfg/exp.go 1.22: `AllocHeaders: true`).
        22 if allocheaders_1_22(goexperiment) => RoundupRule::MallocHeaders,
        22 => RoundupRule::Plain,
        // src/runtime/msize.go 1.23–1.27. There is only the header path: 1.23 dropped
        // the experiment, so a 1.23+ binary cannot be built with noallocheaders.
        23..=27 => RoundupRule::MallocHeaders,
        _ => return None,
    };
    Some(SliceGrowthRule { roundup })
}

/// Whether a Go 1.22 binary built with `goexperiment` has malloc headers. This mirrors
/// `ParseGOEXPERIMENT` in src/internal/buildcfg/exp.go 1.22: entries apply in order,
/// a `no` prefix turns one off, and `none` turns every experiment off, baseline ones
/// included. The build info records the canonical form, which names only the settings
/// that differ from the baseline (`noallocheaders` when it is off).
fn allocheaders_1_22(goexperiment: &str) -> bool {
    let mut on = true;
    for entry in goexperiment.split(',').map(str::trim) {
        match entry {
            "allocheaders" => on = true,
            "noallocheaders" | "none" => on = false,
            _ => {}
        }
    }
    on
}

/// The capacity growslice returns for `growslice(oldPtr, newLen, oldCap, num, et)`,
/// with `elem_size` = `et.Size_` and `noscan` = `et.PtrBytes == 0`
/// (`!et.Pointers()` from 1.24). `old_cap` and `new_len` are the raw register values
/// of Go `int`s.
///
/// A growslice that would panic ("growslice: len out of range") allocates nothing:
/// for such arguments, which the compiler's own calls never produce unless the program
/// is about to crash, this returns zero capacity and zero bytes. Use
/// [`checked_grown_capacity`] to tell that case apart.
pub fn grown_capacity(
    rule: SliceGrowthRule,
    old_cap: u64,
    new_len: u64,
    elem_size: u64,
    noscan: bool,
) -> Growth {
    checked_grown_capacity(rule, old_cap, new_len, elem_size, noscan).unwrap_or(Growth {
        new_cap: 0,
        new_bytes: 0,
    })
}

/// [`grown_capacity`], or None where growslice panics (newLen < 0, or a new backing
/// array over `maxAlloc`).
pub fn checked_grown_capacity(
    rule: SliceGrowthRule,
    old_cap: u64,
    new_len: u64,
    elem_size: u64,
    noscan: bool,
) -> Option<Growth> {
    // Go's `int` arguments, reinterpreted as the registers hold them.
    let (old_cap, new_len) = (old_cap as i64, new_len as i64);
    // src/runtime/slice.go 1.20–1.27: `if newLen < 0 { panic(...) }`.
    if new_len < 0 {
        return None;
    }
    // "append should not create a slice with nil pointer but non-zero len": a
    // zero-size element type gets &zerobase with cap == newLen, before any overflow
    // check (slice.go 1.19–1.27).
    if elem_size == 0 {
        return Some(Growth {
            new_cap: new_len as u64,
            new_bytes: 0,
        });
    }
    let new_cap = next_slice_cap(new_len, old_cap) as u64;
    let roundup = |size| roundupsize(rule.roundup, size, noscan);
    // The size-specialised switch of growslice (slice.go 1.20–1.27; the same capacity
    // in 1.19). Go does this arithmetic in uintptr, which wraps. `overflow` and the
    // maxAlloc test below turn every wrapped case into a panic.
    let (new_cap, cap_mem, overflow) = match elem_size {
        1 => {
            let cap_mem = roundup(new_cap);
            (cap_mem, cap_mem, new_cap > MAX_ALLOC)
        }
        PTR_SIZE => {
            let cap_mem = roundup(new_cap.wrapping_mul(PTR_SIZE));
            (cap_mem / PTR_SIZE, cap_mem, new_cap > MAX_ALLOC / PTR_SIZE)
        }
        size if size.is_power_of_two() => {
            // `shift = uintptr(sys.TrailingZeros64(uint64(et.Size_))) & 63`.
            let shift = size.trailing_zeros() & 63;
            let rounded = roundup(new_cap << shift);
            let new_cap_rounded = rounded >> shift;
            (
                new_cap_rounded,
                new_cap_rounded << shift,
                new_cap > (MAX_ALLOC >> shift),
            )
        }
        size => {
            // `capmem, overflow = math.MulUintptr(et.Size_, uintptr(newcap))`
            // (src/internal/runtime/math/math.go; runtime/internal/math before 1.23).
            let (cap_mem, overflow) = size.overflowing_mul(new_cap);
            let new_cap_rounded = roundup(cap_mem) / size;
            (
                new_cap_rounded,
                new_cap_rounded.wrapping_mul(size),
                overflow,
            )
        }
    };
    // `if overflow || capmem > maxAlloc { panic(errorString("growslice: len out of range")) }`
    if overflow || cap_mem > MAX_ALLOC {
        return None;
    }
    Some(Growth {
        new_cap,
        new_bytes: cap_mem,
    })
}

/// `nextslicecap(newLen, oldCap int) int`, src/runtime/slice.go 1.22–1.27 (inline in
/// growslice in 1.19–1.21, with the same result wherever growslice does not panic).
/// Go's int arithmetic wraps, hence the wrapping operations.
fn next_slice_cap(new_len: i64, old_cap: i64) -> i64 {
    let mut new_cap = old_cap;
    let double_cap = new_cap.wrapping_add(new_cap);
    if new_len > double_cap {
        return new_len;
    }
    if old_cap < DOUBLING_THRESHOLD {
        return double_cap;
    }
    loop {
        // "Transition from growing 2x for small slices to growing 1.25x for large
        // slices." `>>` on i64 is arithmetic, like Go's on int.
        new_cap = new_cap.wrapping_add(new_cap.wrapping_add(3 * DOUBLING_THRESHOLD) >> 2);
        // newLen > 0 here, so an overflowed (negative) newcap is a huge uint and also
        // ends the loop.
        if new_cap as u64 >= new_len as u64 {
            break;
        }
    }
    // "Set newcap to the requested cap when the newcap calculation overflowed."
    if new_cap <= 0 {
        return new_len;
    }
    new_cap
}

/// `roundupsize`: the bytes mallocgc really hands out for a `size`-byte request.
fn roundupsize(rule: RoundupRule, size: u64, noscan: bool) -> u64 {
    match rule {
        // src/runtime/msize.go 1.19–1.21, msize_noallocheaders.go 1.22.
        RoundupRule::Plain => {
            if size < MAX_SMALL_SIZE {
                return small_size_class(size);
            }
            // `if size+_PageSize < size { return size }; return alignUp(size, _PageSize)`
            if size.wrapping_add(PAGE_SIZE) < size {
                return size;
            }
            (size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
        }
        // src/runtime/msize_allocheaders.go 1.22, msize.go 1.23–1.27.
        RoundupRule::MallocHeaders => {
            let mut req_size = size;
            if req_size <= MAX_SMALL_SIZE - MALLOC_HEADER_SIZE {
                // Small object. `!noscan && !heapBitsInSpan(reqSize)`: the header lives
                // inside the object's size class.
                if !noscan && req_size > MIN_SIZE_FOR_MALLOC_HEADER {
                    req_size += MALLOC_HEADER_SIZE;
                }
                // "(reqSize - size) is either mallocHeaderSize or 0. We need to subtract
                // mallocHeaderSize from the result if we have one, since mallocgc will
                // add it back in."
                return small_size_class(req_size) - (req_size - size);
            }
            // "Large object. Align reqSize up to the next page. Check for overflow."
            req_size = req_size.wrapping_add(PAGE_SIZE - 1);
            if req_size < size {
                return size;
            }
            req_size & !(PAGE_SIZE - 1)
        }
    }
}

/// The size-class lookup both `roundupsize` variants share, for `size` below
/// `_MaxSmallSize`: 8-byte granularity up to 1016 bytes, 128-byte granularity above.
fn small_size_class(size: u64) -> u64 {
    let class = if size <= SMALL_SIZE_MAX - 8 {
        SIZE_TO_CLASS8[div_round_up(size, SMALL_SIZE_DIV) as usize]
    } else {
        // For 1017..=1023, `size-smallSizeMax` wraps below zero and `divRoundUp`'s
        // `+ a - 1` wraps back: index 0, class 1024. Go relies on uintptr wrapping here.
        SIZE_TO_CLASS128[div_round_up(size.wrapping_sub(SMALL_SIZE_MAX), LARGE_SIZE_DIV) as usize]
    };
    u64::from(CLASS_TO_SIZE[usize::from(class)])
}

/// `divRoundUp`, src/runtime/stubs.go, in wrapping uintptr arithmetic.
fn div_round_up(n: u64, a: u64) -> u64 {
    n.wrapping_add(a - 1) / a
}

/// `threshold` in nextslicecap (slice.go): below 256 elements the capacity doubles.
const DOUBLING_THRESHOLD: i64 = 256;
/// `goarch.PtrSize` on amd64; growslice has a branch for this element size.
const PTR_SIZE: u64 = 8;
/// `maxAlloc` = 1 << heapAddrBits, with heapAddrBits = 48 on linux/amd64
/// (src/runtime/malloc.go 1.19–1.27).
const MAX_ALLOC: u64 = 1 << 48;
/// `mallocHeaderSize` (src/runtime/mbitmap_allocheaders.go 1.22, mbitmap.go
/// 1.23–1.24, `gc.MallocHeaderSize` in src/internal/runtime/gc/malloc.go 1.25–1.27).
const MALLOC_HEADER_SIZE: u64 = 8;
/// `minSizeForMallocHeader` = goarch.PtrSize * ptrBits = 8 * 64 (same files as
/// [`MALLOC_HEADER_SIZE`]): smaller objects keep their pointer bitmap in the span.
const MIN_SIZE_FOR_MALLOC_HEADER: u64 = 512;

// Constants of src/runtime/sizeclasses.go (1.19–1.24; `_MaxSmallSize`, `smallSizeDiv`,
// `smallSizeMax`, `largeSizeDiv`, `_PageShift`) and src/internal/runtime/gc/
// sizeclasses.go (1.25–1.27; `MaxSmallSize`, `SmallSizeDiv`, `SmallSizeMax`,
// `LargeSizeDiv`, `PageShift`). The same values in every version.
const MAX_SMALL_SIZE: u64 = 32768;
const SMALL_SIZE_DIV: u64 = 8;
const SMALL_SIZE_MAX: u64 = 1024;
const LARGE_SIZE_DIV: u64 = 128;
/// `_PageSize` = 1 << `_PageShift` (13).
const PAGE_SIZE: u64 = 1 << 13;

// The three tables below are copied from src/runtime/sizeclasses.go (generated by
// mksizeclasses.go). They are identical, element for element, in go1.19.8, 1.21.13,
// 1.22.10, 1.23.9 and 1.24.11 (src/runtime/sizeclasses.go) and in 1.25.5, 1.26.6 and
// 1.27.3 (src/internal/runtime/gc/sizeclasses.go, renamed `SizeClassToSize`,
// `SizeToSizeClass8`, `SizeToSizeClass128`).

/// `class_to_size` / `gc.SizeClassToSize`: bytes per object of each of the 68 classes.
const CLASS_TO_SIZE: [u16; 68] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];

/// `size_to_class8` / `gc.SizeToSizeClass8`: `[smallSizeMax/smallSizeDiv + 1]`,
/// indexed by ⌈size/8⌉.
const SIZE_TO_CLASS8: [u8; 129] = [
    0, 1, 2, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15,
    16, 16, 17, 17, 18, 18, 19, 19, 19, 19, 20, 20, 20, 20, 21, 21, 21, 21, 22, 22, 22, 22, 23, 23,
    23, 23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 27, 27, 27, 27, 27, 27, 27, 27, 28, 28,
    28, 28, 28, 28, 28, 28, 29, 29, 29, 29, 29, 29, 29, 29, 30, 30, 30, 30, 30, 30, 30, 30, 31, 31,
    31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32,
    32, 32, 32, 32, 32, 32,
];

/// `size_to_class128` / `gc.SizeToSizeClass128`:
/// `[(_MaxSmallSize-smallSizeMax)/largeSizeDiv + 1]`, indexed by ⌈(size-1024)/128⌉.
const SIZE_TO_CLASS128: [u8; 249] = [
    32, 33, 34, 35, 36, 37, 37, 38, 38, 39, 39, 40, 40, 40, 41, 41, 41, 42, 43, 43, 44, 44, 44, 44,
    44, 45, 45, 45, 45, 45, 45, 46, 46, 46, 46, 47, 47, 47, 47, 47, 47, 48, 48, 48, 49, 49, 50, 51,
    51, 51, 51, 51, 51, 51, 51, 51, 51, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 53, 53, 54, 54, 54,
    54, 55, 55, 55, 55, 55, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 57, 57, 57, 57, 57, 57, 57,
    57, 57, 57, 58, 58, 58, 58, 58, 58, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59,
    59, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 61, 61, 61, 61, 61, 62, 62,
    62, 62, 62, 62, 62, 62, 62, 62, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 65, 65, 65, 65, 65, 65, 65,
    65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 66, 66, 66, 66, 66, 66, 66, 66, 66, 66,
    66, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67,
    67, 67, 67, 67, 67, 67, 67, 67, 67,
];

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS: SliceGrowthRule = SliceGrowthRule {
        roundup: RoundupRule::MallocHeaders,
    };
    const PLAIN: SliceGrowthRule = SliceGrowthRule {
        roundup: RoundupRule::Plain,
    };

    /// Appends one element at a time to an empty slice; returns each new capacity.
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
    fn int_slices_grow_as_observed() {
        // docs/go-runtime.md, "Slice growth": observed []int capacities, the same on 1.21–1.27. Small
        // pointer-free objects never carry a header, so both rules agree.
        let expected = [
            1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 848, 1280, 1792, 2560, 3408,
        ];
        for rule in [PLAIN, HEADERS] {
            assert_eq!(caps(rule, 8, true, 3408), expected);
        }
    }

    #[test]
    fn twenty_four_byte_elements_round_to_size_classes() {
        // docs/go-runtime.md, "Slice growth": "24-byte element: … 512 853 1365". 512 + (512+768)/4 = 832
        // elements = 19968 B → class 20480 → 853; 853 + 405 = 1258 → 30192 B → 32768
        // → 1365.
        let expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 853, 1365];
        for rule in [PLAIN, HEADERS] {
            assert_eq!(caps(rule, 24, true, 1365), expected);
        }
    }

    #[test]
    fn malloc_headers_shift_pointerful_objects_only() {
        // 100 pointers (800 B) + 1 → 200 elements = 1600 B. With pointers and headers
        // that needs 1608 B → class 1792, minus the header = 1784 B = 223 pointers;
        // without pointers or without headers, 1792 B = 224.
        assert_eq!(grown_capacity(HEADERS, 100, 101, 8, false).new_cap, 223);
        assert_eq!(grown_capacity(HEADERS, 100, 101, 8, true).new_cap, 224);
        assert_eq!(grown_capacity(PLAIN, 100, 101, 8, false).new_cap, 224);
        // Exactly 512 B is still below the header threshold (`reqSize > 512`).
        assert_eq!(grown_capacity(HEADERS, 32, 33, 8, false).new_cap, 64);
        // 520 B of pointers → 528 with the header → class 576 → 568 B = 71 pointers.
        assert_eq!(grown_capacity(HEADERS, 0, 65, 8, false).new_cap, 71);
        assert_eq!(grown_capacity(PLAIN, 0, 65, 8, false).new_cap, 72);
    }

    #[test]
    fn zero_size_elements_get_exactly_the_new_length() {
        for rule in [PLAIN, HEADERS] {
            for (old_cap, new_len) in [(0, 1), (5, 6), (0, 1 << 40), (1000, 1001)] {
                assert_eq!(
                    grown_capacity(rule, old_cap, new_len, 0, true),
                    Growth {
                        new_cap: new_len,
                        new_bytes: 0
                    }
                );
            }
        }
    }

    #[test]
    fn large_objects_round_to_whole_pages() {
        for rule in [PLAIN, HEADERS] {
            // 40000 B: 5 pages.
            assert_eq!(
                grown_capacity(rule, 0, 40000, 1, true),
                Growth {
                    new_cap: 40960,
                    new_bytes: 40960
                }
            );
            // 4096 ints (32 KiB) + 1: 4096 + (4096+768)/4 = 5312 elements = 42496 B
            // → 6 pages = 49152 B = 6144 ints.
            assert_eq!(grown_capacity(rule, 4096, 4097, 8, true).new_cap, 6144);
            // 100-byte elements, 1000 → 1442 elements = 144200 B → 18 pages = 147456 B
            // = 1474.56 → 1474 elements (the remainder is unused).
            assert_eq!(
                grown_capacity(rule, 1000, 1001, 100, true),
                Growth {
                    new_cap: 1474,
                    new_bytes: 147400
                }
            );
        }
        // Large objects never carry the malloc header: the same for scan objects.
        assert_eq!(grown_capacity(HEADERS, 4096, 4097, 8, false).new_cap, 6144);
        // The last small size for scan objects is 32760 B (+8 header = 32768);
        // 32768 B of pointers is a large object: 4 pages.
        assert_eq!(grown_capacity(HEADERS, 0, 4095, 8, false).new_cap, 4095);
        assert_eq!(grown_capacity(HEADERS, 0, 4096, 8, false).new_cap, 4096);
        assert_eq!(grown_capacity(HEADERS, 0, 4097, 8, false).new_cap, 5120);
    }

    #[test]
    fn appending_more_than_double_takes_the_new_length() {
        // newLen > 2*oldCap: newcap = newLen, then rounded up: 21 ints = 168 B → 176.
        assert_eq!(grown_capacity(HEADERS, 10, 21, 8, true).new_cap, 22);
        // 3-byte elements from cap 100: one more doubles to 200 (600 B → class 640 →
        // 213); 201 more gives newLen 301 > 200, so 301 (903 B → class 1024 → 341).
        assert_eq!(grown_capacity(HEADERS, 100, 101, 3, true).new_cap, 213);
        assert_eq!(grown_capacity(HEADERS, 100, 301, 3, true).new_cap, 341);
    }

    #[test]
    fn growslice_panics_allocate_nothing() {
        let zero = Growth {
            new_cap: 0,
            new_bytes: 0,
        };
        for rule in [PLAIN, HEADERS] {
            // newLen < 0 (an overflowed len+num).
            assert_eq!(checked_grown_capacity(rule, 4, -1i64 as u64, 8, true), None);
            assert_eq!(grown_capacity(rule, 4, -1i64 as u64, 8, true), zero);
            assert_eq!(checked_grown_capacity(rule, 4, -1i64 as u64, 0, true), None);
            // Above maxAlloc (1<<48 B), in each branch of growslice's switch.
            for elem_size in [1, 8, 16, 24] {
                let new_len = (1u64 << 48) / elem_size + 1;
                assert_eq!(
                    checked_grown_capacity(rule, 0, new_len, elem_size, true),
                    None,
                    "{elem_size}"
                );
            }
            // int overflow in nextslicecap falls back to newLen, which is then too big.
            assert_eq!(
                checked_grown_capacity(rule, (1 << 62) - 1, (1 << 63) - 3, 1, true),
                None
            );
            // uintptr overflow of newcap*size (math.MulUintptr).
            assert_eq!(checked_grown_capacity(rule, 0, 1 << 62, 24, true), None);
        }
        // Just below maxAlloc: allowed.
        assert_eq!(
            checked_grown_capacity(HEADERS, 0, 1 << 48, 1, true),
            Some(Growth {
                new_cap: 1 << 48,
                new_bytes: 1 << 48
            })
        );
    }

    #[test]
    fn next_slice_cap_falls_back_to_new_len_on_int_overflow() {
        // 2^62-1 grows by 1.25x per step: 5·2^60, 6.25·2^60, 7.8·2^60, then past 2^63
        // (negative) before reaching newLen.
        let new_len = i64::MAX - 2;
        assert_eq!(next_slice_cap(new_len, (1 << 62) - 1), new_len);
        // The same overflow in doublecap.
        assert_eq!(next_slice_cap(1 << 62, 1 << 62), 1 << 62);
        assert_eq!(next_slice_cap(300, 256), 256 + (256 + 768) / 4);
    }

    #[test]
    fn size_class_tables_agree_with_class_sizes() {
        // A check of the transcription: the two-level lookup must give the smallest
        // class holding `size`, for every small size.
        for size in 1..MAX_SMALL_SIZE {
            let smallest = CLASS_TO_SIZE
                .iter()
                .map(|&c| u64::from(c))
                .find(|&c| c >= size)
                .unwrap();
            assert_eq!(small_size_class(size), smallest, "size {size}");
        }
        assert_eq!(small_size_class(0), 0);
        assert!(CLASS_TO_SIZE.windows(2).all(|w| w[0] < w[1]));
        assert!(CLASS_TO_SIZE.iter().all(|&c| c % 8 == 0));
    }

    #[test]
    fn results_are_consistent_over_a_grid() {
        for rule in [PLAIN, HEADERS] {
            for elem_size in [1, 2, 3, 8, 12, 16, 24, 48, 100, 256, 1000] {
                for noscan in [true, false] {
                    for old_cap in (0..700).chain((700..40000).step_by(97)) {
                        for num in [1, 2, 5, old_cap + 1, 2 * old_cap + 3] {
                            let new_len = old_cap + num;
                            let g = grown_capacity(rule, old_cap, new_len, elem_size, noscan);
                            assert!(g.new_cap >= new_len, "{g:?} {old_cap} {new_len}");
                            assert_eq!(g.new_bytes, g.new_cap * elem_size);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn version_rules() {
        assert_eq!(rule_for(19, ""), Some(PLAIN));
        assert_eq!(rule_for(20, ""), None);
        assert_eq!(rule_for(21, ""), Some(PLAIN));
        assert_eq!(rule_for(22, ""), Some(HEADERS));
        assert_eq!(rule_for(22, "noallocheaders"), Some(PLAIN));
        assert_eq!(rule_for(22, "noswissmap,noallocheaders"), Some(PLAIN));
        assert_eq!(rule_for(22, "noallocheaders,allocheaders"), Some(HEADERS));
        assert_eq!(rule_for(22, "none"), Some(PLAIN));
        assert_eq!(rule_for(22, "rangefunc"), Some(HEADERS));
        // 1.23 has no such experiment (the toolchain refuses it): headers regardless.
        assert_eq!(rule_for(23, "noallocheaders"), Some(HEADERS));
        assert_eq!(rule_for(24, "noswissmap"), Some(HEADERS));
        for minor in 23..=27 {
            assert_eq!(rule_for(minor, ""), Some(HEADERS), "1.{minor}");
        }
        assert_eq!(rule_for(18, ""), None);
        assert_eq!(rule_for(28, ""), None);
    }
}
