//! The Go function table (`.gopclntab`): function names and ranges in stripped binaries
//! (`-ldflags=-s -w` keep no .symtab), and PC → file:line for call sites.
//!
//! Layout from src/runtime/symtab.go (`pcHeader`, `_func`, `pcvalue`/`step`) and
//! src/debug/gosym/pclntab.go, for the Go 1.18 layout (magic 0xfffffff0, Go 1.18–1.19)
//! and the Go 1.20 layout (0xfffffff1, Go 1.20–1.27, unchanged in the fields read
//! here). Every read is bounds-checked: a corrupt table gives an error, never a panic.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PclntabError {
    #[error("pclntab has magic {0:#x}: a Go 1.17 or older binary (supported: Go 1.18+ layouts)")]
    TooOld(u32),
    #[error("pclntab has unknown magic {0:#x}")]
    BadMagic(u32),
    #[error("pclntab is for a {0}-byte pointer architecture; only 64-bit is supported")]
    PointerSize(u8),
    #[error("pclntab is truncated or corrupt: {0}")]
    Corrupt(&'static str),
}

/// Magic numbers, src/internal/abi/symtab.go (`Go118PCLnTabMagic`, `Go120PCLnTabMagic`)
/// and older ones from src/debug/gosym/pclntab.go.
const GO_118_MAGIC: u32 = 0xfffffff0;
const GO_120_MAGIC: u32 = 0xfffffff1;
const OLDER_MAGICS: [u32; 2] = [0xfffffffb, 0xfffffffa];

/// `pcHeader` field offsets (64-bit).
const NFUNC: usize = 8;
const TEXT_START: usize = 24;
const FUNCNAME_OFFSET: usize = 32;
const CU_OFFSET: usize = 40;
const FILETAB_OFFSET: usize = 48;
const PCTAB_OFFSET: usize = 56;
const PCLN_OFFSET: usize = 64;

/// `_func` field offsets (identical in the 1.18 and 1.20 layouts).
const FUNC_NAME_OFF: usize = 4;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_CU_OFFSET: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PclnFunction<'a> {
    pub name: &'a str,
    pub entry: u64,
    /// One past the last byte: the next function's entry (or the table's end).
    pub end: u64,
    /// Offset of the `_func` record in the function table.
    func_offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLine<'a> {
    pub function: &'a str,
    pub file: &'a str,
    pub line: u32,
}

pub struct Pclntab<'a> {
    data: &'a [u8],
    go_118: bool,
    nfunc: usize,
    text_start: u64,
    funcnames: &'a [u8],
    cutab: &'a [u8],
    filetab: &'a [u8],
    pctab: &'a [u8],
    /// `pclntab` proper: the functab, then the `_func` records it points into.
    functab: &'a [u8],
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn usize_at(data: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64_at(data, at)?).ok()
}

/// A NUL-terminated string at `at`.
fn c_string(data: &[u8], at: usize) -> Option<&str> {
    let bytes = data.get(at..)?;
    let len = bytes.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&bytes[..len]).ok()
}

