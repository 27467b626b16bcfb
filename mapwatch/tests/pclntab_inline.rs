//! Inlined frames (goelf/inline.rs) checked against an independent truth, for every
//! fixture flavour: the DWARF of the same binary, whose DW_TAG_inlined_subroutine
//! entries (DW_AT_abstract_origin, ranges, DW_AT_call_line) the compiler writes from
//! its own inlining tree. At every instruction of every function of slicegrow, the
//! pclntab's frames are DWARF's inlined subroutines covering that PC, innermost first,
//! then the physical function, each outer frame at the call line of the frame inside
//! it. The stripped build (no .symtab, no DWARF: go:func.* found through
//! moduledata.gofunc) gives the same frames. And the appends of `points` and
//! `pointers`, inlined into `main.workload`, are named after them by the symbolizer.
//! A companion of pclntab.rs, apart for size. No root needed.
mod support;

use std::{borrow::Cow, collections::HashMap, path::Path, sync::Arc};

use gimli::{AttributeValue, EndianSlice, LittleEndian, constants};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use mapwatch::{
    goelf::{
        GoBinary, decode,
        pclntab::{PclnFunction, SourceLine},
    },
    goruntime::{
        GoVersion, MapImplementation,
        functions::GROWSLICE,
        offsets::{Field, StructOffsets, table_offsets},
    },
    symbolize::Symbolizer,
};
use support::{fixtures_dir, flavors_with, in_ci};

/// One DW_TAG_inlined_subroutine of a function.
#[derive(Debug)]
struct Inlined {
    name: String,
    ranges: Vec<(u64, u64)>,
    call_line: u64,
    /// 1 for a call inlined into the function itself, 2 for one inlined into that …
    depth: usize,
}

/// DWARF's inlined subroutines of every concrete subprogram, by its low PC (names do
/// not tell generic instantiations apart in the pclntab).
fn dwarf_inlines(data: &[u8]) -> HashMap<u64, Vec<Inlined>> {
    let elf = object::File::parse(data).unwrap();
    let sections = gimli::DwarfSections::load(|id: gimli::SectionId| {
        Ok::<_, gimli::Error>(
            elf.section_by_name(id.name())
                .map(|s| s.uncompressed_data().unwrap())
                .unwrap_or(Cow::Borrowed(&[][..])),
        )
    })
    .unwrap();
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let name_of = |unit: &gimli::Unit<EndianSlice<'_, LittleEndian>>,
                   entry: &gimli::DebuggingInformationEntry<'_, '_, _>|
     -> Option<String> {
        let value = entry.attr_value(constants::DW_AT_name).unwrap()?;
        let name = dwarf.attr_string(unit, value).unwrap();
        Some(name.to_string_lossy().into_owned())
    };
    let mut found: HashMap<u64, Vec<Inlined>> = HashMap::new();
    // Abstract subprograms may be in another unit: names by .debug_info offset, and
    // the origin of each inlined subroutine, resolved at the end.
    let mut names: HashMap<usize, String> = HashMap::new();
    let mut origins: Vec<(u64, usize, usize)> = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().unwrap() {
        let unit = dwarf.unit(header).unwrap();
        let mut entries = unit.entries();
        let mut depth: isize = 0;
        // The concrete subprogram being read: name, low PC, depth.
        let mut current: Option<(String, u64, isize)> = None;
        while let Some((delta, entry)) = entries.next_dfs().unwrap() {
            depth += delta;
            if current.as_ref().is_some_and(|(_, _, d)| depth <= *d) {
                current = None;
            }
            match entry.tag() {
                constants::DW_TAG_subprogram => {
                    if let Some(name) = name_of(&unit, entry)
                        && let Some(offset) = entry.offset().to_debug_info_offset(&unit.header)
                    {
                        names.insert(offset.0, name);
                    }
                    if let Some(low_pc) = entry.attr_value(constants::DW_AT_low_pc).unwrap()
                        && let Some(name) = name_of(&unit, entry)
                    {
                        let low_pc = dwarf.attr_address(&unit, low_pc).unwrap().unwrap();
                        current = Some((name, low_pc, depth));
                    }
                }
                constants::DW_TAG_inlined_subroutine => {
                    let Some((function, low_pc, function_depth)) = &current else {
                        continue;
                    };
                    let origin = match entry.attr_value(constants::DW_AT_abstract_origin).unwrap() {
                        Some(AttributeValue::UnitRef(origin)) => {
                            origin.to_debug_info_offset(&unit.header).unwrap().0
                        }
                        Some(AttributeValue::DebugInfoRef(origin)) => origin.0,
                        other => panic!("{function}: inlined subroutine with origin {other:?}"),
                    };
                    let mut ranges = Vec::new();
                    let mut iter = dwarf.die_ranges(&unit, entry).unwrap();
                    while let Some(range) = iter.next().unwrap() {
                        ranges.push((range.begin, range.end));
                    }
                    let call_line = entry
                        .attr_value(constants::DW_AT_call_line)
                        .unwrap()
                        .and_then(|v| v.udata_value())
                        .unwrap_or_else(|| panic!("{function}: inlined call without a line"));
                    let depth = usize::try_from(depth - function_depth)
                        .expect("inlined subroutine below its function");
                    let calls = found.entry(*low_pc).or_default();
                    origins.push((*low_pc, calls.len(), origin));
                    calls.push(Inlined {
                        name: String::new(),
                        ranges,
                        call_line,
                        depth,
                    });
                }
                _ => {}
            }
        }
    }
    for (low_pc, index, origin) in origins {
        found.get_mut(&low_pc).unwrap()[index].name = names
            .get(&origin)
            .unwrap_or_else(|| panic!("{low_pc:#x}: no name at origin {origin:#x}"))
            .clone();
    }
    found
}

