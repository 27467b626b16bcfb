//! Read a Go binary without running it: build info, symbols, machine code, and the
//! mapping between virtual addresses and file offsets.
pub mod buildinfo;
pub mod decode;
pub mod dwarf;
pub mod inline;
pub mod pclntab;
#[cfg(test)]
mod pclntab_testing;
pub mod procmaps;
pub mod types;

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
};

use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

pub use buildinfo::BuildInfo;

#[derive(Debug, thiserror::Error)]
pub enum GoElfError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF executable: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error("{path} is {what}, not an executable file")]
    NotAFile { path: PathBuf, what: &'static str },
    #[error(
        "{path} is truncated or corrupt: its ELF headers describe {described} bytes, the file has {actual}"
    )]
    Truncated {
        path: PathBuf,
        described: u64,
        actual: u64,
    },
    #[error("{path} is built for {arch}; mapwatch supports x86_64 (amd64) Go binaries only")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path} is not a Go program: it has no Go build info (.go.buildinfo)")]
    NotGo { path: PathBuf },
    #[error("{path} has corrupt Go build info: {reason}")]
    BadBuildInfo { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Dwarf {
        path: PathBuf,
        #[source]
        source: dwarf::DwarfError,
    },
}

/// A function's address range in the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionSymbol {
    pub vaddr: u64,
    pub size: u64,
}

/// A loadable segment: where bytes at `vaddr..vaddr+file_size` live in the file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    file_offset: u64,
    file_size: u64,
}

/// The bytes of a binary: memory-mapped from a file (nothing copied), or owned (tests
/// and fuzzing).
enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(map) => map,
            Backing::Owned(bytes) => bytes,
        }
    }
}

/// An opened, parsed Go executable. Files are memory-mapped: nothing is copied but the
/// symbol table's names.
pub struct GoBinary {
    path: PathBuf,
    map: Backing,
    build_info: BuildInfo,
    functions: HashMap<String, FunctionSymbol>,
    segments: Vec<Segment>,
    has_symtab: bool,
    /// Addresses of the few data symbols used (when the binary has a .symtab).
    runtime_types: Option<u64>,
    gofunc: Option<u64>,
    /// (address, size) of sections used to find moduledata in stripped binaries.
    sections: HashMap<&'static str, (u64, u64)>,
    /// The Go build ID (`.note.go.buildid`), when the linker wrote one.
    go_build_id: Option<String>,
}

/// Sections whose addresses are needed later.
const REMEMBERED_SECTIONS: [&str; 5] = [
    ".gopclntab",
    // PIE builds put the pclntab in relro (docs/go-runtime.md, "Reading a binary").
    ".data.rel.ro.gopclntab",
    ".go.module",
    ".noptrdata",
    ".text",
];

/// `runtime.moduledata.text`: offset 176 in every version measured, 1.19–1.27
/// (docs/go-runtime.md, "Struct fields read at run time", DWARF; src/runtime/symtab.go).
const MODULEDATA_TEXT_OFFSET: u64 = 176;