impl<'a> Pclntab<'a> {
    /// `text_start_fallback` is used when the header's textStart is 0, as Go 1.26+
    /// writes it (the runtime takes moduledata.text instead).
    pub fn parse(data: &'a [u8], text_start_fallback: u64) -> Result<Pclntab<'a>, PclntabError> {
        let truncated = PclntabError::Corrupt("header truncated");
        let magic = u32_at(data, 0).ok_or(truncated.clone())?;
        let go_118 = match magic {
            GO_118_MAGIC => true,
            GO_120_MAGIC => false,
            m if OLDER_MAGICS.contains(&m) => return Err(PclntabError::TooOld(m)),
            m => return Err(PclntabError::BadMagic(m)),
        };
        let ptr_size = *data.get(7).ok_or(truncated.clone())?;
        if ptr_size != 8 {
            return Err(PclntabError::PointerSize(ptr_size));
        }
        let field = |at| usize_at(data, at).ok_or(truncated.clone());
        let nfunc = field(NFUNC)?;
        let header_text_start = u64_at(data, TEXT_START).ok_or(truncated.clone())?;
        let slice_from = |at: usize| {
            data.get(at..)
                .ok_or(PclntabError::Corrupt("table offset past the end"))
        };
        let table = Pclntab {
            data,
            go_118,
            nfunc,
            text_start: if header_text_start != 0 {
                header_text_start
            } else {
                text_start_fallback
            },
            funcnames: slice_from(field(FUNCNAME_OFFSET)?)?,
            cutab: slice_from(field(CU_OFFSET)?)?,
            filetab: slice_from(field(FILETAB_OFFSET)?)?,
            pctab: slice_from(field(PCTAB_OFFSET)?)?,
            functab: slice_from(field(PCLN_OFFSET)?)?,
        };
        // The functab holds nfunc+1 (entry, funcoff) pairs; the last entry's PC ends the table.
        let functab_len = nfunc.checked_add(1).and_then(|n| n.checked_mul(8));
        if functab_len.is_none_or(|len| len > table.functab.len()) {
            return Err(PclntabError::Corrupt("function table shorter than nfunc"));
        }
        Ok(table)
    }

    /// True for the Go 1.18–1.19 layout (magic 0xfffffff0).
    pub fn go_1_18_layout(&self) -> bool {
        self.go_118
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    fn entry_pc(&self, index: usize) -> Option<u64> {
        let offset = u32_at(self.functab, index * 8)?;
        self.text_start.checked_add(u64::from(offset))
    }

    /// The `index`th function (0-based, in address order).
    pub fn function(&self, index: usize) -> Result<PclnFunction<'a>, PclntabError> {
        if index >= self.nfunc {
            return Err(PclntabError::Corrupt("function index out of range"));
        }
        let corrupt = PclntabError::Corrupt("function record out of range");
        let entry = self.entry_pc(index).ok_or(corrupt.clone())?;
        let end = self.entry_pc(index + 1).ok_or(corrupt.clone())?;
        let func_offset = u32_at(self.functab, index * 8 + 4).ok_or(corrupt.clone())? as usize;
        let name_off =
            u32_at(self.functab, func_offset + FUNC_NAME_OFF).ok_or(corrupt.clone())? as usize;
        let name =
            c_string(self.funcnames, name_off).ok_or(PclntabError::Corrupt("function name"))?;
        Ok(PclnFunction {
            name,
            entry,
            end,
            func_offset,
        })
    }

    /// Every function in address order.
    pub fn functions(&self) -> impl Iterator<Item = Result<PclnFunction<'a>, PclntabError>> + '_ {
        (0..self.nfunc).map(|i| self.function(i))
    }

    pub fn find_function(&self, name: &str) -> Result<Option<PclnFunction<'a>>, PclntabError> {
        for function in self.functions() {
            let function = function?;
            if function.name == name {
                return Ok(Some(function));
            }
        }
        Ok(None)
    }

    /// The function containing `pc` (binary search on the sorted functab).
    pub fn function_at(&self, pc: u64) -> Result<Option<PclnFunction<'a>>, PclntabError> {
        if self.nfunc == 0 || pc < self.entry_pc(0).unwrap_or(u64::MAX) {
            return Ok(None);
        }
        let (mut low, mut high) = (0usize, self.nfunc);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            let entry = self
                .entry_pc(mid)
                .ok_or(PclntabError::Corrupt("function table"))?;
            if entry <= pc {
                low = mid;
            } else {
                high = mid;
            }
        }
        let function = self.function(low)?;
        Ok((pc < function.end).then_some(function))
    }

    /// File and line of `pc`, from the function's pcfile and pcln tables.
    pub fn source_line(&self, pc: u64) -> Result<Option<SourceLine<'a>>, PclntabError> {
        let Some(function) = self.function_at(pc)? else {
            return Ok(None);
        };
        let record = |at: usize| {
            u32_at(self.functab, function.func_offset + at)
                .ok_or(PclntabError::Corrupt("function record"))
        };
        let (pcfile, pcln, cu_offset) = (
            record(FUNC_PCFILE)?,
            record(FUNC_PCLN)?,
            record(FUNC_CU_OFFSET)?,
        );
        let (Some(file_index), Some(line)) = (
            self.pc_value(pcfile, function.entry, pc)?,
            self.pc_value(pcln, function.entry, pc)?,
        ) else {
            return Ok(None);
        };
        let (Ok(file_index), Ok(line)) = (u32::try_from(file_index), u32::try_from(line)) else {
            return Ok(None);
        };
        // cutab[cuOffset + fileno] is the file's offset in filetab (src/runtime/symtab.go funcfile).
        let cu_entry = (cu_offset as usize)
            .checked_add(file_index as usize)
            .and_then(|i| i.checked_mul(4))
            .ok_or(PclntabError::Corrupt("file index"))?;
        let file_offset = u32_at(self.cutab, cu_entry).ok_or(PclntabError::Corrupt("cu table"))?;
        let file = c_string(self.filetab, file_offset as usize)
            .ok_or(PclntabError::Corrupt("file name"))?;
        Ok(Some(SourceLine {
            function: function.name,
            file,
            line,
        }))
    }

    /// Runs the pc-value table at `offset` from `entry` to `target`
    /// (src/runtime/symtab.go `pcvalue` and `step`).
    fn pc_value(&self, offset: u32, entry: u64, target: u64) -> Result<Option<i64>, PclntabError> {
        if offset == 0 {
            return Ok(None);
        }
        let mut p = self
            .pctab
            .get(offset as usize..)
            .ok_or(PclntabError::Corrupt("pc table offset"))?;
        let mut pc = entry;
        let mut value: i64 = -1;
        let mut first = true;
        loop {
            // The end marker is a zero *byte* (a multi-byte varint may still decode to 0).
            if p.first() == Some(&0) && !first {
                return Ok(None);
            }
            let (uvdelta, n) = varint(p).ok_or(PclntabError::Corrupt("pc table"))?;
            p = &p[n..];
            // Zig-zag encoded value delta.
            let vdelta = -i64::from(uvdelta & 1) ^ i64::from(uvdelta >> 1);
            let (pcdelta, n) = varint(p).ok_or(PclntabError::Corrupt("pc table"))?;
            p = &p[n..];
            // PCQuantum is 1 on amd64.
            pc = pc
                .checked_add(u64::from(pcdelta))
                .ok_or(PclntabError::Corrupt("pc overflow"))?;
            value = value.wrapping_add(vdelta);
            first = false;
            if target < pc {
                return Ok(Some(value));
            }
        }
    }

    /// The raw table, for callers that need more than this module reads.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }
}

