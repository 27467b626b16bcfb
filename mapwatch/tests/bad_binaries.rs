//! Binary analysis on bad input: every case ends in an error that names the file and
//! says what is wrong — never a panic, never a probe at a guessed offset. No root.
mod support;

use std::path::{Path, PathBuf};

use mapwatch::{
    goelf::GoBinary,
    plan::{PlanRequest, plan_probes},
};
use support::{fixture, fixtures_dir, mapwatch_command};

const REQUEST: PlanRequest = PlanRequest::ALL;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Opens and plans; returns the error text, or None if it all succeeded.
fn analyse(label: &str, bytes: Vec<u8>) -> Option<String> {
    let label = Path::new(label);
    let binary = match GoBinary::from_bytes(label, bytes) {
        Ok(binary) => binary,
        Err(e) => return Some(e.to_string()),
    };
    match plan_probes(&binary, REQUEST) {
        Ok(plan) => {
            // A plan from a damaged file may lack signals, but every planned probe must
            // sit on bytes that are really in the file.
            for probe in &plan.probes {
                assert!(
                    !probe.expected_bytes.is_empty(),
                    "{}: empty probe bytes",
                    label.display()
                );
            }
            if plan.probes.is_empty() {
                Some(format!("no probes: {:?}", plan.unavailable))
            } else {
                None
            }
        }
        Err(e) => Some(e.to_string()),
    }
}

#[test]
fn checked_in_corpus_gives_errors_naming_the_file() {
    for entry in std::fs::read_dir(corpus()).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        // Other tests' corpora live in subdirectories.
        if path.is_dir() || path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let label = path.display().to_string();
        let error = analyse(&label, std::fs::read(&path).unwrap())
            .unwrap_or_else(|| panic!("{label}: accepted"));
        assert!(
            error.contains(&label),
            "error does not name the file: {error}"
        );
    }
}

#[test]
fn truncated_binaries_never_panic_or_plan_past_the_end() {
    let Some(path) = fixture("go1.22.10", "slicegrow") else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let mut cuts: Vec<usize> = (0..256).collect();
    cuts.extend((1..64).map(|i| bytes.len() * i / 64));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        let error = analyse(&format!("truncated-at-{cut}"), bytes[..cut].to_vec());
        // Past the ELF identification, a cut copy is named as one (it used to read as
        // "not a Go program" or an unreadable symbol table).
        if cut >= 64 {
            let error = error.unwrap_or_else(|| panic!("cut at {cut}: analysed as whole"));
            assert!(
                error.contains("is truncated or corrupt"),
                "cut at {cut}: {error}"
            );
        }
    }
}

#[test]
fn inspect_names_what_is_not_a_file() {
    let empty = std::env::temp_dir().join(format!("mapwatch-empty-{}", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    for (path, expected) in [
        (Path::new("/dev/null"), "is a device, socket or pipe"),
        (Path::new("/"), "is a directory"),
        (empty.as_path(), "is empty (0 bytes)"),
    ] {
        let output = mapwatch_command()
            .arg("inspect")
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
    }
    let _ = std::fs::remove_file(&empty);
}

/// Runs `mapwatch inspect path`; returns its exit code, stderr and peak RSS in KiB.
// Waited for with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn inspect_measured(path: &Path) -> (Option<i32>, String, i64) {
    let child = mapwatch_command()
        .arg("inspect")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.unwrap(), &mut stderr).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for the child waited for
    // (unlike RUSAGE_CHILDREN, which is the peak of every child of this test binary).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, stderr, usage.ru_maxrss)
}

