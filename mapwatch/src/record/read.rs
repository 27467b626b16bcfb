//! Reads a record file (format.rs) into memory. A damaged or cut-off tail is not an
//! error: everything before it is kept and [`Recording::damage`] says what happened.
use std::{io::Read as _, path::Path};

use super::format::{
    Entry, FORMAT_VERSION, Header, MAGIC, MAX_BLOCK_BYTES, MAX_HEADER_BYTES, NameId, SiteId,
    Summary,
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "not a mapwatch record file (it does not start with {MAGIC:?}); make one with `mapwatch record`"
    )]
    NotARecord,
    #[error(
        "record format version {found} is not supported by this mapwatch (it reads version \
         {FORMAT_VERSION}); report it with the mapwatch that recorded it, or record again"
    )]
    UnsupportedVersion { found: u16 },
    #[error("the record file is cut off inside its header; nothing was captured")]
    TruncatedHeader,
    #[error("the record file's header is not valid: {0}")]
    BadHeader(#[from] serde_json::Error),
}

/// A source line, with its names resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SiteDef {
    pub function: NameId,
    pub file: NameId,
    pub line: u32,
}

/// A record file's content.
#[derive(Debug, Clone)]
pub struct Recording {
    pub header: Header,
    /// By [`NameId`]; `names[0]` is "".
    pub names: Vec<String>,
    /// By [`SiteId`]; `sites[0]` is the unknown site.
    pub sites: Vec<SiteDef>,
    /// The events in the order written (no definitions, no end).
    pub events: Vec<Entry>,
    /// Present when the capture ended normally.
    pub summary: Option<Summary>,
    /// What was wrong with the file's tail, if anything ("cut off in block 12", …).
    pub damage: Option<String>,
}

impl Recording {
    pub fn name(&self, id: NameId) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }

    pub fn site(&self, id: SiteId) -> Option<&SiteDef> {
        (id != 0).then(|| self.sites.get(id as usize)).flatten()
    }
}

pub fn read_file(path: &Path) -> Result<Recording, ReadError> {
    let io = |source| ReadError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io)?;
    read_bytes(&bytes)
}

pub fn read_bytes(bytes: &[u8]) -> Result<Recording, ReadError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(ReadError::NotARecord)?;
    let (version, rest) = split_u16(rest).ok_or(ReadError::TruncatedHeader)?;
    if version != FORMAT_VERSION {
        return Err(ReadError::UnsupportedVersion { found: version });
    }
    let (header_len, rest) = split_u32(rest).ok_or(ReadError::TruncatedHeader)?;
    if header_len > MAX_HEADER_BYTES || header_len as usize > rest.len() {
        return Err(ReadError::TruncatedHeader);
    }
    let (header, mut rest) = rest.split_at(header_len as usize);
    let header: Header = serde_json::from_slice(header)?;
    let mut recording = Recording {
        header,
        names: vec![String::new()],
        sites: vec![SiteDef {
            function: 0,
            file: 0,
            line: 0,
        }],
        events: Vec::new(),
        summary: None,
        damage: None,
    };
    let mut block = 0u64;
    while !rest.is_empty() {
        block += 1;
        match read_block(rest) {
            Ok((entries, tail)) => {
                if let Err(why) = recording.take(entries) {
                    recording.damage = Some(format!("block {block}: {why}"));
                    break;
                }
                rest = tail;
            }
            Err(why) => {
                recording.damage = Some(format!(
                    "block {block} {why}; the {} block(s) before it were read (a capture \
                     killed while writing?)",
                    block - 1
                ));
                break;
            }
        }
    }
    if recording.damage.is_none() && recording.summary.is_none() {
        recording.damage = Some(
            "the capture has no end record (it was killed); everything written before is read"
                .to_string(),
        );
    }
    Ok(recording)
}

/// One block's entries and what follows it; Err says what is wrong with it.
fn read_block(bytes: &[u8]) -> Result<(Vec<Entry>, &[u8]), String> {
    let cut_off = || "is cut off".to_string();
    let (len, rest) = split_u32(bytes).ok_or_else(cut_off)?;
    let (crc, rest) = split_u32(rest).ok_or_else(cut_off)?;
    if len > MAX_BLOCK_BYTES {
        return Err(format!("claims {len} bytes, more than a block can hold"));
    }
    if rest.len() < len as usize {
        return Err(cut_off());
    }
    let (body, rest) = rest.split_at(len as usize);
    if crc32fast::hash(body) != crc {
        return Err("fails its checksum".to_string());
    }
    let mut encoded = Vec::new();
    flate2::read::DeflateDecoder::new(body)
        .read_to_end(&mut encoded)
        .map_err(|e| format!("does not decompress: {e}"))?;
    let entries = postcard::from_bytes(&encoded).map_err(|e| format!("does not decode: {e}"))?;
    Ok((entries, rest))
}