/// An unsigned LEB128 varint of at most 32 bits: (value, bytes used).
fn varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for (i, &byte) in p.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with two functions "a" at text+0x10 and "b" at text+0x20, ending at +0x30.
    fn tiny(magic: u32, text_start: u64) -> Vec<u8> {
        let mut t = vec![0u8; 72];
        t[0..4].copy_from_slice(&magic.to_le_bytes());
        t[7] = 8;
        t[8..16].copy_from_slice(&2u64.to_le_bytes());
        t[24..32].copy_from_slice(&text_start.to_le_bytes());
        let names = t.len();
        t.extend(b"a\0b\0");
        t[FUNCNAME_OFFSET..FUNCNAME_OFFSET + 8].copy_from_slice(&(names as u64).to_le_bytes());
        let end = t.len() as u64;
        for field in [CU_OFFSET, FILETAB_OFFSET, PCTAB_OFFSET] {
            t[field..field + 8].copy_from_slice(&end.to_le_bytes());
        }
        let functab = t.len();
        t[PCLN_OFFSET..PCLN_OFFSET + 8].copy_from_slice(&(functab as u64).to_le_bytes());
        // functab: (entryoff, funcoff) × 2, then the end entry.
        let records = 3 * 8;
        for (entry, func) in [
            (0x10u32, records as u32),
            (0x20, records as u32 + 40),
            (0x30, 0),
        ] {
            t.extend(entry.to_le_bytes());
            t.extend(func.to_le_bytes());
        }
        for name_off in [0u32, 2] {
            let mut record = vec![0u8; 40];
            record[4..8].copy_from_slice(&name_off.to_le_bytes());
            t.extend(record);
        }
        t
    }

    #[test]
    fn finds_functions_by_name_and_pc() {
        let data = tiny(GO_120_MAGIC, 0x401000);
        let table = Pclntab::parse(&data, 0).unwrap();
        let b = table.find_function("b").unwrap().unwrap();
        assert_eq!((b.entry, b.end), (0x401020, 0x401030));
        assert_eq!(table.function_at(0x401015).unwrap().unwrap().name, "a");
        assert_eq!(table.function_at(0x40102f).unwrap().unwrap().name, "b");
        assert!(table.function_at(0x401030).unwrap().is_none());
        assert!(table.function_at(0x400000).unwrap().is_none());
    }

    #[test]
    fn go_1_26_zero_text_start_uses_the_fallback() {
        let data = tiny(GO_120_MAGIC, 0);
        let table = Pclntab::parse(&data, 0x500000).unwrap();
        assert_eq!(table.find_function("a").unwrap().unwrap().entry, 0x500010);
    }

    #[test]
    fn old_and_unknown_magics_are_refused() {
        assert_eq!(
            Pclntab::parse(&tiny(0xfffffffa, 0), 0).err(),
            Some(PclntabError::TooOld(0xfffffffa))
        );
        assert_eq!(
            Pclntab::parse(&tiny(0x12345678, 0), 0).err(),
            Some(PclntabError::BadMagic(0x12345678))
        );
        assert!(
            Pclntab::parse(&tiny(GO_118_MAGIC, 0), 0)
                .unwrap()
                .go_1_18_layout()
        );
    }

    #[test]
    fn every_truncation_is_an_error_or_a_consistent_table() {
        let data = tiny(GO_120_MAGIC, 0x401000);
        for len in 0..data.len() {
            if let Ok(table) = Pclntab::parse(&data[..len], 0) {
                for function in table.functions() {
                    let _ = function;
                }
                let _ = table.source_line(0x401010);
            }
        }
    }
}
