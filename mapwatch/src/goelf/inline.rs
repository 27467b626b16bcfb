//! Inlined frames: the functions whose bodies the compiler inlined at a PC, innermost
//! first, walked as the runtime's `inlineUnwinder` walks them (src/runtime/symtabinl.go,
//! Go 1.21+; in Go 1.19 the same loop is written out in src/runtime/traceback.go
//! `gentraceback` and symtab.go `runtime_expandFinalInlineFrame`). Without this, an
//! append inlined into its caller is named after the caller while its file:line
//! (pcfile/pcln give the innermost position) is the callee's.
//!
//! ```text
//! _func        fixed fields (FUNC_SIZE_118 / _120 bytes, nfuncdata its last byte)
//!              pcdata   [npcdata]u32    offsets into pctab (0: no table)
//!              funcdata [nfuncdata]u32  offsets from moduledata.gofunc (^0: none)
//! pcdata[PCDATA_InlTreeIndex]   pc → index of the innermost inlined call, -1 outside
//! funcdata[FUNCDATA_InlTree]    the function's inlinedCall array
//! ```
//!
//! Each inlinedCall names the inlined function (a funcnametab offset) and a parentPc:
//! the offset from the function's entry of an instruction whose position is the call
//! site. That instruction's own index gives the next frame out, until -1: the physical
//! function (runtime `inlineUnwinder.next`; src/runtime/symtab.go `funcdata`,
//! `pcdatavalue1`, `pcdatastart`).
use super::pclntab::{
    FUNC_NPCDATA, FUNC_SIZE_118, FUNC_SIZE_120, PclnFunction, Pclntab, PclntabError, SourceLine,
    u32_at,
};

/// src/internal/abi/symtab.go (Go 1.21–1.27) `PCDATA_InlTreeIndex`, `FUNCDATA_InlTree`;
/// the same values as `_PCDATA_InlTreeIndex`, `_FUNCDATA_InlTree` in src/runtime/symtab.go
/// of Go 1.19.
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;

/// Frames returned at most. Real chains are a handful deep (the inliner's budget
/// bounds them); a corrupt table whose parentPc leads back into the same call would
/// otherwise loop forever.
pub const MAX_INLINE_DEPTH: usize = 64;

/// Where an `inlinedCall` keeps the fields read here.
struct InlinedCallLayout {
    size: usize,
    name_off: usize,
    parent_pc: usize,
}

/// Go 1.18–1.19 (magic 0xfffffff0), src/runtime/symtab.go of Go 1.19 `inlinedCall`:
/// parent int16, funcID u8, pad, file i32, line i32, func_ i32, parentPc i32.
const INLINED_CALL_118: InlinedCallLayout = InlinedCallLayout {
    size: 20,
    name_off: 12,
    parent_pc: 16,
};

/// Go 1.20+ (magic 0xfffffff1), src/runtime/symtabinl.go `inlinedCall`: funcID u8, 3
/// pad bytes, nameOff i32, parentPc i32, startLine i32; the linker's genInlTreeSym
/// (src/cmd/link/internal/ld/pcln.go) writes it as 16 bytes.
const INLINED_CALL_120: InlinedCallLayout = InlinedCallLayout {
    size: 16,
    name_off: 4,
    parent_pc: 8,
};

/// A function's inline tree, as far as it was located.
struct InlineTree<'g> {
    /// Offset of its PCDATA_InlTreeIndex table in pctab.
    index_table: u32,
    /// gofunc from the function's inlinedCall array on (the array's length is written
    /// nowhere: the index table's values bound it); None when gofunc is unknown.
    calls: Option<&'g [u8]>,
}

