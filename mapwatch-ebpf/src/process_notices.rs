//! Exec and exit of processes, for the daemon (`mapwatch run`) to attach to new Go
//! programs and detach from exited ones at once rather than at its next /proc scan.
//!
//! BTF tracepoints (tp_btf) rather than plain tracepoints: they need no tracefs (not
//! mounted on many nodes, nor here) to look up event ids, and the kernel passes typed
//! arguments. Only the thread group id is sent: userspace reads the rest from /proc.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, map},
    maps::{PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use mapwatch_common::{PROCESS_RING_BYTES, ProcessNotice};

// Named by its identifier, as `mapwatch_common::map_names` says (see main.rs).
#[map]
static PROCESS_NOTICES: RingBuf = RingBuf::with_byte_size(PROCESS_RING_BYTES, 0);

/// Notices that did not fit in the ring (index 0): counted, and recovered by the scan.
#[map]
static PROCESS_NOTICES_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// After a successful exec, `current` is the (new) thread group leader.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: BtfTracePointContext) -> i32 {
    notify(ProcessNotice::EXEC);
    0
}

/// Fires for every exiting thread; only the leader's exit ends the process as the
/// daemon sees it (its /proc/PID goes away with it).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit(_ctx: BtfTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    if id as u32 == (id >> 32) as u32 {
        notify(ProcessNotice::EXIT);
    }
    0
}

fn notify(kind: u32) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // A full ring loses the notice, not the process: the periodic /proc scan finds it.
    if PROCESS_NOTICES
        .output::<ProcessNotice>(&ProcessNotice { tgid, kind }, 0)
        .is_err()
        && let Some(lost) = PROCESS_NOTICES_LOST.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot, touched only by this CPU while preemption is off.
        unsafe { *lost += 1 };
    }
}