/// Whether pclntab name `pcln` and DWARF name `dwarf` are one function: the pclntab
/// abbreviates type arguments to "[...]" (cmd/link's funcnametab), DWARF spells them
/// out (`main.fill[go.shape.uint8]`).
fn same_function(pcln: &str, dwarf: &str) -> bool {
    let elide = |name: &str| -> String {
        let mut out = String::new();
        let mut depth = 0usize;
        for c in name.chars() {
            match c {
                '[' => {
                    if depth == 0 {
                        out.push_str("[...]");
                    }
                    depth += 1;
                }
                ']' if depth > 0 => depth -= 1,
                _ if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    };
    pcln == dwarf || elide(pcln) == elide(dwarf)
}

/// Offsets for a binary without DWARF, as the planner takes them.
fn offsets_of(binary: &GoBinary) -> StructOffsets {
    let info = binary.build_info();
    let version = GoVersion::parse(&info.go_version).unwrap();
    let maps = MapImplementation::of(&version, info.goexperiment());
    table_offsets(version.minor, maps).unwrap()
}

/// Every instruction start of `function`, with the frames the pclntab gives there;
/// None when the function does not decode (data in assembly functions' text).
fn frames_of<'a>(
    binary: &'a GoBinary,
    function: &PclnFunction<'_>,
    gofunc: Option<&[u8]>,
) -> Option<Vec<(u64, Vec<SourceLine<'a>>)>> {
    let table = binary.pclntab().unwrap().unwrap();
    let code = binary.read(function.entry, function.end - function.entry)?;
    let layout = decode::analyze_function(code, function.entry).ok()?;
    let frames = layout.boundaries.iter().map(|offset| {
        let pc = function.entry + offset;
        (pc, table.frames(pc, gofunc).unwrap())
    });
    Some(frames.collect())
}

/// go:func.* as the symbolizer finds it: the symbol, or moduledata.gofunc at the
/// table's offset in a stripped binary.
fn gofunc_of(binary: &GoBinary) -> &[u8] {
    let base = binary
        .gofunc_base(offsets_of(binary).get(Field::ModuledataGofunc))
        .unwrap_or_else(|| panic!("{}: no go:func.*", binary.path().display()));
    binary.gofunc(base).unwrap()
}

#[derive(Debug, Default)]
struct Counts {
    pcs: usize,
    /// PCs in inlined code, by both.
    inlined: usize,
    /// PCs the pclntab puts in inlined code and DWARF in none.
    dwarf_silent: usize,
}

/// At every instruction of `function` that DWARF puts in inlined code: the frames are
/// DWARF's inlined subroutines covering the PC, innermost first, each outer frame at
/// the call line of the one inside it, then `function` itself. Elsewhere, one frame,
/// except that the compiler's DWARF misses a few instructions of some inlined calls
/// (runtime.lock's last, inlined lockWithRank; runtime.alignUp in
/// `(*pageAlloc).sysGrow.func2`): tolerated, and counted, unless `strict`.
fn check_against_dwarf(
    name: &str,
    frames: &[(u64, Vec<SourceLine<'_>>)],
    inlines: &[Inlined],
    strict: bool,
    counts: &mut Counts,
) {
    for (pc, frames) in frames {
        let Some(physical) = frames.last() else {
            continue; // padding after the last instruction
        };
        counts.pcs += 1;
        let mut covering: Vec<&Inlined> = inlines
            .iter()
            .filter(|i| i.ranges.iter().any(|&(b, e)| b <= *pc && *pc < e))
            .collect();
        covering.sort_by_key(|i| std::cmp::Reverse(i.depth));
        if covering.is_empty() && frames.len() > 1 && !strict {
            counts.dwarf_silent += 1;
            continue;
        }
        let pcln: Vec<(&str, u32)> = frames.iter().map(|f| (f.function, f.line)).collect();
        let dwarf: Vec<(&str, u64)> = covering
            .iter()
            .map(|i| (i.name.as_str(), i.call_line))
            .collect();
        let context = format!("{name}: {pc:#x}: pclntab {pcln:?}, DWARF {dwarf:?}");
        assert_eq!(frames.len(), covering.len() + 1, "{context}");
        for (i, inlined) in covering.iter().enumerate() {
            assert!(
                same_function(frames[i].function, &inlined.name),
                "frame {i}: {context}"
            );
            assert_eq!(
                u64::from(frames[i + 1].line),
                inlined.call_line,
                "call line of frame {i}: {context}"
            );
        }
        assert_eq!(physical.function, name, "{context}");
        if !covering.is_empty() {
            counts.inlined += 1;
        }
    }
}

/// Every instruction of every function of slicegrow, in every flavour.
#[test]
fn inlined_frames_match_dwarf_in_every_fixture() {
    let mut checked = 0;
    for flavor in flavors_with("slicegrow") {
        let path = fixtures_dir().join(&flavor).join("slicegrow");
        let inlines = dwarf_inlines(&std::fs::read(&path).unwrap());
        let binary = GoBinary::open(&path).unwrap();
        let gofunc = gofunc_of(&binary);
        let table = binary.pclntab().unwrap().unwrap();
        let mut counts = Counts::default();
        let mut undecoded = 0;
        for function in table.functions().map(Result::unwrap) {
            let Some(frames) = frames_of(&binary, &function, Some(gofunc)) else {
                undecoded += 1;
                continue;
            };
            // The code the tests profile, where DWARF is complete.
            let strict = function.name.starts_with("main.") || function.name == GROWSLICE;
            let inlined = inlines.get(&function.entry).map_or(&[][..], Vec::as_slice);
            check_against_dwarf(function.name, &frames, inlined, strict, &mut counts);
        }
        eprintln!("{flavor}: {counts:?}, {undecoded} functions not decoded");
        assert!(counts.inlined > 10_000, "{flavor}: {counts:?}");
        assert!(
            counts.dwarf_silent * 1000 < counts.pcs,
            "{flavor}: {counts:?}"
        );
        assert!(
            undecoded * 100 < table.len(),
            "{flavor}: {undecoded} undecoded"
        );
        checked += 1;
    }
    assert!(checked > 0 || !in_ci(), "no fixture checked against DWARF");
}

/// The section holding `address` in the ELF file at `path`, and the offset in it.
fn section_offset(path: &Path, address: u64) -> (String, u64) {
    let data = std::fs::read(path).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    elf.sections()
        .find(|s| s.address() <= address && address < s.address() + s.size())
        .map(|s| (s.name().unwrap().to_string(), address - s.address()))
        .unwrap_or_else(|| panic!("{}: {address:#x} in no section", path.display()))
}

/// The generated offsets table's moduledata.gofunc reads, in the moduledata of every
/// unstripped build, the go:func.* symbol's address.
#[test]
fn moduledata_gofunc_is_the_go_func_symbol() {
    let mut checked = 0;
    for flavor in flavors_with("slicegrow") {
        for name in ["slicegrow", "slicegrow-pie", "slicegrow-cgo"] {
            let path = fixtures_dir().join(&flavor).join(name);
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            let elf = object::File::parse(&*data).unwrap();
            let symbol = |wanted: &[&str]| {
                elf.symbols()
                    .find(|s| s.name().is_ok_and(|n| wanted.contains(&n)))
                    .map(|s| s.address())
                    .unwrap_or_else(|| panic!("{}: no {wanted:?}", path.display()))
            };
            let moduledata = symbol(&["runtime.firstmoduledata"]);
            let gofunc = symbol(&["go:func.*", "go.func.*"]);
            let binary = GoBinary::open(&path).unwrap();
            let field = offsets_of(&binary).get(Field::ModuledataGofunc).unwrap();
            let word = binary.read(moduledata + u64::from(field), 8).unwrap();
            let word = u64::from_le_bytes(word.try_into().unwrap());
            // PIE included: though relocated at load time, the word's bytes in the file
            // are the link-time address too, which is what a stripped PIE build needs.
            assert_eq!(word, gofunc, "{}: moduledata+{field}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 0 || !in_ci(), "no moduledata checked");
}

/// Where the unstripped and stripped builds of slicegrow are both there: go:func.*,
/// found through moduledata.gofunc in the stripped one, lies at the same place of the
/// same section as the symbol in the other (addresses differ: 1.27's stripped build has
/// a longer .rodata), and every instruction of every function has the same frames.
#[test]
fn stripped_builds_have_the_same_frames() {
    let mut compared = 0;
    for flavor in flavors_with("slicegrow-stripped") {
        let dir = fixtures_dir().join(&flavor);
        let Ok(full) = GoBinary::open(&dir.join("slicegrow")) else {
            continue;
        };
        let stripped = GoBinary::open(&dir.join("slicegrow-stripped")).unwrap();
        assert!(!stripped.has_symtab(), "{flavor}");
        let gofunc_field = offsets_of(&stripped).get(Field::ModuledataGofunc);
        assert_eq!(
            section_offset(stripped.path(), stripped.gofunc_base(gofunc_field).unwrap()),
            section_offset(full.path(), full.gofunc_base(None).unwrap()),
            "{flavor}: go:func.*"
        );
        let (full_table, stripped_table) = (
            full.pclntab().unwrap().unwrap(),
            stripped.pclntab().unwrap().unwrap(),
        );
        let mut inlined = 0;
        for function in stripped_table.functions().map(Result::unwrap) {
            let frames = frames_of(&stripped, &function, Some(gofunc_of(&stripped)));
            let expected = frames_of(&full, &function, Some(gofunc_of(&full)));
            assert_eq!(frames, expected, "{flavor}: {}", function.name);
            inlined += frames
                .iter()
                .flatten()
                .filter(|(_, frames)| frames.len() > 1)
                .count();
        }
        assert_eq!(full_table.len(), stripped_table.len());
        assert!(inlined > 10_000, "{flavor}: {inlined} PCs in inlined code");
        compared += 1;
    }
    assert!(compared > 0 || !in_ci(), "no stripped build compared");
}

/// 1-based numbers of the lines of slicegrow's source that contain `text`.
fn source_lines(text: &str) -> Vec<u32> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/slicegrow/main.go");
    std::fs::read_to_string(source)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(text))
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

/// `points` and `pointers` are inlined into `main.workload` by every Go version: the
/// growslice calls of their appends are named after them, at their `// site:` lines,
/// with `main.workload` at the line calling them as the outer frame, through the
/// symbolizer, in every build of slicegrow (stripped and PIE included).
#[test]
fn inlined_appends_are_named_after_their_function() {
    let mut checked = 0;
    for flavor in flavors_with("slicegrow") {
        for name in ["slicegrow", "slicegrow-stripped", "slicegrow-pie"] {
            let path = fixtures_dir().join(&flavor).join(name);
            let Ok(binary) = GoBinary::open(&path) else {
                continue;
            };
            let offsets = offsets_of(&binary);
            let workload = binary.function("main.workload").unwrap();
            let code = binary.code(workload).unwrap();
            let calls = decode::call_returns(code, workload.vaddr).unwrap();
            let growslice = binary.function(GROWSLICE).unwrap().vaddr;
            let mut symbolizer = Symbolizer::new(Arc::new(binary), 0, Some(&offsets));
            for (inlined, call) in [
                ("main.points", "\tpoints(3000)"),
                ("main.pointers", "\tpointers(3000, &point{})"),
            ] {
                let site = source_lines(&format!("// site: {}", &inlined[5..]));
                let call_line = source_lines(call);
                let mut found = 0;
                for call in &calls {
                    let return_pc = workload.vaddr + call.return_offset;
                    let frames = symbolizer.call_frames(return_pc);
                    if frames.first().is_none_or(|f| f.function != inlined) {
                        continue;
                    }
                    let where_ = format!("{}: {return_pc:#x}: {frames:?}", path.display());
                    assert_eq!(frames.len(), 2, "{where_}");
                    assert!(frames[0].file.ends_with("fixtures/slicegrow/main.go"));
                    assert_eq!(frames[1].function, "main.workload", "{where_}");
                    assert_eq!(frames[1].file, frames[0].file, "{where_}");
                    assert_eq!([frames[1].line], *call_line, "{where_}");
                    // Besides the append's growslice call, the inlined loop has others.
                    if site.contains(&frames[0].line) && call.target == Some(growslice) {
                        found += 1;
                    }
                    assert_eq!(symbolizer.call_site(return_pc).as_ref(), frames.first());
                }
                assert!(
                    found > 0,
                    "{}: no growslice call at {inlined}'s append ({site:?})",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0 || !in_ci(), "no slicegrow build checked");
}