impl<'a> Pclntab<'a> {
    /// The frames at `pc`, innermost first: the inlined functions whose code `pc` is
    /// in, then the physical function. The innermost frame has `pc`'s own file:line;
    /// each outer one the position of its call to the frame before it. One frame where
    /// nothing is inlined; none when `pc` is in no function or has no line (as
    /// [`Self::source_line`]). At most [`MAX_INLINE_DEPTH`] frames.
    ///
    /// `gofunc` is the binary's `go:func.*` data, from its start (moduledata.gofunc)
    /// to at least the end of the inline trees. Without it, only PCs outside inlined
    /// code can be answered: others are [`PclntabError::NoInlineTrees`].
    pub fn frames(
        &self,
        pc: u64,
        gofunc: Option<&[u8]>,
    ) -> Result<Vec<SourceLine<'a>>, PclntabError> {
        let Some(index) = self.index_at(pc)? else {
            return Ok(Vec::new());
        };
        let function = self.function(index)?;
        if !(function.entry <= pc && pc < function.end) {
            return Ok(Vec::new());
        }
        let record = self.record(index)?;
        let tree = self.inline_tree(&function, record, gofunc)?;
        let error = |reason: String| PclntabError::InlineTree {
            function: function.name.to_string(),
            reason,
        };
        let layout = if self.go_1_18_layout() {
            &INLINED_CALL_118
        } else {
            &INLINED_CALL_120
        };
        let mut frames = Vec::new();
        let mut at = pc;
        loop {
            let Some((file, line)) = self.position(&function, record, at)? else {
                if frames.is_empty() {
                    return Ok(frames);
                }
                return Err(error(format!("the call site at {at:#x} has no line")));
            };
            let inlined = match &tree {
                Some(tree) => {
                    let call =
                        self.pc_value(&function, "inline tree index", tree.index_table, at)?;
                    usize::try_from(call).ok().map(|call| (call, tree))
                }
                None => None,
            };
            let Some((call, tree)) = inlined else {
                frames.push(SourceLine {
                    function: function.name,
                    file,
                    line,
                });
                return Ok(frames);
            };
            // The physical function needs the last slot.
            if frames.len() + 1 >= MAX_INLINE_DEPTH {
                return Err(error(format!(
                    "more than {MAX_INLINE_DEPTH} frames at {pc:#x}: its parent PCs loop"
                )));
            }
            let calls = tree.calls.ok_or_else(|| PclntabError::NoInlineTrees {
                function: function.name.to_string(),
            })?;
            let field = |offset: usize| {
                call.checked_mul(layout.size)
                    .and_then(|at| at.checked_add(offset))
                    .and_then(|at| u32_at(calls, at))
                    .map(|value| value as i32)
                    .ok_or_else(|| {
                        error(format!(
                            "inlined call {call} lies past the end of go:func.*"
                        ))
                    })
            };
            let (name_off, parent_pc) = (field(layout.name_off)?, field(layout.parent_pc)?);
            let name = usize::try_from(name_off)
                .ok()
                .and_then(|at| self.name_at(at))
                .ok_or_else(|| {
                    error(format!(
                        "inlined call {call} has name offset {name_off}, outside the name table"
                    ))
                })?
                .map_err(|()| error(format!("the name of inlined call {call} is not UTF-8")))?;
            frames.push(SourceLine {
                function: name,
                file,
                line,
            });
            at = u64::try_from(parent_pc)
                .ok()
                .and_then(|offset| function.entry.checked_add(offset))
                .filter(|&parent| parent < function.end)
                .ok_or_else(|| {
                    error(format!(
                        "inlined call {call} has parent PC offset {parent_pc}, outside the function"
                    ))
                })?;
        }
    }

    /// The inline tree of `function`, whose `_func` record is at `record`; None when it
    /// has none (runtime `newInlineUnwinder`: no FUNCDATA_InlTree, one frame).
    fn inline_tree<'g>(
        &self,
        function: &PclnFunction<'_>,
        record: usize,
        gofunc: Option<&'g [u8]>,
    ) -> Result<Option<InlineTree<'g>>, PclntabError> {
        let error = |reason: String| PclntabError::InlineTree {
            function: function.name.to_string(),
            reason,
        };
        let truncated = || error("its pcdata and funcdata lie past the end of the table".into());
        let fixed = if self.go_1_18_layout() {
            FUNC_SIZE_118
        } else {
            FUNC_SIZE_120
        };
        let bytes = self.record_bytes(record);
        let npcdata = self.field(record, FUNC_NPCDATA) as usize;
        let nfuncdata = usize::from(*bytes.get(fixed - 1).ok_or_else(truncated)?);
        // pcdatavalue1 and funcdata: an index past the arrays means no table.
        if npcdata <= PCDATA_INL_TREE_INDEX || nfuncdata <= FUNCDATA_INL_TREE {
            return Ok(None);
        }
        let index_table = u32_at(bytes, fixed + 4 * PCDATA_INL_TREE_INDEX).ok_or_else(truncated)?;
        let tree_offset = npcdata
            .checked_add(FUNCDATA_INL_TREE)
            .and_then(|words| words.checked_mul(4))
            .and_then(|at| at.checked_add(fixed))
            .and_then(|at| u32_at(bytes, at))
            .ok_or_else(truncated)?;
        // ^0: no inline tree (runtime/symtab.go `funcdata`); a pctab offset of 0: no
        // index table (`pcvalue` answers -1).
        if tree_offset == u32::MAX || index_table == 0 {
            return Ok(None);
        }
        let calls = match gofunc {
            Some(gofunc) => Some(gofunc.get(tree_offset as usize..).ok_or_else(|| {
                error(format!(
                    "its inline tree at go:func.*+{tree_offset:#x} lies past the end of the data"
                ))
            })?),
            None => None,
        };
        Ok(Some(InlineTree { index_table, calls }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goelf::{
        pclntab::{GO_118_MAGIC, GO_120_MAGIC, PCLN_WORD},
        pclntab_testing::{Built, Func, build, sample},
    };

    fn names(frames: &[SourceLine<'_>]) -> Vec<(String, String, u32)> {
        frames
            .iter()
            .map(|f| (f.function.to_string(), f.file.to_string(), f.line))
            .collect()
    }

    fn frame(function: &str, file: &str, line: u32) -> (String, String, u32) {
        (function.to_string(), file.to_string(), line)
    }

    #[test]
    fn inlined_calls_are_named_innermost_first_in_both_layouts() {
        for magic in [GO_118_MAGIC, GO_120_MAGIC] {
            let Built { table, gofunc } = sample(magic, 0x401000);
            let table = Pclntab::parse(&table, 0).unwrap();
            let frames = |pc| names(&table.frames(pc, Some(&gofunc)).unwrap());
            assert_eq!(frames(0x401010), [frame("main.a", "/src/a.go", 10)]);
            // No line in the padding after main.a, nothing past the table.
            assert_eq!(frames(0x40101c), []);
            assert_eq!(frames(0x401040), []);
            assert_eq!(frames(0x401027), [frame("main.b", "/src/b.go", 1000)]);
            assert_eq!(
                frames(0x401028),
                [
                    frame("main.inl", "/src/a.go", 7),
                    frame("main.b", "/src/b.go", 1000)
                ]
            );
            assert_eq!(frames(0x401030), [frame("main.c", "/src/a.go", 20)]);
            assert_eq!(
                frames(0x401037),
                [
                    frame("main.mid", "/src/a.go", 30),
                    frame("main.c", "/src/a.go", 20)
                ]
            );
            assert_eq!(
                frames(0x40103f),
                [
                    frame("main.leaf", "/src/a.go", 40),
                    frame("main.mid", "/src/a.go", 30),
                    frame("main.c", "/src/a.go", 20)
                ]
            );
        }
    }

    #[test]
    fn without_go_func_only_code_outside_inlined_calls_is_answered() {
        let Built { table, .. } = sample(GO_120_MAGIC, 0x401000);
        let table = Pclntab::parse(&table, 0).unwrap();
        assert_eq!(table.frames(0x401020, None).unwrap().len(), 1);
        assert_eq!(
            table.frames(0x401028, None).err().unwrap().to_string(),
            "main.b has inlined calls there, but the binary's inline trees (go:func.*) were \
             not found"
        );
    }

    #[test]
    fn a_missing_inline_tree_means_one_frame() {
        let Built {
            table: mut data,
            gofunc,
        } = sample(GO_120_MAGIC, 0x401000);
        let table = Pclntab::parse(&data, 0).unwrap();
        let record = table.record(1).unwrap();
        let functab = u64::from_le_bytes(data[8 + PCLN_WORD * 8..][..8].try_into().unwrap());
        // funcdata[FUNCDATA_InlTree], after the 3 pcdata offsets.
        let at = functab as usize + record + FUNC_SIZE_120 + 4 * 3 + 4 * FUNCDATA_INL_TREE;
        data[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let table = Pclntab::parse(&data, 0).unwrap();
        assert_eq!(
            names(&table.frames(0x401028, Some(&gofunc)).unwrap()),
            [frame("main.b", "/src/a.go", 7)]
        );
    }

    /// A parentPc leading back into the same inlined call: an error, not a hang.
    #[test]
    fn a_parent_pc_cycle_is_an_error() {
        let funcs = [Func {
            inline_index: vec![(-1, 4), (0, 12)],
            inlined: vec![("main.loop", 4)],
            ..Func::plain("main.f", 0, vec![(0, 16)], vec![(1, 16)])
        }];
        let Built { table, gofunc } = build(GO_120_MAGIC, 0x1000, &funcs, 0x10);
        let table = Pclntab::parse(&table, 0).unwrap();
        assert_eq!(
            table
                .frames(0x1008, Some(&gofunc))
                .err()
                .unwrap()
                .to_string(),
            "pclntab corrupt in the inline tree of main.f: more than 64 frames at 0x1008: its \
             parent PCs loop"
        );
        // Outside the inlined call, the function alone.
        assert_eq!(table.frames(0x1000, Some(&gofunc)).unwrap().len(), 1);
    }

    #[test]
    fn corrupt_inline_trees_say_what_is_wrong() {
        let funcs = [Func {
            inline_index: vec![(-1, 4), (0, 4), (1, 8)],
            inlined: vec![("main.g", 0x40), ("main.h", 0)],
            ..Func::plain("main.f", 0, vec![(0, 16)], vec![(1, 16)])
        }];
        let Built { table, mut gofunc } = build(GO_120_MAGIC, 0x1000, &funcs, 0x10);
        let table = Pclntab::parse(&table, 0).unwrap();
        let message = |pc, gofunc: &[u8]| table.frames(pc, Some(gofunc)).err().unwrap().to_string();
        assert_eq!(
            message(0x1004, &gofunc),
            "pclntab corrupt in the inline tree of main.f: inlined call 0 has parent PC offset \
             64, outside the function"
        );
        assert_eq!(
            message(0x100c, &gofunc[..gofunc.len() - 8]),
            "pclntab corrupt in the inline tree of main.f: inlined call 1 lies past the end of \
             go:func.*"
        );
        assert_eq!(
            message(0x100c, &gofunc[..4]),
            "pclntab corrupt in the inline tree of main.f: its inline tree at go:func.*+0x8 \
             lies past the end of the data"
        );
        // Call 1's nameOff (its second word) negative.
        let at = gofunc.len() - 12;
        gofunc[at..at + 4].copy_from_slice(&(-2i32).to_le_bytes());
        assert_eq!(
            message(0x100c, &gofunc),
            "pclntab corrupt in the inline tree of main.f: inlined call 1 has name offset \
             -2, outside the name table"
        );
    }
}
