//! mapwatch's BPF programs: a Go uprobe that reads registers and a few struct fields
//! and writes one fixed-size record to the ring buffer.
//!
//! There are no Go-version branches here. Which registers mean what, and which fields
//! to read at which offsets, is decided in userspace per probe slot (see
//! `mapwatch_common::ProbeSpec`); the slot number is the uprobe's cookie.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{Array, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use mapwatch_common::{
    EVENT_REGS, Event, MAX_PROBE_SLOTS, MemoryLoad, PROBE_LOADS, ProbeKind, ProbeSpec,
    RING_BUF_BYTES, RING_WAKEUP_BYTES,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

#[map]
static PROBE_SPECS: Array<ProbeSpec> = Array::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Hits per slot. Per-CPU because 64-bit atomic adds do not build for the BPF target
/// here (TOOLCHAIN.md) and per-CPU counters never contend.
#[map]
static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Records that did not fit in the ring buffer, per slot: nothing is dropped silently.
#[map]
static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBE_SLOTS, 0);

/// Entry of any probed Go function, or a RET inside it: which one is in the slot's spec.
#[uprobe]
pub fn go_probe(ctx: ProbeContext) -> u32 {
    record(&ctx);
    0
}

#[inline(always)]
fn bump(counter: &PerCpuArray<u64>, slot: u32) {
    if let Some(value) = counter.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU; BPF programs do not preempt each other on it.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn record(ctx: &ProbeContext) {
    // SAFETY: the helper only reads the attach cookie of the running program.
    let slot = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = PROBE_SPECS.get(slot) else {
        return;
    };
    if spec.kind == ProbeKind::None as u16 {
        // Userspace writes the spec before attaching: reaching this is a bug. Logged
        // (aya-log) only on this cold path; logging per hit would cost more than the hit.
        aya_log_ebpf::warn!(ctx, "uprobe fired on slot {} that has no probe spec", slot);
        return;
    }
    bump(&PROBE_HITS, slot);

    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(&EVENTS_LOST, slot);
        return;
    };
    // SAFETY: ctx.regs points at the trapped task's saved registers for this call.
    let regs: &pt_regs = unsafe { &*ctx.regs };
    let args: [u64; EVENT_REGS] = [regs.rax, regs.rbx, regs.rcx, regs.rdi, regs.rsi, regs.r8];

    let mut loads = [0u64; PROBE_LOADS];
    let mut load_failed = 0u16;
    let mut i = 0;
    while i < PROBE_LOADS {
        let load = spec.loads[i];
        if load.reg != MemoryLoad::NONE {
            match read_field(&args, load) {
                Some(value) => loads[i] = value,
                None => load_failed |= 1 << i,
            }
        }
        i += 1;
    }

    let caller_pc = if spec.flags & ProbeSpec::FLAG_CALLER_PC != 0 {
        // SAFETY: bpf_probe_read_user validates the user address.
        unsafe { bpf_probe_read_user(regs.rsp as *const u64) }.unwrap_or(0)
    } else {
        0
    };

    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(Event {
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        goroutine: regs.r14,
        caller_pc,
        regs: args,
        loads,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        slot,
        kind: spec.kind,
        load_failed,
    });

    // Batched wake-ups: the reader also drains on a short timer, so only a large
    // backlog needs to wake it now.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= RING_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

#[inline(always)]
fn read_field(args: &[u64; EVENT_REGS], load: MemoryLoad) -> Option<u64> {
    let index = load.reg as usize;
    if index >= EVENT_REGS {
        return None;
    }
    let address = args[index].wrapping_add(load.offset as u64);
    // SAFETY: bpf_probe_read_user validates the user address; each arm has a constant
    // size so the verifier can check the destination.
    unsafe {
        match load.size {
            1 => bpf_probe_read_user(address as *const u8)
                .ok()
                .map(u64::from),
            2 => bpf_probe_read_user(address as *const u16)
                .ok()
                .map(u64::from),
            4 => bpf_probe_read_user(address as *const u32)
                .ok()
                .map(u64::from),
            _ => bpf_probe_read_user(address as *const u64).ok(),
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
