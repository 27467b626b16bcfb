//! The size of the EVENTS ring buffer: the default, or what the environment asks for.
use super::AttachError;

/// Environment variable that sizes the EVENTS ring buffer, in bytes (a power of two, at
/// least the page size); unset, [`mapwatch_common::RING_BUF_BYTES`]. A knob for tests
/// that must overflow the ring (tests/overload.rs) and for nodes whose bursts overflow
/// the default; not a flag, because no one should need it in ordinary use.
pub const RING_BYTES_VARIABLE: &str = "MAPWATCH_RING_BYTES";

/// The EVENTS ring's size: [`RING_BYTES_VARIABLE`], else the default.
pub(super) fn ring_bytes() -> Result<u32, AttachError> {
    match std::env::var(RING_BYTES_VARIABLE) {
        Err(_) => Ok(mapwatch_common::RING_BUF_BYTES),
        Ok(value) if value.is_empty() => Ok(mapwatch_common::RING_BUF_BYTES),
        Ok(value) => {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            parse_ring_bytes(&value, u32::try_from(page).unwrap_or(4096))
        }
    }
}

/// Refuses what the kernel would refuse and what aya would silently round up (it makes
/// any ring size a power-of-two multiple of the page size): the ring in use must be the
/// one asked for.
fn parse_ring_bytes(value: &str, page: u32) -> Result<u32, AttachError> {
    let refuse = |why: String| AttachError::RingSize {
        value: value.to_string(),
        why,
    };
    let bytes: u32 = value.trim().parse().map_err(|_| {
        refuse(format!(
            "expected a number of bytes, a power of two from {page} (the page size) to {}",
            1u32 << 31
        ))
    })?;
    if !bytes.is_power_of_two() || bytes < page {
        return Err(refuse(format!(
            "a ring buffer's size must be a power of two and at least the page size ({page} \
             bytes), e.g. 65536 or 33554432"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_powers_of_two_from_a_page() {
        assert_eq!(parse_ring_bytes("65536", 4096).unwrap(), 65536);
        assert_eq!(parse_ring_bytes("4096", 4096).unwrap(), 4096);
        assert_eq!(parse_ring_bytes("2147483648", 4096).unwrap(), 1 << 31);
        for bad in ["", "64K", "-4096", "100000", "2048", "0", "4294967296"] {
            let error = parse_ring_bytes(bad, 4096).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{RING_BYTES_VARIABLE}={bad:?}: ")),
                "{error}"
            );
            assert!(error.contains("power of two"), "{error}");
        }
        // 16 KiB pages (arm64 kernels can have them): one 4 KiB is below a page.
        assert!(parse_ring_bytes("4096", 16384).is_err());
    }
}