impl Recording {
    fn take(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        for entry in entries {
            match entry {
                Entry::Name { id, text } => {
                    if id as usize != self.names.len() {
                        return Err(format!("name {id} defined out of order"));
                    }
                    self.names.push(text);
                }
                Entry::Site {
                    id,
                    function,
                    file,
                    line,
                } => {
                    if id as usize != self.sites.len() {
                        return Err(format!("site {id} defined out of order"));
                    }
                    self.sites.push(SiteDef {
                        function,
                        file,
                        line,
                    });
                }
                Entry::End(summary) => self.summary = Some(summary),
                event => self.events.push(event),
            }
        }
        Ok(())
    }
}

fn split_u16(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<2>()?;
    Some((u16::from_le_bytes(*head), rest))
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{
        format::{ProbeInfo, TargetInfo},
        write::RecordWriter,
    };

    fn header() -> Header {
        Header {
            mapwatch_version: "0.1.0".into(),
            start_unix_s: 1.5e9,
            start_monotonic_ns: 1000,
            duration_asked_s: Some(30.0),
            target: TargetInfo {
                pid: 42,
                binary: "/bin/svc".into(),
                build_id: "abc".into(),
                go_version: "go1.22.10".into(),
                map_implementation: "classic".into(),
                command: None,
            },
            probes: vec![ProbeInfo {
                probe: "growslice".into(),
                sites: 1,
                duty_cycle: 1.0,
            }],
        }
    }

    fn growth(w: &mut RecordWriter<Vec<u8>>, t: u64) {
        let site = w.site("main.fill", "/src/main.go", 42);
        let elem_type = w.name("main.Item");
        w.push(Entry::SliceGrowth {
            t,
            goroutine: 7,
            site,
            elem_type,
            elem_size: Some(24),
            old_ptr: 0,
            old_len: 0,
            old_cap: 0,
            new_len: 1,
            new_cap: Some(1),
            new_bytes: Some(24),
            frames: vec![vec![site]],
        });
    }

    /// Two blocks and an end, as bytes, with the length of the first block's end.
    fn two_blocks() -> (Vec<u8>, usize) {
        let mut w = RecordWriter::create(Vec::new(), &header()).unwrap();
        growth(&mut w, 1);
        w.write_block().unwrap();
        let first = w.bytes() as usize;
        growth(&mut w, 2);
        let summary = Summary {
            duration_ns: 5,
            stopped_because: "duration elapsed".into(),
            ..Default::default()
        };
        (w.finish(summary).unwrap(), first)
    }

    #[test]
    fn a_file_reads_back_as_written() {
        let (bytes, _) = two_blocks();
        let r = read_bytes(&bytes).unwrap();
        assert_eq!(r.header, header());
        assert_eq!(r.events.len(), 2);
        assert_eq!(r.damage, None);
        assert_eq!(
            r.summary.as_ref().unwrap().stopped_because,
            "duration elapsed"
        );
        let Entry::SliceGrowth {
            site, elem_type, ..
        } = r.events[1]
        else {
            panic!("{:?}", r.events[1]);
        };
        // Interned once: the second growth refers to the first block's definitions.
        assert_eq!((r.sites.len(), r.names.len()), (2, 4));
        let site = r.site(site).unwrap();
        assert_eq!(
            (r.name(site.function), r.name(site.file), site.line),
            ("main.fill", "/src/main.go", 42)
        );
        assert_eq!(r.name(elem_type), "main.Item");
    }

    #[test]
    fn a_cut_off_file_keeps_its_complete_blocks() {
        let (bytes, first) = two_blocks();
        for cut in [first, first + 3, first + 9, bytes.len() - 1] {
            let r = read_bytes(&bytes[..cut]).unwrap();
            assert_eq!(r.events.len(), 1, "cut at {cut}");
            assert!(r.summary.is_none());
            assert!(r.damage.is_some(), "cut at {cut}");
        }
    }

    #[test]
    fn a_corrupt_block_is_named_and_what_precedes_it_kept() {
        let (mut bytes, first) = two_blocks();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let r = read_bytes(&bytes).unwrap();
        assert_eq!(r.events.len(), 1);
        assert!(r.damage.unwrap().contains("block 2 fails its checksum"));
        assert!(first < last);
    }

    #[test]
    fn other_files_and_versions_are_refused_with_a_reason() {
        assert!(matches!(
            read_bytes(b"\x7fELF...."),
            Err(ReadError::NotARecord)
        ));
        let (mut bytes, _) = two_blocks();
        bytes[MAGIC.len()] = 9;
        let error = read_bytes(&bytes).unwrap_err();
        assert!(matches!(error, ReadError::UnsupportedVersion { found: 9 }));
        assert!(error.to_string().contains("reads version 1"));
        assert!(matches!(
            read_bytes(&bytes[..MAGIC.len() + 4]),
            Err(ReadError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            read_bytes(&two_blocks().0[..MAGIC.len() + 8]),
            Err(ReadError::TruncatedHeader)
        ));
    }
}