#[test]
fn two_gigabyte_files_are_read_in_place_not_into_memory() {
    // A Go binary with a 2 GiB tail (sparse: it takes no disk), and 2 GiB of zeros.
    let Some(binary) = fixture("go1.24.11", "mapgrow") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mapwatch-2g-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let padded = dir.join("mapgrow-padded");
    std::fs::copy(&binary, &padded).unwrap();
    let zeros = dir.join("zeros");
    for path in [&padded, &zeros] {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        file.set_len(2 << 30).unwrap();
    }
    let limit_kib = 200 * 1024;
    let (code, stderr, rss) = inspect_measured(&padded);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        rss < limit_kib,
        "inspect of a 2 GiB Go binary peaked at {rss} KiB"
    );
    let (code, stderr, rss) = inspect_measured(&zeros);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not an ELF"), "{stderr}");
    assert!(
        rss < limit_kib,
        "inspect of 2 GiB of zeros peaked at {rss} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn non_go_elf_is_named_as_such() {
    let error = analyse("/bin/true", std::fs::read("/bin/true").unwrap()).unwrap();
    assert!(error.contains("/bin/true is not a Go program"), "{error}");
}

#[test]
fn go_binary_for_another_architecture_is_refused() {
    let path = fixtures_dir().join("../fixtures-cross/go1.22.10/slicegrow-arm64");
    if !path.is_file() {
        assert!(
            !support::in_ci(),
            "{} missing: run `cargo xtask test`",
            path.display()
        );
        return;
    }
    let error = analyse("app-arm64", std::fs::read(&path).unwrap()).unwrap();
    assert!(error.contains("app-arm64 is built for arm64"), "{error}");
    assert!(error.contains("x86_64"), "{error}");
}

/// The build-info blob of a copy of a fixture, to corrupt.
fn with_build_info(edit: impl FnOnce(&mut [u8])) -> Option<Vec<u8>> {
    let path = fixture("go1.22.10", "slicegrow")?;
    let mut bytes = std::fs::read(path).unwrap();
    let magic = b"\xff Go buildinf:";
    let at = bytes.windows(magic.len()).position(|w| w == magic).unwrap();
    edit(&mut bytes[at..at + 64]);
    Some(bytes)
}

#[test]
fn go_version_older_than_supported_is_refused_by_name() {
    let Some(bytes) = with_build_info(|blob| {
        let at = blob.windows(9).position(|w| w == b"go1.22.10").unwrap();
        blob[at..at + 9].copy_from_slice(b"go1.17.13");
    }) else {
        return;
    };
    let error = analyse("old-go", bytes).unwrap();
    assert!(
        error.contains("old-go") && error.contains("go1.17.13 is not supported"),
        "{error}"
    );
}

#[test]
fn corrupt_build_info_is_reported() {
    // The version's length prefix becomes an endless uvarint.
    let Some(bytes) = with_build_info(|blob| blob[32..42].fill(0xff)) else {
        return;
    };
    let error = analyse("bad-buildinfo", bytes).unwrap();
    assert!(
        error.contains("bad-buildinfo has corrupt Go build info"),
        "{error}"
    );
}

#[test]
fn inspect_refuses_bad_files_with_exit_code_2_and_one_line() {
    let path = corpus().join("not-elf.txt");
    let output = mapwatch_command()
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("is not an ELF"),
        "{stderr}"
    );
}

#[test]
fn corrupt_pclntab_in_a_stripped_binary_means_no_probes_not_guesses() {
    let Some(path) = fixture("go1.22.10", "slicegrow-stripped") else {
        return;
    };
    let mut bytes = std::fs::read(path).unwrap();
    let at = {
        use object::{Object as _, ObjectSection as _};
        let elf = object::File::parse(&*bytes).unwrap();
        let section = elf.section_by_name(".gopclntab").unwrap();
        section.file_range().unwrap().0 as usize
    };
    assert_eq!(bytes[at..at + 4], 0xfffffff1u32.to_le_bytes());
    // Function count far beyond the table: every lookup must fail cleanly.
    bytes[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let error = analyse("bad-pclntab", bytes.clone()).unwrap();
    assert!(error.contains("slice_growth"), "{error}");
    // An unknown magic.
    bytes[at..at + 4].copy_from_slice(&0x12345678u32.to_le_bytes());
    let error = analyse("bad-magic", bytes).unwrap();
    assert!(error.contains("slice_growth"), "{error}");
}
