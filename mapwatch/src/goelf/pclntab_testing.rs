//! Synthetic function tables for the unit tests of pclntab.rs and inline.rs, laid out
//! as src/cmd/link/internal/ld/pcln.go writes them, in either layout.
use super::pclntab::{
    CU_WORD, FILETAB_WORD, FUNC_NAME_OFF, FUNC_NPCDATA, FUNC_PCFILE, FUNC_PCLN, FUNC_SIZE_118,
    FUNC_SIZE_120, FUNCNAME_WORD, GO_118_MAGIC, HEADER_LEN, NFUNC_WORD, PCLN_WORD, PCTAB_WORD,
    TEXT_START_WORD,
};

/// One function: pc-value tables as (value, pc length) runs.
pub struct Func {
    pub name: &'static str,
    pub entry_off: u32,
    pub pcfile: Vec<(i32, u32)>,
    pub pcln: Vec<(i32, u32)>,
    /// Its PCDATA_InlTreeIndex table; empty: no pcdata and no funcdata at all.
    pub inline_index: Vec<(i32, u32)>,
    /// Its inline tree: (inlined function, parentPc).
    pub inlined: Vec<(&'static str, i32)>,
}

impl Func {
    pub fn plain(
        name: &'static str,
        entry_off: u32,
        pcfile: Vec<(i32, u32)>,
        pcln: Vec<(i32, u32)>,
    ) -> Func {
        Func {
            name,
            entry_off,
            pcfile,
            pcln,
            inline_index: Vec::new(),
            inlined: Vec::new(),
        }
    }
}

/// A table and the `go:func.*` data its funcdata offsets point into.
pub struct Built {
    pub table: Vec<u8>,
    pub gofunc: Vec<u8>,
}

fn varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encodes runs the way cmd/internal/obj/pcln.go `funcpctab` does.
fn pc_table(runs: &[(i32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = -1i32;
    for &(value, len) in runs {
        let delta = value - prev;
        varint(&mut out, ((delta << 1) ^ (delta >> 31)) as u32);
        varint(&mut out, len);
        prev = value;
    }
    out.push(0);
    out
}

/// Header, funcnametab, cutab, filetab, pctab, then the functab and the `_func`
/// records (40 bytes with the Go 1.18 magic, 44 with 1.20's), each followed by its
/// pcdata and funcdata offsets. Inline trees go to `gofunc`, in the inlinedCall
/// layout of the magic's version.
pub fn build(magic: u32, text_start: u64, funcs: &[Func], end_off: u32) -> Built {
    let go_118 = magic == GO_118_MAGIC;
    let files: &[&str] = &["/src/a.go", "/src/b.go"];
    let mut t = vec![0u8; HEADER_LEN];
    t[0..4].copy_from_slice(&magic.to_le_bytes());
    t[6] = 1;
    t[7] = 8;
    let set = |t: &mut Vec<u8>, word: usize, value: u64| {
        t[8 + word * 8..16 + word * 8].copy_from_slice(&value.to_le_bytes());
    };
    set(&mut t, NFUNC_WORD, funcs.len() as u64);
    set(&mut t, 1, files.len() as u64);
    set(&mut t, TEXT_START_WORD, text_start);

    let funcnames = t.len();
    set(&mut t, FUNCNAME_WORD, funcnames as u64);
    let mut names: Vec<(&str, u32)> = Vec::new();
    let all_names = funcs
        .iter()
        .map(|f| f.name)
        .chain(funcs.iter().flat_map(|f| f.inlined.iter().map(|&(n, _)| n)));
    for name in all_names {
        if !names.iter().any(|&(n, _)| n == name) {
            names.push((name, (t.len() - funcnames) as u32));
            t.extend(name.as_bytes());
            t.push(0);
        }
    }
    let name_off = |name: &str| {
        names
            .iter()
            .find(|&&(n, _)| n == name)
            .map_or(0, |&(_, o)| o)
    };
    let cutab = t.len();
    set(&mut t, CU_WORD, cutab as u64);
    let mut file_off = 0u32;
    for file in files {
        t.extend(file_off.to_le_bytes());
        file_off += file.len() as u32 + 1;
    }
    // A file the CU does not use.
    t.extend(u32::MAX.to_le_bytes());
    let filetab = t.len();
    set(&mut t, FILETAB_WORD, filetab as u64);
    for file in files {
        t.extend(file.as_bytes());
        t.push(0);
    }
    let pctab = t.len();
    set(&mut t, PCTAB_WORD, pctab as u64);
    t.push(0); // offset 0 means "no table"
    let mut tables = Vec::new();
    for f in funcs {
        let mut offsets = Vec::new();
        for runs in [&f.pcfile, &f.pcln, &f.inline_index] {
            offsets.push((t.len() - pctab) as u32);
            t.extend(pc_table(runs));
        }
        tables.push(offsets);
    }
    while !t.len().is_multiple_of(8) {
        t.push(0);
    }

    // Some other function's funcdata first, so that tree offsets are not 0.
    let mut gofunc = vec![0xaa; 8];
    let mut tree_offsets = Vec::new();
    for f in funcs {
        tree_offsets.push(gofunc.len() as u32);
        for &(name, parent_pc) in &f.inlined {
            if go_118 {
                // parent, funcID, pad, file, line: not read.
                gofunc.extend([0xff, 0xff, 0, 0]);
                gofunc.extend([0; 8]);
                gofunc.extend(name_off(name).to_le_bytes());
                gofunc.extend(parent_pc.to_le_bytes());
            } else {
                // funcID, pad; startLine at the end: not read.
                gofunc.extend([0; 4]);
                gofunc.extend(name_off(name).to_le_bytes());
                gofunc.extend(parent_pc.to_le_bytes());
                gofunc.extend([0; 4]);
            }
        }
    }

    let fixed = if go_118 { FUNC_SIZE_118 } else { FUNC_SIZE_120 };
    let records: Vec<Vec<u8>> = funcs
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut record = vec![0u8; fixed];
            record[0..4].copy_from_slice(&f.entry_off.to_le_bytes());
            record[FUNC_NAME_OFF..FUNC_NAME_OFF + 4]
                .copy_from_slice(&name_off(f.name).to_le_bytes());
            record[FUNC_PCFILE..FUNC_PCFILE + 4].copy_from_slice(&tables[i][0].to_le_bytes());
            record[FUNC_PCLN..FUNC_PCLN + 4].copy_from_slice(&tables[i][1].to_le_bytes());
            if !f.inline_index.is_empty() {
                // pcdata: UnsafePoint and StackMapIndex absent, then InlTreeIndex.
                record[FUNC_NPCDATA..FUNC_NPCDATA + 4].copy_from_slice(&3u32.to_le_bytes());
                record[fixed - 1] = 4; // nfuncdata: ArgsPointerMaps … InlTree
                for pcdata in [0, 0, tables[i][2]] {
                    record.extend(pcdata.to_le_bytes());
                }
                for funcdata in [u32::MAX, u32::MAX, u32::MAX, tree_offsets[i]] {
                    record.extend(funcdata.to_le_bytes());
                }
            }
            record
        })
        .collect();
    let pcln_start = t.len();
    set(&mut t, PCLN_WORD, pcln_start as u64);
    let mut record_off = (funcs.len() * 8 + 4).next_multiple_of(8);
    for (f, record) in funcs.iter().zip(&records) {
        t.extend(f.entry_off.to_le_bytes());
        t.extend((record_off as u32).to_le_bytes());
        record_off += record.len();
    }
    t.extend(end_off.to_le_bytes());
    t.resize(pcln_start + (funcs.len() * 8 + 4).next_multiple_of(8), 0);
    for record in records {
        t.extend(record);
    }
    Built { table: t, gofunc }
}

/// main.a at text+0x10 (a.go:10 for 4 bytes, a.go:11 for 8, padding to 0x20), nothing
/// inlined.
/// main.b at text+0x20: b.go:1000 for 8 bytes, then main.inl inlined (a.go:7 for 8),
/// called from +0.
/// main.c at text+0x30: a.go:20 for 4 bytes, main.mid inlined (a.go:30, called from
/// +0) for 4, and main.leaf inlined into main.mid (a.go:40 for 8, called from +4).
/// The table ends at +0x40.
pub fn sample(magic: u32, text_start: u64) -> Built {
    let funcs = [
        Func::plain("main.a", 0x10, vec![(0, 12)], vec![(10, 4), (11, 8)]),
        Func {
            inline_index: vec![(-1, 8), (0, 8)],
            inlined: vec![("main.inl", 0)],
            ..Func::plain(
                "main.b",
                0x20,
                vec![(1, 8), (0, 8)],
                vec![(1000, 8), (7, 8)],
            )
        },
        Func {
            inline_index: vec![(-1, 4), (0, 4), (1, 8)],
            inlined: vec![("main.mid", 0), ("main.leaf", 4)],
            ..Func::plain(
                "main.c",
                0x30,
                vec![(0, 16)],
                vec![(20, 4), (30, 4), (40, 8)],
            )
        },
    ];
    build(magic, text_start, &funcs, 0x40)
}
