//! The Go function table (`.gopclntab`): function names and address ranges in stripped
//! binaries (`-ldflags=-s -w` keep neither .symtab nor DWARF, but the runtime needs this
//! table for stack traces, so it is always there), and PC → file:line for call sites.
//!
//! Layout, as read by src/debug/gosym/pclntab.go (`parsePclnTab`, `funcTab`,
//! `funcData`) and by the runtime in src/runtime/symtab.go (`pcHeader`, `funcline1`,
//! `funcfile`, `pcvalue`, `step`, `readvarint`), written by
//! src/cmd/link/internal/ld/pcln.go:
//!
//! ```text
//! pcHeader   magic u32 | 0 0 | minLC u8 | ptrSize u8 | nfunc | nfiles | textStart |
//!            funcnameOffset | cuOffset | filetabOffset | pctabOffset | pclnOffset
//!            (the last eight are pointer-sized; offsets count from the header)
//! funcnametab  NUL-terminated function names          (_func.nameOff indexes it)
//! cutab        u32 per (compilation unit, file)       (_func.cuOffset + file number)
//! filetab      NUL-terminated file names              (cutab values index it)
//! pctab        pc-value tables                        (_func.pcfile / pcln index it)
//! pclntab      functab: nfunc × (entryOff u32, funcOff u32), then the end PC offset
//!              (u32); then the _func records, at funcOff from the functab's start
//! ```
//!
//! Two layouts are read: magic 0xfffffff0 (Go 1.18–1.19) and 0xfffffff1 (Go 1.20+;
//! generated symbol names got a ':', and `_func` gained startLine before its last
//! bytes, which moves the pcdata and funcdata arrays that follow it: see inline.rs). Older tables (entry PCs stored as addresses,
//! other header) are refused. Go 1.26+ no longer stores textStart (the field is
//! written as 0 to save a relocation); the caller then supplies it.
//!
//! Every read is bounds-checked and all arithmetic is checked: any input gives a table
//! or an error, never a panic, and each function's `end >= entry`.

/// Magic numbers, src/internal/abi/symtab.go (`Go12PCLnTabMagic` … `Go120PCLnTabMagic`).
const GO_12_MAGIC: u32 = 0xfffffffb;
const GO_116_MAGIC: u32 = 0xfffffffa;
pub(super) const GO_118_MAGIC: u32 = 0xfffffff0;
pub(super) const GO_120_MAGIC: u32 = 0xfffffff1;

/// Only 64-bit tables: mapwatch reads amd64 binaries, whose pointers are 8 bytes.
const PTR_SIZE: usize = 8;

/// `pcHeader` (src/runtime/symtab.go): 8 bytes of magic, padding, minLC and ptrSize,
/// then pointer-sized words. debug/gosym reads word N at `8 + N*ptrSize`.
pub(super) const NFUNC_WORD: usize = 0;
pub(super) const TEXT_START_WORD: usize = 2;
pub(super) const FUNCNAME_WORD: usize = 3;
pub(super) const CU_WORD: usize = 4;
pub(super) const FILETAB_WORD: usize = 5;
pub(super) const PCTAB_WORD: usize = 6;
pub(super) const PCLN_WORD: usize = 7;
pub(super) const HEADER_LEN: usize = 8 + 8 * PTR_SIZE;

