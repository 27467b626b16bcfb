//! /proc/PID/cgroup → container id and pod UID. Cgroup names below a delegated subtree
//! are the workload's choice; a wrong id names another pod in the metrics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mapwatch::discover::parse_proc_cgroup;

fuzz_target!(|data: &[u8]| {
    let Some(found) = parse_proc_cgroup(&String::from_utf8_lossy(data)) else {
        return;
    };
    // The forms the pod index is keyed by (CgroupContainer's contract).
    let id = &found.container_id;
    assert!(
        id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "container id {id:?}"
    );
    if let Some(uid) = &found.pod_uid {
        assert!(
            uid.len() == 36
                && uid.bytes().enumerate().all(|(i, b)| match i {
                    8 | 13 | 18 | 23 => b == b'-',
                    _ => matches!(b, b'0'..=b'9' | b'a'..=b'f'),
                }),
            "pod UID {uid:?}"
        );
    }
});