impl GoBinary {
    pub fn open(path: &Path) -> Result<GoBinary, GoElfError> {
        let file = File::open(path).map_err(|source| GoElfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_file(path, file)
    }

    /// Analyses a file already open; `path` names it in errors and [`GoBinary::path`].
    /// The daemon opens a process's executable once and takes its identity from the
    /// same open file, so that the analysis cannot be of another file than the one
    /// identified (a process may exec between two opens of /proc/PID/exe).
    pub fn from_file(path: &Path, file: File) -> Result<GoBinary, GoElfError> {
        let io = |source| GoElfError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(io)?;
        let not_a_file = |what| GoElfError::NotAFile {
            path: path.to_path_buf(),
            what,
        };
        if meta.is_dir() {
            return Err(not_a_file("a directory"));
        }
        if !meta.is_file() {
            return Err(not_a_file("a device, socket or pipe"));
        }
        if meta.len() == 0 {
            return Err(not_a_file("empty (0 bytes)"));
        }
        // SAFETY: the mapping is read-only; a concurrent truncation of the file could
        // fault, which is the same risk every ELF tool takes (and binaries being run
        // cannot be written: ETXTBSY).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Backing::Mapped(map))
    }

    /// Parses a binary held in memory; `label` names it in errors.
    pub fn from_bytes(label: &Path, bytes: Vec<u8>) -> Result<GoBinary, GoElfError> {
        Self::parse(label, Backing::Owned(bytes))
    }

    fn parse(path: &Path, map: Backing) -> Result<GoBinary, GoElfError> {
        let not_elf = |reason: String| GoElfError::NotElf {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(described) = described_length(&map)
            && described > map.len() as u64
        {
            return Err(GoElfError::Truncated {
                path: path.to_path_buf(),
                described,
                actual: map.len() as u64,
            });
        }
        let elf = object::File::parse(&*map).map_err(|e| not_elf(e.to_string()))?;
        if elf.format() != object::BinaryFormat::Elf {
            return Err(not_elf(format!("{:?} object", elf.format())));
        }
        if elf.architecture() != object::Architecture::X86_64 {
            return Err(GoElfError::UnsupportedArch {
                path: path.to_path_buf(),
                arch: match elf.architecture() {
                    object::Architecture::Aarch64 => "arm64 (aarch64)".to_string(),
                    other => format!("{other:?}").to_lowercase(),
                },
            });
        }
        let segments: Vec<Segment> = elf
            .segments()
            .map(|s| {
                let (file_offset, file_size) = s.file_range();
                Segment {
                    vaddr: s.address(),
                    file_offset,
                    file_size,
                }
            })
            .collect();
        let build_info = match elf.section_by_name(".go.buildinfo") {
            Some(section) => {
                let data = section.data().map_err(|e| GoElfError::BadBuildInfo {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                let read_vaddr = |vaddr: u64, len: u64| read_at_vaddr(&map, &segments, vaddr, len);
                buildinfo::parse(data, read_vaddr).map_err(|reason| GoElfError::BadBuildInfo {
                    path: path.to_path_buf(),
                    reason,
                })?
            }
            None => {
                return Err(GoElfError::NotGo {
                    path: path.to_path_buf(),
                });
            }
        };
        let sections = REMEMBERED_SECTIONS
            .iter()
            .filter_map(|&name| {
                let section = elf.section_by_name(name)?;
                Some((name, (section.address(), section.size())))
            })
            .collect();
        let go_build_id = elf
            .section_by_name(".note.go.buildid")
            .and_then(|section| section.data().ok())
            .and_then(go_build_id_from_note);
        let mut functions = HashMap::new();
        let mut has_symtab = false;
        let mut runtime_types = None;
        let mut gofunc = None;
        for symbol in elf.symbols() {
            has_symtab = true;
            if symbol.kind() != object::SymbolKind::Text {
                match symbol.name() {
                    Ok("runtime.types") => runtime_types = Some(symbol.address()),
                    // What the linker stores in moduledata.gofunc, the funcdata base
                    // (src/cmd/link/internal/ld/symtab.go `symtab`): "go.func.*" in Go
                    // 1.19, "go:func.*" in 1.21–1.27 (the ':' came with the 1.20 magic).
                    Ok("go:func.*" | "go.func.*") => gofunc = Some(symbol.address()),
                    _ => {}
                }
                continue;
            }
            if let Ok(name) = symbol.name() {
                functions.insert(
                    name.to_string(),
                    FunctionSymbol {
                        vaddr: symbol.address(),
                        size: symbol.size(),
                    },
                );
            }
        }
        drop(elf);
        Ok(GoBinary {
            path: path.to_path_buf(),
            map,
            build_info,
            functions,
            segments,
            has_symtab,
            runtime_types,
            gofunc,
            sections,
            go_build_id,
        })
    }

    /// The Go build ID: with device and inode, what tells one build of a binary from
    /// another when a file is replaced in place.
    pub fn go_build_id(&self) -> Option<&str> {
        self.go_build_id.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// Layouts of the named structs from DWARF; Ok(None) when the binary has none.
    pub fn dwarf_structs(
        &self,
        wanted: &[&str],
    ) -> Result<Option<std::collections::HashMap<String, dwarf::StructLayout>>, GoElfError> {
        let elf = object::File::parse(&*self.map).map_err(|e| GoElfError::NotElf {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        dwarf::read_structs(&elf, wanted).map_err(|source| GoElfError::Dwarf {
            path: self.path.clone(),
            source,
        })
    }

    /// Base address of type names (`moduledata.types`): the `runtime.types` symbol, or
    /// in a stripped binary the `types` field of the first moduledata, found by its
    /// first word pointing at the pclntab (src/runtime/symtab.go: `pcHeader`).
    /// `moduledata_types` is that field's offset (DWARF or the offsets table).
    pub fn types_base(&self, moduledata_types: Option<u32>) -> Option<u64> {
        if let Some(base) = self.runtime_types {
            return Some(base);
        }
        self.moduledata_word(moduledata_types?)
    }

    /// Base of funcdata offsets (`moduledata.gofunc`), where the inline trees are: the
    /// `go:func.*` symbol, or in a stripped binary the moduledata field at offset
    /// `moduledata_gofunc` (DWARF or the offsets table), found as in [`Self::types_base`].
    pub fn gofunc_base(&self, moduledata_gofunc: Option<u32>) -> Option<u64> {
        if let Some(base) = self.gofunc {
            return Some(base);
        }
        self.moduledata_word(moduledata_gofunc?)
            .filter(|&base| base != 0)
    }

    /// The bytes from `gofunc_base` to the end of the segment holding them: the extent
    /// of go:func.* is recorded nowhere the runtime reads (`funcdata` adds offsets to
    /// its start), so inline.rs bounds every read by this.
    pub fn gofunc(&self, gofunc_base: u64) -> Option<&[u8]> {
        let segment = self.segments.iter().find(|s| {
            gofunc_base
                .checked_sub(s.vaddr)
                .is_some_and(|delta| delta < s.file_size)
        })?;
        let len = segment.vaddr + segment.file_size - gofunc_base;
        self.read(gofunc_base, len)
    }

    /// The pointer-sized word at `field` bytes into the first moduledata.
    fn moduledata_word(&self, field: u32) -> Option<u64> {
        let moduledata = self.find_moduledata()?;
        let bytes = self.read(moduledata.checked_add(u64::from(field))?, 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn find_moduledata(&self) -> Option<u64> {
        // Go 1.26+ gives moduledata a section of its own (docs/go-runtime.md, "Reading a binary").
        if let Some(&(address, _)) = self.sections.get(".go.module") {
            return Some(address);
        }
        let &(pclntab, _) = self.pclntab_section()?;
        let &(start, size) = self.sections.get(".noptrdata")?;
        let data = self.read(start, size)?;
        let needle = pclntab.to_le_bytes();
        data.chunks_exact(8)
            .position(|word| word == needle)
            .map(|i| start + 8 * i as u64)
    }

    /// Bytes of the file at link-time address `vaddr`.
    pub fn read(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        read_at_vaddr(&self.map, &self.segments, vaddr, len)
    }

    /// The Go name of the type descriptor at link-time address `type_vaddr`.
    pub fn type_name(
        &self,
        types_base: u64,
        type_vaddr: u64,
        layout: types::TypeLayout,
    ) -> Result<String, types::TypeNameError> {
        types::type_name(
            |vaddr, len| self.read(vaddr, len),
            types_base,
            type_vaddr,
            layout,
        )
    }

    /// (DWARF type name, runtime type descriptor address) for every DWARF type that
    /// records one; empty without DWARF.
    pub fn dwarf_runtime_types(&self) -> Result<Vec<(String, u64)>, GoElfError> {
        let elf = object::File::parse(&*self.map).map_err(|e| GoElfError::NotElf {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        dwarf::runtime_type_addresses(&elf).map_err(|source| GoElfError::Dwarf {
            path: self.path.clone(),
            source,
        })
    }

    /// False for binaries linked with `-ldflags=-s` (no .symtab).
    pub fn has_symtab(&self) -> bool {
        self.has_symtab
    }

    /// A function's address range: from .symtab, or from the pclntab when the binary
    /// is stripped.
    pub fn function(&self, name: &str) -> Option<FunctionSymbol> {
        if let Some(symbol) = self.functions.get(name) {
            return Some(*symbol);
        }
        if self.has_symtab {
            return None;
        }
        let table = self.pclntab().ok()??;
        let function = table.find_function(name).ok()??;
        Some(FunctionSymbol {
            vaddr: function.entry,
            size: function.end - function.entry,
        })
    }

    /// The Go function table, if the binary has one.
    pub fn pclntab(&self) -> Result<Option<pclntab::Pclntab<'_>>, pclntab::PclntabError> {
        let Some(&(address, size)) = self.pclntab_section() else {
            return Ok(None);
        };
        let bytes = self
            .read(address, size)
            .ok_or(pclntab::PclntabError::Corrupt("section outside the file"))?;
        pclntab::Pclntab::parse(bytes, self.text_start_fallback()).map(Some)
    }

    fn pclntab_section(&self) -> Option<&(u64, u64)> {
        self.sections
            .get(".gopclntab")
            .or_else(|| self.sections.get(".data.rel.ro.gopclntab"))
    }

    /// Where function entry offsets count from when the pclntab header says 0 (Go
    /// 1.26+): moduledata.text, as the runtime does, else the .text section's address
    /// (as cmd/internal/objfile does; wrong only for externally linked binaries, whose
    /// .text starts with C code — and those keep moduledata.text readable).
    fn text_start_fallback(&self) -> u64 {
        let from_moduledata = self.sections.get(".go.module").and_then(|&(address, _)| {
            let bytes = self.read(address.checked_add(MODULEDATA_TEXT_OFFSET)?, 8)?;
            let text = u64::from_le_bytes(bytes.try_into().ok()?);
            (text != 0).then_some(text)
        });
        from_moduledata
            .or_else(|| self.sections.get(".text").map(|&(address, _)| address))
            .unwrap_or(0)
    }

    /// The machine code of a function, straight from the mapped file.
    pub fn code(&self, function: FunctionSymbol) -> Option<&[u8]> {
        read_at_vaddr(&self.map, &self.segments, function.vaddr, function.size)
    }

    /// File offset of a virtual address: what uprobes are attached at.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        file_offset(&self.segments, vaddr)
    }

    /// Link-time virtual address of a file offset (the reverse of [`Self::file_offset`]).
    pub fn vaddr_of_file_offset(&self, offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            let delta = offset.checked_sub(s.file_offset)?;
            (delta < s.file_size).then(|| s.vaddr + delta)
        })
    }

    /// Load bias of this binary in a process, from the text of its /proc/PID/maps:
    /// add it to link-time addresses to get run-time ones (0 unless PIE).
    pub fn load_bias(&self, proc_maps: &str, inode: u64) -> Option<u64> {
        procmaps::load_bias(&procmaps::parse_maps(proc_maps), inode, |offset| {
            self.vaddr_of_file_offset(offset)
        })
    }
}

fn file_offset(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments.iter().find_map(|s| {
        let delta = vaddr.checked_sub(s.vaddr)?;
        (delta < s.file_size).then(|| s.file_offset + delta)
    })
}

fn read_at_vaddr<'a>(
    map: &'a [u8],
    segments: &[Segment],
    vaddr: u64,
    len: u64,
) -> Option<&'a [u8]> {
    let start = usize::try_from(file_offset(segments, vaddr)?).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    // The whole range must lie in the same segment's file bytes.
    let last = file_offset(segments, vaddr.checked_add(len.checked_sub(1)?)?)?;
    if last as usize != end - 1 {
        return None;
    }
    map.get(start..end)
}

/// The descriptor of the ELF note cmd/link writes as `.note.go.buildid`
/// (src/cmd/link/internal/ld/elf.go `addgonote`: name "Go", type 4, the build ID).
fn go_build_id_from_note(note: &[u8]) -> Option<String> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(note.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let (name_len, desc_len, kind) = (word(0)?, word(4)?, word(8)?);
    const GO_BUILD_ID_TAG: usize = 4;
    if kind != GO_BUILD_ID_TAG || note.get(12..14)? != b"Go" {
        return None;
    }
    let desc_start = 12usize.checked_add(name_len.checked_add(3)? & !3)?;
    let desc = note.get(desc_start..desc_start.checked_add(desc_len)?)?;
    String::from_utf8(desc.to_vec()).ok()
}

/// How long a 64-bit ELF file must be for everything its headers point to (program
/// segments, section contents, the header tables) to be in it; None when the headers
/// themselves cannot be read (then the full parse says why). A copy cut short — a
/// download or a full disk — otherwise fails with a confusing message deep in a
/// section.
fn described_length(data: &[u8]) -> Option<u64> {
    use object::{
        Endianness,
        elf::{FileHeader64, SHT_NOBITS},
        read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _},
    };
    let header = FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    // Saturating: the numbers are the file's word, and a hostile file's overflow must
    // read as "longer than the file", not wrap.
    let table_end = |offset: u64, count: u16, size: u16| {
        offset.saturating_add(u64::from(count) * u64::from(size))
    };
    let mut end = table_end(
        header.e_shoff(endian),
        header.e_shnum(endian),
        header.e_shentsize(endian),
    )
    .max(table_end(
        header.e_phoff(endian),
        header.e_phnum(endian),
        header.e_phentsize(endian),
    ));
    if let Ok(segments) = header.program_headers(endian, data) {
        for segment in segments {
            end = end.max(
                segment
                    .p_offset(endian)
                    .saturating_add(segment.p_filesz(endian)),
            );
        }
    }
    if let Ok(sections) = header.section_headers(endian, data) {
        for section in sections.iter().filter(|s| s.sh_type(endian) != SHT_NOBITS) {
            end = end.max(
                section
                    .sh_offset(endian)
                    .saturating_add(section.sh_size(endian)),
            );
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_vaddr_to_file_offset_within_segments_only() {
        let segments = [
            Segment {
                vaddr: 0x400000,
                file_offset: 0,
                file_size: 0x1000,
            },
            Segment {
                vaddr: 0x402000,
                file_offset: 0x1000,
                file_size: 0x500,
            },
        ];
        assert_eq!(file_offset(&segments, 0x400010), Some(0x10));
        assert_eq!(file_offset(&segments, 0x402004), Some(0x1004));
        assert_eq!(file_offset(&segments, 0x401000), None);
        assert_eq!(file_offset(&segments, 0x402500), None);
        let bytes = vec![7u8; 0x1500];
        assert!(read_at_vaddr(&bytes, &segments, 0x400ff0, 0x20).is_none());
        assert_eq!(
            read_at_vaddr(&bytes, &segments, 0x402000, 4),
            Some(&bytes[0x1000..0x1004])
        );
    }

    #[test]
    fn reads_the_go_build_id_note() {
        let id = b"abc/def";
        let mut note = Vec::new();
        for word in [3u32, id.len() as u32, 4] {
            note.extend(word.to_le_bytes());
        }
        note.extend(b"Go\0\0");
        note.extend(id);
        assert_eq!(go_build_id_from_note(&note).as_deref(), Some("abc/def"));
        note[8] = 1; // another note type
        assert_eq!(go_build_id_from_note(&note), None);
        assert_eq!(go_build_id_from_note(&note[..10]), None);
    }
}