/// `_func` field offsets (src/runtime/runtime2.go; debug/gosym `funcData.field`):
/// entryOff u32, nameOff i32, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset,
/// then startLine (1.20+ only), funcID, flag, a pad byte, nfuncdata (u8). Identical in
/// the 1.18 and 1.20 layouts up to cuOffset, the last field this module reads.
pub(super) const FUNC_ENTRY_OFF: usize = 0;
pub(super) const FUNC_NAME_OFF: usize = 4;
pub(super) const FUNC_PCFILE: usize = 20;
pub(super) const FUNC_PCLN: usize = 24;
pub(super) const FUNC_NPCDATA: usize = 28;
pub(super) const FUNC_CU_OFFSET: usize = 32;
/// Bytes of a `_func` record this module reads.
const FUNC_READ_LEN: usize = FUNC_CU_OFFSET + 4;
/// Size of the fixed part of `_func`, whose last byte is nfuncdata; the pcdata and
/// funcdata offset arrays follow it. The linker's `funcSize`
/// (src/cmd/link/internal/ld/pcln.go): 10·4 in Go 1.19 (src/runtime/runtime2.go: funcID,
/// flag, pad, nfuncdata right after cuOffset), 11·4 in 1.21–1.27 (startLine in between;
/// it came with the 1.20 magic).
pub(super) const FUNC_SIZE_118: usize = 40;
pub(super) const FUNC_SIZE_120: usize = 44;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PclntabError {
    #[error("pclntab truncated: {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    HeaderTruncated { len: usize },
    #[error(
        "unsupported pclntab magic {magic:#x}: Go {newest} or older; mapwatch reads the \
         function tables of Go 1.18 and later"
    )]
    TooOld { magic: u32, newest: &'static str },
    #[error("unsupported pclntab magic {0:#x}: not a Go 1.18+ function table")]
    BadMagic(u32),
    #[error(
        "pclntab is big-endian (magic {0:#x}); only little-endian (amd64) binaries are supported"
    )]
    BigEndian(u32),
    #[error("pclntab is for {0}-byte pointers; only 64-bit binaries are supported")]
    PointerSize(u8),
    #[error("pclntab header is corrupt: {0}")]
    BadHeader(String),
    #[error(
        "pclntab header puts the {table} at offset {offset:#x}, past the end of the {len}-byte table"
    )]
    TableOutOfRange {
        table: &'static str,
        offset: u64,
        len: usize,
    },
    #[error(
        "pclntab truncated: it claims {nfunc} functions but its function table has room for at most {room}"
    )]
    FunctabTruncated { nfunc: u64, room: usize },
    /// `index` is 0-based; the message counts from 1.
    #[error("pclntab truncated at function {} of {nfunc}: {what} lies past the end of the table", .index + 1)]
    FunctionTruncated {
        index: usize,
        nfunc: usize,
        what: &'static str,
    },
    /// `index` is 0-based; the message counts from 1.
    #[error("pclntab corrupt at function {} of {nfunc}: {reason}", .index + 1)]
    FunctionCorrupt {
        index: usize,
        nfunc: usize,
        reason: String,
    },
    #[error("pclntab corrupt in the {table} table of {function}: {reason}")]
    PcTable {
        function: String,
        table: &'static str,
        reason: String,
    },
    #[error("pclntab is truncated or corrupt: {0}")]
    Corrupt(&'static str),
    #[error("pclntab corrupt in the inline tree of {function}: {reason}")]
    InlineTree { function: String, reason: String },
    /// The function inlined calls at the PC, but their names live in `go:func.*`
    /// (moduledata.gofunc), which the caller could not locate.
    #[error(
        "{function} has inlined calls there, but the binary's inline trees (go:func.*) were not found"
    )]
    NoInlineTrees { function: String },
}

/// One function of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PclnFunction<'a> {
    pub name: &'a str,
    pub entry: u64,
    /// One past the last byte: the next function's entry, or the table's end PC for the
    /// last function (so it includes the padding between functions).
    pub end: u64,
}

/// Where a PC's instruction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLine<'a> {
    pub function: &'a str,
    /// As recorded by the compiler: usually an absolute path (GOROOT's sources for the
    /// runtime; `-trimpath` builds record module paths).
    pub file: &'a str,
    pub line: u32,
}

/// A parsed `.gopclntab`, borrowing the section's bytes.
pub struct Pclntab<'a> {
    data: &'a [u8],
    go_118: bool,
    /// PC quantum (`minLC`): 1 on amd64; pc deltas are multiplied by it.
    quantum: u32,
    nfunc: usize,
    text_start: u64,
    funcnametab: &'a [u8],
    cutab: &'a [u8],
    filetab: &'a [u8],
    pctab: &'a [u8],
    /// The functab followed by the `_func` records: funcOff counts from its start
    /// (debug/gosym sets `funcdata` and `functab` to the same offset).
    funcdata: &'a [u8],
}

