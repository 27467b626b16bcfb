//! The build-info blob the Go linker writes into `.go.buildinfo`; the format mirrors
//! src/debug/buildinfo/buildinfo.go (Go 1.18+ inline strings, older pointer format).

/// `buildInfoMagic` in src/debug/buildinfo/buildinfo.go.
const MAGIC: &[u8] = b"\xff Go buildinf:";
/// The blob's header is 32 bytes and aligned to 16 (`buildInfoAlign`).
const HEADER_LEN: usize = 32;
const ALIGN: usize = 16;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_VERSION_INLINE: u8 = 0x2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// e.g. `go1.22.10`.
    pub go_version: String,
    /// The main package path, e.g. `command-line-arguments` or `example.com/svc`.
    pub path: String,
    /// `build` lines of the module info: `-ldflags`, `CGO_ENABLED`, `GOEXPERIMENT`…
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The GOEXPERIMENT setting ("" when none), e.g. `noswissmap`.
    pub fn goexperiment(&self) -> &str {
        self.setting("GOEXPERIMENT").unwrap_or("")
    }
}

/// Parses the `.go.buildinfo` section's bytes. `read_vaddr(addr, len)` reads the bytes
/// the pre-1.18 pointer format refers to.
pub fn parse<'a>(
    section: &[u8],
    read_vaddr: impl Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<BuildInfo, String> {
    let start = (0..section.len())
        .step_by(ALIGN)
        .find(|&at| section[at..].starts_with(MAGIC))
        .ok_or("no build-info magic")?;
    let blob = &section[start..];
    if blob.len() < HEADER_LEN {
        return Err("build-info header truncated".into());
    }
    let ptr_size = blob[14] as usize;
    let flags = blob[15];
    let (version, modinfo) = if flags & FLAG_VERSION_INLINE != 0 {
        let (version, rest) =
            uvarint_string(&blob[HEADER_LEN..]).ok_or("version string truncated")?;
        let (modinfo, _) = uvarint_string(rest).ok_or("module info truncated")?;
        (version.to_vec(), modinfo.to_vec())
    } else {
        if ptr_size != 4 && ptr_size != 8 {
            return Err(format!("pointer size {ptr_size}"));
        }
        let big_endian = flags & FLAG_BIG_ENDIAN != 0;
        let read_ptr = |bytes: &[u8]| -> Option<u64> {
            let bytes = bytes.get(..ptr_size)?;
            let mut value = 0u64;
            for (i, &b) in bytes.iter().enumerate() {
                let shift = if big_endian {
                    (ptr_size - 1 - i) * 8
                } else {
                    i * 8
                };
                value |= u64::from(b) << shift;
            }
            Some(value)
        };
        // Each pointer addresses a Go string header {data, len}.
        let read_string = |header_addr: u64| -> Option<Vec<u8>> {
            let header = read_vaddr(header_addr, 2 * ptr_size as u64)?;
            let data = read_ptr(header)?;
            let len = read_ptr(&header[ptr_size..])?;
            if len == 0 {
                return Some(Vec::new());
            }
            Some(read_vaddr(data, len)?.to_vec())
        };
        let version_ptr = read_ptr(&blob[16..]).ok_or("version pointer truncated")?;
        let modinfo_ptr =
            read_ptr(&blob[16 + ptr_size..]).ok_or("module info pointer truncated")?;
        let version = read_string(version_ptr).ok_or("version string outside the file")?;
        let modinfo = read_string(modinfo_ptr).unwrap_or_default();
        (version, modinfo)
    };
    let go_version = String::from_utf8(version).map_err(|_| "version is not UTF-8")?;
    if !go_version.starts_with("go") && !go_version.starts_with("devel") {
        return Err(format!("unexpected version string {go_version:?}"));
    }
    let modinfo = strip_sentinels(&modinfo);
    let modinfo = String::from_utf8_lossy(modinfo);
    let mut info = BuildInfo {
        go_version,
        ..Default::default()
    };
    for line in modinfo.lines() {
        let mut fields = line.splitn(2, '\t');
        match (fields.next(), fields.next()) {
            (Some("path"), Some(path)) => info.path = path.to_string(),
            (Some("build"), Some(setting)) => {
                if let Some((key, value)) = setting.split_once('=') {
                    info.settings.push((key.to_string(), value.to_string()));
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The module info is wrapped in 16-byte sentinels (src/debug/buildinfo/buildinfo.go).
fn strip_sentinels(modinfo: &[u8]) -> &[u8] {
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        &[]
    }
}

fn uvarint_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut len: u64 = 0;
    let mut used = 0;
    for (i, &byte) in data.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            used = i + 1;
            break;
        }
    }
    if used == 0 {
        return None;
    }
    let rest = &data[used..];
    let len = usize::try_from(len).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline_blob(version: &str, modinfo: &str) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.extend([8, FLAG_VERSION_INLINE]);
        blob.resize(HEADER_LEN, 0);
        blob.push(version.len() as u8);
        blob.extend(version.as_bytes());
        let wrapped = format!("{}{modinfo}{}", "0".repeat(16), "1".repeat(16));
        blob.push(wrapped.len() as u8);
        blob.extend(wrapped.as_bytes());
        blob
    }

    #[test]
    fn reads_inline_version_and_settings() {
        let blob = inline_blob(
            "go1.24.11",
            "path\tcommand-line-arguments\nbuild\tCGO_ENABLED=0\nbuild\tGOEXPERIMENT=noswissmap\n",
        );
        let info = parse(&blob, |_, _| None).unwrap();
        assert_eq!(info.go_version, "go1.24.11");
        assert_eq!(info.path, "command-line-arguments");
        assert_eq!(info.goexperiment(), "noswissmap");
        assert_eq!(info.setting("CGO_ENABLED"), Some("0"));
    }

    /// Go 1.13–1.17 wrote pointers to string headers instead of inline strings.
    #[test]
    fn reads_the_older_pointer_format() {
        let mut memory = vec![0u8; 0x200];
        let put = |memory: &mut Vec<u8>, at: usize, value: u64| {
            memory[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        // Version string header at 0x40 → bytes at 0x80; modinfo header at 0x50 → 0xa0.
        put(&mut memory, 0x40, 0x80);
        put(&mut memory, 0x48, 9);
        memory[0x80..0x89].copy_from_slice(b"go1.17.13");
        let modinfo = format!("{}path\tcmd\n{}", "0".repeat(16), "1".repeat(16));
        put(&mut memory, 0x50, 0xa0);
        put(&mut memory, 0x58, modinfo.len() as u64);
        memory[0xa0..0xa0 + modinfo.len()].copy_from_slice(modinfo.as_bytes());
        let mut blob = MAGIC.to_vec();
        blob.extend([8, 0]);
        blob.resize(HEADER_LEN, 0);
        blob[16..24].copy_from_slice(&0x40u64.to_le_bytes());
        blob[24..32].copy_from_slice(&0x50u64.to_le_bytes());
        let read = |addr: u64, len: u64| memory.get(addr as usize..(addr + len) as usize);
        let info = parse(&blob, read).unwrap();
        assert_eq!(info.go_version, "go1.17.13");
        assert_eq!(info.path, "cmd");
        // A pointer outside the file is an error, not a panic.
        blob[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert!(parse(&blob, read).is_err());
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let blob = inline_blob("go1.22.10", "path\tx\n");
        for len in 0..blob.len() {
            let _ = parse(&blob[..len], |_, _| None);
        }
        assert!(parse(&blob[..HEADER_LEN + 3], |_, _| None).is_err());
    }
}
