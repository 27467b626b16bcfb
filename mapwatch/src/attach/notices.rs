//! Exec and exit notices from the kernel (mapwatch-ebpf `process_notices`), for the
//! daemon. Loaded only by `mapwatch run`: `attach` follows one process by its pid.
use aya::{
    Btf, Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use mapwatch_common::ProcessNotice;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};

use super::AttachError;

/// The tracepoints and the program behind each.
const TRACEPOINTS: [(&str, &str); 2] = [
    ("process_exec", "sched_process_exec"),
    ("process_exit", "sched_process_exit"),
];

pub struct ProcessNotices {
    ring: RingBuf<MapData>,
    lost: NoticesLost,
}

/// The count of notices lost because the ring was full (recovered by the next /proc
/// scan); readable while the notices are being forwarded.
pub struct NoticesLost(PerCpuArray<MapData, u64>);

impl NoticesLost {
    pub fn get(&self) -> u64 {
        self.0
            .get(&0, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

impl ProcessNotices {
    /// Loads and attaches the exec/exit tracepoints (they stay attached as long as the
    /// BPF object lives).
    pub fn start(ebpf: &mut Ebpf) -> Result<ProcessNotices, AttachError> {
        let btf = Btf::from_sys_fs().map_err(|e| AttachError::Btf(e.to_string()))?;
        for (program, tracepoint) in TRACEPOINTS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or(AttachError::Missing("process notice program"))?
                .try_into()?;
            program.load(tracepoint, &btf)?;
            program.attach()?;
        }
        let ring = RingBuf::try_from(
            ebpf.take_map(mapwatch_common::map_names::PROCESS_NOTICES)
                .ok_or(AttachError::Missing("PROCESS_NOTICES map"))?,
        )?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map(mapwatch_common::map_names::PROCESS_NOTICES_LOST)
                .ok_or(AttachError::Missing("PROCESS_NOTICES_LOST map"))?,
        )?;
        Ok(ProcessNotices {
            ring,
            lost: NoticesLost(lost),
        })
    }

    /// Forwards batches of notices until the receiver is gone; returns the lost-notice
    /// counter's reader first.
    pub fn split(self) -> (NoticesLost, NoticeRing) {
        (self.lost, NoticeRing(self.ring))
    }
}

/// The notices ring, to be read in a tokio task.
pub struct NoticeRing(RingBuf<MapData>);

impl NoticeRing {
    /// Sends each batch of notices to `to` until it is closed.
    pub async fn forward(self, to: mpsc::Sender<Vec<ProcessNotice>>) -> std::io::Result<()> {
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf,
        // and always reports that same fd.
        let mut ring = unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        loop {
            let mut guard = ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<ProcessNotice>() {
                    // SAFETY: the BPF side writes whole ProcessNotice values; read_unaligned
                    // because ring records are only 8-byte aligned by contract.
                    batch.push(unsafe { item.as_ptr().cast::<ProcessNotice>().read_unaligned() });
                }
            }
            guard.clear_ready();
            if !batch.is_empty() && to.send(batch).await.is_err() {
                return Ok(());
            }
        }
    }
}