pub(super) fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The NUL-terminated string at `at` (Go's `gostringnocopy` / gosym `stringFrom`):
/// None when `at` or the terminator is past the end; Err(()) when it is not UTF-8.
fn c_string(data: &[u8], at: usize) -> Option<Result<&str, ()>> {
    let bytes = data.get(at..)?;
    let len = bytes.iter().position(|&b| b == 0)?;
    Some(std::str::from_utf8(&bytes[..len]).map_err(|_| ()))
}

impl<'a> Pclntab<'a> {
    /// Parses the header of `data`, the whole `.gopclntab` section (PIE builds of Go
    /// ≤1.25: `.data.rel.ro.gopclntab`).
    ///
    /// `text_start_fallback` is the base of function entry offsets, used when the
    /// header's textStart is 0, as Go 1.26+ write it (src/runtime/symtab.go: "Code
    /// should use the moduledata text field instead"). Pass `moduledata.text`, or the
    /// `.text` section's address as cmd/internal/objfile (elf.go `pcln`) does; the two
    /// differ only in externally linked binaries, where C code precedes the Go text.
    pub fn parse(data: &'a [u8], text_start_fallback: u64) -> Result<Pclntab<'a>, PclntabError> {
        let magic = u32_at(data, 0).ok_or(PclntabError::HeaderTruncated { len: data.len() })?;
        let go_118 = match magic {
            GO_118_MAGIC => true,
            GO_120_MAGIC => false,
            GO_12_MAGIC => {
                return Err(PclntabError::TooOld {
                    magic,
                    newest: "1.15",
                });
            }
            GO_116_MAGIC => {
                return Err(PclntabError::TooOld {
                    magic,
                    newest: "1.17",
                });
            }
            // The magics are chosen so that the byte-swapped value never matches
            // (src/internal/abi/symtab.go); gosym uses that to detect endianness.
            m if [GO_118_MAGIC, GO_120_MAGIC].contains(&m.swap_bytes()) => {
                return Err(PclntabError::BigEndian(m));
            }
            m => return Err(PclntabError::BadMagic(m)),
        };
        if data.len() < HEADER_LEN {
            return Err(PclntabError::HeaderTruncated { len: data.len() });
        }
        // The same sanity checks as gosym's parsePclnTab: two zero pad bytes, a PC
        // quantum of 1, 2 or 4, and a pointer size.
        if data[4] != 0 || data[5] != 0 {
            return Err(PclntabError::BadHeader(format!(
                "padding bytes are {:#x} {:#x}, not 0",
                data[4], data[5]
            )));
        }
        let quantum = data[6];
        if ![1, 2, 4].contains(&quantum) {
            return Err(PclntabError::BadHeader(format!(
                "PC quantum {quantum} (expected 1, 2 or 4)"
            )));
        }
        if usize::from(data[7]) != PTR_SIZE {
            return Err(PclntabError::PointerSize(data[7]));
        }
        let word = |n: usize| u64_at(data, 8 + n * PTR_SIZE).unwrap_or(0); // in the header
        let table = |n: usize, name: &'static str| -> Result<&'a [u8], PclntabError> {
            let offset = word(n);
            usize::try_from(offset)
                .ok()
                .and_then(|at| data.get(at..))
                .ok_or(PclntabError::TableOutOfRange {
                    table: name,
                    offset,
                    len: data.len(),
                })
        };
        let funcdata = table(PCLN_WORD, "function table")?;
        // nfunc (entryOff, funcOff) pairs and one end PC: (2·nfunc + 1) u32s, as in
        // gosym's `functabsize` and the linker's calculateFunctabSize.
        let nfunc_word = word(NFUNC_WORD);
        let room = funcdata.len().saturating_sub(4) / 8;
        let nfunc = usize::try_from(nfunc_word)
            .ok()
            .filter(|&n| n <= room)
            .ok_or(PclntabError::FunctabTruncated {
                nfunc: nfunc_word,
                room,
            })?;
        let header_text_start = word(TEXT_START_WORD);
        Ok(Pclntab {
            data,
            go_118,
            quantum: u32::from(quantum),
            nfunc,
            text_start: if header_text_start != 0 {
                header_text_start
            } else {
                text_start_fallback
            },
            funcnametab: table(FUNCNAME_WORD, "function name table")?,
            cutab: table(CU_WORD, "compilation unit table")?,
            filetab: table(FILETAB_WORD, "file name table")?,
            pctab: table(PCTAB_WORD, "pc-value tables")?,
            funcdata,
        })
    }

    /// True for the Go 1.18–1.19 layout (magic 0xfffffff0), false for 1.20+
    /// (0xfffffff1).
    pub fn go_1_18_layout(&self) -> bool {
        self.go_118
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The base of entry offsets: the header's textStart, or the caller's fallback
    /// when the header holds 0 (Go 1.26+).
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// The raw section bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// PC of functab entry `index` (0..=nfunc; entry nfunc is the end of the last
    /// function): gosym `funcTab.pc`, textStart + a u32 offset since Go 1.18.
    fn pc(&self, index: usize) -> Option<u64> {
        let offset = u32_at(self.funcdata, index.checked_mul(8)?)?;
        self.text_start.checked_add(u64::from(offset))
    }

    fn truncated(&self, index: usize, what: &'static str) -> PclntabError {
        PclntabError::FunctionTruncated {
            index,
            nfunc: self.nfunc,
            what,
        }
    }

    fn corrupt(&self, index: usize, reason: String) -> PclntabError {
        PclntabError::FunctionCorrupt {
            index,
            nfunc: self.nfunc,
            reason,
        }
    }

    /// Offset of function `index`'s `_func` record in `funcdata`, checked to hold the
    /// fields read here (gosym `funcTab.funcOff`).
    pub(super) fn record(&self, index: usize) -> Result<usize, PclntabError> {
        let func_off = u32_at(self.funcdata, index * 8 + 4)
            .ok_or_else(|| self.truncated(index, "its functab entry"))?;
        let record = func_off as usize;
        if record
            .checked_add(FUNC_READ_LEN)
            .is_none_or(|end| end > self.funcdata.len())
        {
            return Err(self.truncated(index, "its _func record"));
        }
        Ok(record)
    }

    pub(super) fn field(&self, record: usize, field: usize) -> u32 {
        // In range: `record` checked FUNC_READ_LEN bytes.
        u32_at(self.funcdata, record + field).unwrap_or(0)
    }

    /// The bytes of the functab and `_func` records, from the record at `record` on:
    /// what follows the fields read here (the pcdata and funcdata arrays) is only
    /// bounded by the end of the table.
    pub(super) fn record_bytes(&self, record: usize) -> &'a [u8] {
        self.funcdata.get(record..).unwrap_or_default()
    }

    /// The function name at `at` in funcnametab: None when it runs past the end,
    /// Err(()) when it is not UTF-8.
    pub(super) fn name_at(&self, at: usize) -> Option<Result<&'a str, ()>> {
        c_string(self.funcnametab, at)
    }

    /// `_func.nameOff`: an int32 offset into funcnametab.
    fn name_offset(&self, index: usize, record: usize) -> Result<usize, PclntabError> {
        let name_off = self.field(record, FUNC_NAME_OFF) as i32;
        usize::try_from(name_off)
            .map_err(|_| self.corrupt(index, format!("negative name offset {name_off}")))
    }

    /// The name at `_func.nameOff` (gosym `funcName`).
    fn name(&self, index: usize, record: usize) -> Result<&'a str, PclntabError> {
        let at = self.name_offset(index, record)?;
        match c_string(self.funcnametab, at) {
            Some(Ok(name)) => Ok(name),
            Some(Err(())) => Err(self.corrupt(index, format!("name at {at:#x} is not UTF-8"))),
            None => Err(self.truncated(index, "its name")),
        }
    }

    /// The `index`th function (0-based, in address order), fully checked: its record
    /// and name are in the table, the record's entryOff matches the functab (the
    /// linker writes both from the same value, pcln.go `writePCToFunc`/`writeFuncs`),
    /// and the next entry is not below this one.
    pub fn function(&self, index: usize) -> Result<PclnFunction<'a>, PclntabError> {
        if index >= self.nfunc {
            return Err(PclntabError::Corrupt("function index out of range"));
        }
        let overflow = || self.corrupt(index, "entry address overflows".to_string());
        let entry = self.pc(index).ok_or_else(overflow)?;
        let end = self.pc(index + 1).ok_or_else(overflow)?;
        if end < entry {
            return Err(self.corrupt(
                index,
                format!("entry {entry:#x} lies after the next function's {end:#x}"),
            ));
        }
        let record = self.record(index)?;
        let record_entry = self.field(record, FUNC_ENTRY_OFF);
        let table_entry = u32_at(self.funcdata, index * 8).unwrap_or(0);
        if record_entry != table_entry {
            return Err(self.corrupt(
                index,
                format!(
                    "its record says entry offset {record_entry:#x}, the functab {table_entry:#x}"
                ),
            ));
        }
        Ok(PclnFunction {
            name: self.name(index, record)?,
            entry,
            end,
        })
    }

    /// Every function, in address order (gosym `go12Funcs`).
    pub fn functions(&self) -> impl Iterator<Item = Result<PclnFunction<'a>, PclntabError>> + '_ {
        (0..self.nfunc).map(|i| self.function(i))
    }

    /// The first function named `name` (names are unique except for the rare ABI0
    /// wrapper sharing its function's name). Scans the table comparing name bytes in
    /// place; an unreadable record on the way is an error.
    pub fn find_function(&self, name: &str) -> Result<Option<PclnFunction<'a>>, PclntabError> {
        let wanted = name.as_bytes();
        for index in 0..self.nfunc {
            let record = self.record(index)?;
            let at = self.name_offset(index, record)?;
            let candidate = at
                .checked_add(wanted.len())
                .and_then(|end| self.funcnametab.get(at..=end));
            if candidate.is_some_and(|c| &c[..wanted.len()] == wanted && c[wanted.len()] == 0) {
                return self.function(index).map(Some);
            }
        }
        Ok(None)
    }

    /// Index of the function containing `pc`: gosym `findFunc`, a binary search for the
    /// first entry above `pc`; None outside [first entry, end of table).
    pub(super) fn index_at(&self, pc: u64) -> Result<Option<usize>, PclntabError> {
        if self.nfunc == 0 {
            return Ok(None);
        }
        let at = |i: usize| {
            self.pc(i)
                .ok_or_else(|| self.corrupt(i, "entry address overflows".to_string()))
        };
        if pc < at(0)? || pc >= at(self.nfunc)? {
            return Ok(None);
        }
        // Invariant: pc(low) <= pc < pc(high).
        let (mut low, mut high) = (0usize, self.nfunc);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if at(mid)? <= pc {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(Some(low))
    }

    /// The function containing `pc`.
    pub fn function_at(&self, pc: u64) -> Result<Option<PclnFunction<'a>>, PclntabError> {
        let Some(index) = self.index_at(pc)? else {
            return Ok(None);
        };
        let function = self.function(index)?;
        // Only a corrupt, unsorted table gets here with pc outside the function.
        Ok((function.entry <= pc && pc < function.end).then_some(function))
    }

    /// File and line of the instruction at `pc` (src/runtime/symtab.go `funcline1`):
    /// the file number and line from the function's pcfile and pcln tables, the file
    /// number mapped through cutab[cuOffset + file] to a name in filetab (`funcfile`).
    ///
    /// Ok(None) when `pc` is in no function, or in one without line information (the
    /// tables do not cover the padding after a function's last instruction).
    pub fn source_line(&self, pc: u64) -> Result<Option<SourceLine<'a>>, PclntabError> {
        let Some(index) = self.index_at(pc)? else {
            return Ok(None);
        };
        let function = self.function(index)?;
        if !(function.entry <= pc && pc < function.end) {
            return Ok(None);
        }
        let record = self.record(index)?;
        Ok(self
            .position(&function, record, pc)?
            .map(|(file, line)| SourceLine {
                function: function.name,
                file,
                line,
            }))
    }

    /// File and line of `pc` in `function`, whose `_func` record is at `record`: the
    /// innermost position, inlined bodies included (see [`Self::source_line`]).
    pub(super) fn position(
        &self,
        function: &PclnFunction<'a>,
        record: usize,
        pc: u64,
    ) -> Result<Option<(&'a str, u32)>, PclntabError> {
        let (pcfile, pcln, cu_offset) = (
            self.field(record, FUNC_PCFILE),
            self.field(record, FUNC_PCLN),
            self.field(record, FUNC_CU_OFFSET),
        );
        let file_number = self.pc_value(function, "pcfile", pcfile, pc)?;
        let line = self.pc_value(function, "pcln", pcln, pc)?;
        // -1: no table, or pc past its end (funcline1 returns "?", 0).
        if file_number == -1 || line == -1 {
            return Ok(None);
        }
        let pc_table_error = |table: &'static str, reason: String| PclntabError::PcTable {
            function: function.name.to_string(),
            table,
            reason,
        };
        let line = u32::try_from(line)
            .map_err(|_| pc_table_error("pcln", format!("negative line number {line}")))?;
        let file_number = u32::try_from(file_number)
            .map_err(|_| pc_table_error("pcfile", format!("negative file number {file_number}")))?;
        // cutab holds u32s; the function's CU starts at entry cuOffset.
        let cu_entry = cu_offset
            .checked_add(file_number)
            .and_then(|i| (i as usize).checked_mul(4));
        let file_offset = cu_entry
            .and_then(|at| u32_at(self.cutab, at))
            .ok_or_else(|| {
                pc_table_error(
                    "pcfile",
                    format!(
                        "file {file_number} of compilation unit {cu_offset} is past the end \
                         of the compilation unit table"
                    ),
                )
            })?;
        // funcfile: ^0 marks a file the CU does not use; the runtime prints "?".
        if file_offset == u32::MAX {
            return Ok(None);
        }
        let file = match c_string(self.filetab, file_offset as usize) {
            Some(Ok(file)) => file,
            Some(Err(())) => {
                return Err(pc_table_error(
                    "pcfile",
                    format!("file name at {file_offset:#x} is not UTF-8"),
                ));
            }
            None => {
                return Err(pc_table_error(
                    "pcfile",
                    format!("file name at {file_offset:#x} is past the end of the file table"),
                ));
            }
        };
        Ok(Some((file, line)))
    }

    /// The value of the pc-value table at `offset` for `target` (src/runtime/symtab.go
    /// `pcvalue`): values start at -1 and pcs at the function's entry; each step adds
    /// a zig-zag varint to the value and a varint × quantum to the pc, and the value
    /// holds until that pc. -1 when there is no table (offset 0) or it ends before
    /// `target`.
    pub(super) fn pc_value(
        &self,
        function: &PclnFunction<'_>,
        table: &'static str,
        offset: u32,
        target: u64,
    ) -> Result<i32, PclntabError> {
        if offset == 0 {
            return Ok(-1);
        }
        let error = |reason: String| PclntabError::PcTable {
            function: function.name.to_string(),
            table,
            reason,
        };
        let mut p = self.pctab.get(offset as usize..).ok_or_else(|| {
            error(format!(
                "offset {offset:#x} is past the end of the pc-value tables"
            ))
        })?;
        let mut pc = function.entry;
        let mut value: i32 = -1;
        // Each step consumes at least two bytes, so this ends within the table.
        loop {
            let first = pc == function.entry;
            match step(p, &mut pc, &mut value, first, self.quantum) {
                Step::Next(rest) => p = rest,
                Step::End => return Ok(-1),
                Step::Truncated => return Err(error("runs past the end of the table".into())),
                Step::Overflow => return Err(error("pc overflows".into())),
            }
            if target < pc {
                return Ok(value);
            }
        }
    }
}

