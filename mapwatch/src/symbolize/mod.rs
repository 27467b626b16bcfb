//! Run-time addresses → names, per profiled binary: element type pointers → Go type
//! names, caller PCs → function, file:line (inlined calls expanded). Caches what it
//! resolved; bounded by the caller's cardinality caps.
use std::{collections::HashSet, sync::Arc};

use foldhash::{HashMap, HashMapExt as _};

use crate::{
    goelf::{GoBinary, types::TypeLayout},
    goruntime::offsets::{Field, StructOffsets},
};

/// A call site, as `site_grow_total` labels it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallSite {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// What growth needs of an element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElemLayout {
    pub size: u64,
    /// 0: the type holds no pointers (noscan).
    pub ptr_bytes: u64,
}

/// One process's symbolizer: processes of one binary share the parsed binary, but each
/// has its own load bias (PIE binaries are mapped at a different address in each).
pub struct Symbolizer {
    binary: Arc<GoBinary>,
    /// Run-time address − link-time address (non-zero for PIE).
    bias: u64,
    types: Option<(u64, TypeLayout)>,
    type_names: HashMap<u64, String>,
    /// `abi.Type.Size_` and `.PtrBytes` offsets.
    size_fields: Option<(u32, u32)>,
    elem_layouts: HashMap<u64, Option<ElemLayout>>,
    /// Link-time address of go:func.*, where the inline trees are.
    gofunc: Option<u64>,
    /// Return PC → frames, innermost first (empty: unknown).
    sites: HashMap<u64, Vec<CallSite>>,
}

/// Bound on cached addresses: beyond it, lookups are still answered but not cached.
const CACHE_LIMIT: usize = 65536;

impl Symbolizer {
    /// `bias` from the process's /proc/PID/maps (see `GoBinary::load_bias`).
    pub fn new(binary: Arc<GoBinary>, bias: u64, offsets: Option<&StructOffsets>) -> Symbolizer {
        let types = offsets.and_then(|o| {
            let layout = TypeLayout {
                tflag: o.get(Field::TypeTFlag)?,
                str: o.get(Field::TypeStr)?,
            };
            Some((binary.types_base(o.get(Field::ModuledataTypes))?, layout))
        });
        let size_fields =
            offsets.and_then(|o| Some((o.get(Field::TypeSize)?, o.get(Field::TypePtrBytes)?)));
        let gofunc = binary.gofunc_base(offsets.and_then(|o| o.get(Field::ModuledataGofunc)));
        Symbolizer {
            binary,
            bias,
            types,
            type_names: HashMap::new(),
            size_fields,
            elem_layouts: HashMap::new(),
            gofunc,
            sites: HashMap::new(),
        }
    }

    /// The Go name of the type descriptor at run-time address `address`, or "unknown".
    pub fn type_name(&mut self, address: u64) -> String {
        if let Some(name) = self.type_names.get(&address) {
            return name.clone();
        }
        let name = self
            .types
            .and_then(|(base, layout)| {
                self.binary
                    .type_name(base, address.wrapping_sub(self.bias), layout)
                    .ok()
            })
            .unwrap_or_else(|| "unknown".to_string());
        if self.type_names.len() < CACHE_LIMIT {
            self.type_names.insert(address, name.clone());
        }
        name
    }

    /// Size and pointer bytes of the type descriptor at run-time address `address`, read
    /// from the binary file rather than by the probe: type descriptors of a program's
    /// types are read-only data of its executable, so every growslice hit saves two
    /// user-memory reads in the kernel (BENCHMARKS.md: they were most of the probe's
    /// own cost). None for a type made at run time (reflect), which is not in the file.
    pub fn elem_layout(&mut self, address: u64) -> Option<ElemLayout> {
        if let Some(layout) = self.elem_layouts.get(&address) {
            return *layout;
        }
        let layout = self.size_fields.and_then(|(size, ptr_bytes)| {
            let vaddr = address.wrapping_sub(self.bias);
            let word = |offset: u32| -> Option<u64> {
                let bytes = self.binary.read(vaddr.checked_add(u64::from(offset))?, 8)?;
                Some(u64::from_le_bytes(bytes.try_into().ok()?))
            };
            Some(ElemLayout {
                size: word(size)?,
                ptr_bytes: word(ptr_bytes)?,
            })
        });
        if self.elem_layouts.len() < CACHE_LIMIT {
            self.elem_layouts.insert(address, layout);
        }
        layout
    }

    /// The call site whose CALL returns to run-time address `return_pc`: the innermost
    /// frame, so that an append inlined into its caller is named after the function
    /// it is written in, as its file:line are.
    pub fn call_site(&mut self, return_pc: u64) -> Option<CallSite> {
        if let Some(frames) = self.sites.get(&return_pc) {
            return frames.first().cloned();
        }
        let frames = self.resolve_frames(return_pc);
        let site = frames.first().cloned();
        if self.sites.len() < CACHE_LIMIT {
            self.sites.insert(return_pc, frames);
        }
        site
    }

    /// Every frame of that call, innermost first: the functions inlined there, then the
    /// physical function (pprof's `Line`s of one `Location`). Empty when unknown.
    pub fn call_frames(&mut self, return_pc: u64) -> Vec<CallSite> {
        if let Some(frames) = self.sites.get(&return_pc) {
            return frames.clone();
        }
        let frames = self.resolve_frames(return_pc);
        if self.sites.len() < CACHE_LIMIT {
            self.sites.insert(return_pc, frames.clone());
        }
        frames
    }

    fn resolve_frames(&self, return_pc: u64) -> Vec<CallSite> {
        let Ok(Some(table)) = self.binary.pclntab() else {
            return Vec::new();
        };
        // The return address is one past the CALL; its last byte is in the call's line.
        let pc = return_pc.wrapping_sub(self.bias).wrapping_sub(1);
        let gofunc = self.gofunc.and_then(|base| self.binary.gofunc(base));
        let frames = table.frames(pc, gofunc).unwrap_or_else(|_| {
            // No inline trees (go:func.* not found) or a corrupt one: still the
            // position, under the physical function's name, as the line tables say.
            table.source_line(pc).ok().flatten().into_iter().collect()
        });
        frames
            .into_iter()
            .map(|line| CallSite {
                function: line.function.to_string(),
                file: line.file.to_string(),
                line: line.line,
            })
            .collect()
    }
}

/// Sticky cardinality cap: the first `limit` distinct values keep their own label; later
/// ones become `other`. Sticky so a series, once exported, never stops counting (a
/// counter that moved to `other` would look like it went backwards).
#[derive(Debug, Default)]
pub struct LabelCap {
    limit: usize,
    admitted: HashSet<String>,
}

pub const OTHER: &str = "other";

impl LabelCap {
    pub fn new(limit: usize) -> LabelCap {
        LabelCap {
            limit,
            admitted: HashSet::new(),
        }
    }

    pub fn admit<'a>(&mut self, value: &'a str) -> &'a str {
        if self.admitted.contains(value) {
            return value;
        }
        if self.admitted.len() < self.limit {
            self.admitted.insert(value.to_string());
            return value;
        }
        OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_sticky_and_bounded() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.admit("c"), OTHER);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("c"), OTHER);
    }
}