enum Step<'p> {
    Next(&'p [u8]),
    End,
    Truncated,
    Overflow,
}

/// One (value delta, pc delta) pair: src/runtime/symtab.go `step`. The table ends at
/// a zero *byte* where a value delta would start, except on the first step (a first
/// value of -1 + 0 is legal).
fn step<'p>(p: &'p [u8], pc: &mut u64, value: &mut i32, first: bool, quantum: u32) -> Step<'p> {
    match p.first() {
        None => return Step::Truncated,
        Some(0) if !first => return Step::End,
        Some(_) => {}
    }
    let Some((uvdelta, n)) = read_varint(p) else {
        return Step::Truncated;
    };
    // Zig-zag: the low bit is the sign.
    *value = value.wrapping_add((uvdelta >> 1) as i32 ^ -((uvdelta & 1) as i32));
    let p = &p[n..];
    let Some((pcdelta, n)) = read_varint(p) else {
        return Step::Truncated;
    };
    let Some(next) = pc.checked_add(u64::from(pcdelta.wrapping_mul(quantum))) else {
        return Step::Overflow;
    };
    *pc = next;
    Step::Next(&p[n..])
}

/// An unsigned LEB128 varint as src/runtime/symtab.go `readvarint` decodes it (bits
/// beyond 32 wrap around): (value, bytes read), or None if it runs off the end.
fn read_varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    let mut shift: u32 = 0;
    for (i, &byte) in p.iter().enumerate() {
        value |= u32::from(byte & 0x7f) << (shift & 31);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift = shift.wrapping_add(7);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goelf::{
        inline::MAX_INLINE_DEPTH,
        pclntab_testing::{Built, sample},
    };

    fn line(table: &Pclntab<'_>, pc: u64) -> Option<(String, String, u32)> {
        table
            .source_line(pc)
            .unwrap()
            .map(|l| (l.function.to_string(), l.file.to_string(), l.line))
    }

    fn owned(function: &str, file: &str, line: u32) -> Option<(String, String, u32)> {
        Some((function.to_string(), file.to_string(), line))
    }

    #[test]
    fn finds_functions_by_name_and_pc() {
        let data = sample(GO_120_MAGIC, 0x401000).table;
        let table = Pclntab::parse(&data, 0).unwrap();
        assert!(!table.go_1_18_layout());
        assert_eq!(table.len(), 3);
        let all: Vec<_> = table.functions().map(Result::unwrap).collect();
        assert_eq!(
            all,
            [
                PclnFunction {
                    name: "main.a",
                    entry: 0x401010,
                    end: 0x401020
                },
                PclnFunction {
                    name: "main.b",
                    entry: 0x401020,
                    end: 0x401030
                },
                PclnFunction {
                    name: "main.c",
                    entry: 0x401030,
                    end: 0x401040
                },
            ]
        );
        assert_eq!(table.find_function("main.b").unwrap(), Some(all[1]));
        // A prefix of a name is not the name.
        assert_eq!(table.find_function("main.").unwrap(), None);
        assert_eq!(table.find_function("main.bb").unwrap(), None);
        assert_eq!(table.function_at(0x401010).unwrap(), Some(all[0]));
        assert_eq!(table.function_at(0x40101f).unwrap(), Some(all[0]));
        assert_eq!(table.function_at(0x401020).unwrap(), Some(all[1]));
        assert_eq!(table.function_at(0x40102f).unwrap(), Some(all[1]));
        assert_eq!(table.function_at(0x401030).unwrap(), Some(all[2]));
        assert_eq!(table.function_at(0x40103f).unwrap(), Some(all[2]));
        assert_eq!(table.function_at(0x401040).unwrap(), None);
        assert_eq!(table.function_at(0x40100f).unwrap(), None);
        assert_eq!(table.function_at(0).unwrap(), None);
        assert_eq!(table.function_at(u64::MAX).unwrap(), None);
    }

    #[test]
    fn maps_pcs_to_file_and_line() {
        let data = sample(GO_120_MAGIC, 0x401000).table;
        let table = Pclntab::parse(&data, 0).unwrap();
        assert_eq!(line(&table, 0x401010), owned("main.a", "/src/a.go", 10));
        assert_eq!(line(&table, 0x401013), owned("main.a", "/src/a.go", 10));
        assert_eq!(line(&table, 0x401014), owned("main.a", "/src/a.go", 11));
        assert_eq!(line(&table, 0x40101b), owned("main.a", "/src/a.go", 11));
        // Padding after main.a's last instruction: in the function, not in its tables.
        assert_eq!(line(&table, 0x40101c), None);
        // Multi-byte varint (line 1000) and a file change inside a function (inlining:
        // the innermost position, under the physical function's name).
        assert_eq!(line(&table, 0x401020), owned("main.b", "/src/b.go", 1000));
        assert_eq!(line(&table, 0x401027), owned("main.b", "/src/b.go", 1000));
        assert_eq!(line(&table, 0x401028), owned("main.b", "/src/a.go", 7));
        assert_eq!(line(&table, 0x40102f), owned("main.b", "/src/a.go", 7));
        assert_eq!(line(&table, 0x401038), owned("main.c", "/src/a.go", 40));
        assert_eq!(line(&table, 0x401040), None);
    }

    #[test]
    fn the_go_1_18_layout_is_read_the_same_way() {
        let data = sample(GO_118_MAGIC, 0x401000).table;
        let table = Pclntab::parse(&data, 0).unwrap();
        assert!(table.go_1_18_layout());
        assert_eq!(line(&table, 0x401028), owned("main.b", "/src/a.go", 7));
    }

    #[test]
    fn go_1_26_zero_text_start_uses_the_fallback() {
        let data = sample(GO_120_MAGIC, 0).table;
        let table = Pclntab::parse(&data, 0x500000).unwrap();
        assert_eq!(table.text_start(), 0x500000);
        let b = table.find_function("main.b").unwrap().unwrap();
        assert_eq!((b.entry, b.end), (0x500020, 0x500030));
        assert_eq!(line(&table, 0x500014), owned("main.a", "/src/a.go", 11));
        // A non-zero header value wins over the fallback.
        let data = sample(GO_120_MAGIC, 0x401000).table;
        let table = Pclntab::parse(&data, 0x500000).unwrap();
        assert_eq!(
            table.find_function("main.a").unwrap().unwrap().entry,
            0x401010
        );
        // A fallback near the top of the address space: errors, not overflow.
        let data = sample(GO_120_MAGIC, 0).table;
        let table = Pclntab::parse(&data, u64::MAX - 0x28).unwrap();
        assert!(table.function(0).is_ok());
        assert!(table.function(1).is_err());
        assert!(table.function_at(u64::MAX - 1).is_err());
    }

    #[test]
    fn old_and_unknown_magics_are_refused() {
        let mut data = sample(0xfffffffa, 0).table;
        let error = Pclntab::parse(&data, 0).err().unwrap();
        assert_eq!(
            error.to_string(),
            "unsupported pclntab magic 0xfffffffa: Go 1.17 or older; mapwatch reads the \
             function tables of Go 1.18 and later"
        );
        data[0..4].copy_from_slice(&0xfffffffbu32.to_le_bytes());
        assert_eq!(
            Pclntab::parse(&data, 0).err(),
            Some(PclntabError::TooOld {
                magic: 0xfffffffb,
                newest: "1.15"
            })
        );
        data[0..4].copy_from_slice(&0x12345678u32.to_le_bytes());
        assert_eq!(
            Pclntab::parse(&data, 0).err(),
            Some(PclntabError::BadMagic(0x12345678))
        );
        data[0..4].copy_from_slice(&GO_120_MAGIC.to_be_bytes());
        assert!(matches!(
            Pclntab::parse(&data, 0),
            Err(PclntabError::BigEndian(_))
        ));
        let mut data = sample(GO_120_MAGIC, 0).table;
        data[7] = 4;
        assert_eq!(
            Pclntab::parse(&data, 0).err(),
            Some(PclntabError::PointerSize(4))
        );
    }

    #[test]
    fn corrupt_headers_and_records_say_what_is_wrong() {
        let good = sample(GO_120_MAGIC, 0x401000).table;
        let mut data = good.clone();
        data[8..16].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(
            Pclntab::parse(&data, 0).err().unwrap().to_string(),
            "pclntab truncated: it claims 1000 functions but its function table has room for at most 27"
        );
        let mut data = good.clone();
        data[8 + PCTAB_WORD * 8..16 + PCTAB_WORD * 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Pclntab::parse(&data, 0),
            Err(PclntabError::TableOutOfRange {
                table: "pc-value tables",
                ..
            })
        ));
        // Second function's record pointed past the end.
        let functab = u64_at(&good, 8 + PCLN_WORD * 8).unwrap() as usize;
        let mut data = good.clone();
        data[functab + 12..functab + 16].copy_from_slice(&0xfff0u32.to_le_bytes());
        let table = Pclntab::parse(&data, 0).unwrap();
        assert!(table.function(0).is_ok());
        assert_eq!(
            table.function(1).err().unwrap().to_string(),
            "pclntab truncated at function 2 of 3: its _func record lies past the end of the table"
        );
        assert!(table.find_function("main.b").is_err());
        // Entries out of order.
        let mut data = good;
        data[functab + 8..functab + 12].copy_from_slice(&0x40u32.to_le_bytes());
        let table = Pclntab::parse(&data, 0).unwrap();
        assert!(matches!(
            table.function(1),
            Err(PclntabError::FunctionCorrupt { index: 1, .. })
        ));
    }

    /// Every prefix of a table, and of its inline trees, parses or fails; nothing it
    /// returns panics.
    #[test]
    fn every_truncation_is_an_error_or_a_consistent_table() {
        for magic in [GO_118_MAGIC, GO_120_MAGIC] {
            let Built {
                table: data,
                gofunc,
            } = sample(magic, 0x401000);
            let mut parsed = 0;
            for len in 0..=data.len() {
                if let Ok(table) = Pclntab::parse(&data[..len], 0) {
                    parsed += 1;
                    exercise(&table, &gofunc);
                }
            }
            assert!(parsed > 0);
            let table = Pclntab::parse(&data, 0).unwrap();
            for len in 0..=gofunc.len() {
                exercise(&table, &gofunc[..len]);
            }
        }
    }

    /// Every byte of the table and of its inline trees replaced by a few values: no
    /// panic, functions never end before they start, and frames agree with
    /// source_line.
    #[test]
    fn every_single_byte_corruption_is_handled() {
        const VALUES: [u8; 5] = [0x00, 0x01, 0x7f, 0x80, 0xff];
        for magic in [GO_118_MAGIC, GO_120_MAGIC] {
            let Built {
                table: data,
                gofunc,
            } = sample(magic, 0x401000);
            for at in 0..data.len() {
                for value in VALUES {
                    let mut bad = data.clone();
                    bad[at] = value;
                    if let Ok(table) = Pclntab::parse(&bad, 0x401000) {
                        exercise(&table, &gofunc);
                    }
                }
            }
            let table = Pclntab::parse(&data, 0).unwrap();
            for at in 0..gofunc.len() {
                for value in VALUES {
                    let mut bad = gofunc.clone();
                    bad[at] = value;
                    exercise(&table, &bad);
                }
            }
        }
    }

    fn exercise(table: &Pclntab<'_>, gofunc: &[u8]) {
        for function in table.functions().flatten() {
            assert!(function.entry <= function.end);
            let _ = table.source_line(function.entry);
            let _ = table.function_at(function.end.saturating_sub(1));
        }
        let _ = table.find_function("main.b");
        for pc in 0x401000..0x401048 {
            let _ = table.function_at(pc);
            let line = table.source_line(pc);
            for gofunc in [Some(gofunc), None] {
                let (Ok(line), Ok(frames)) = (&line, table.frames(pc, gofunc)) else {
                    continue;
                };
                assert!(frames.len() <= MAX_INLINE_DEPTH);
                assert_eq!(frames.is_empty(), line.is_none(), "{pc:#x}");
                if let (Some(line), Some(first), Some(last)) = (line, frames.first(), frames.last())
                {
                    assert_eq!((first.file, first.line), (line.file, line.line));
                    assert_eq!(last.function, line.function);
                }
            }
        }
    }

    #[test]
    fn varints_decode_like_the_runtime() {
        assert_eq!(read_varint(&[0x05]), Some((5, 1)));
        assert_eq!(read_varint(&[0xe8, 0x07]), Some((1000, 2)));
        assert_eq!(read_varint(&[0x80]), None);
        assert_eq!(read_varint(&[]), None);
        // Longer than 5 bytes: the runtime keeps going, shifts wrap at 32 bits.
        assert!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).is_some());
    }
}
