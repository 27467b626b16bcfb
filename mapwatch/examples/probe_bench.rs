//! Probe variants for `cargo xtask bench` that the product does not offer: mapwatch's
//! `go_probe` or an empty program at growslice's first instruction, after its stack
//! check or on its RETs, and uprobes on the `CALL runtime.growslice` instructions of a
//! program's own code (call-site probing). Run as root; prints one JSON object per
//! command on stdout.
//!
//! ```text
//! probe_bench sites BINARY                        count call sites (no root)
//! probe_bench cost --pid P --variant V            attach, print {"attached":…},
//!                                                 wait for stdin EOF, print hits
//! probe_bench callsites --pid P [--runtime]       the same for call-site probes
//! probe_bench churn --pid P --on-ms N --off-ms M [--multi]
//!                                                 attach and detach over and over
//! ```
//!
//! An example, not a command of mapwatch: these are measurement set-ups, not ways to
//! profile (offset 0 double-counts after stack growth; call sites miss std growth).
use std::{
    collections::HashMap,
    io::Read as _,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use clap::{Parser, Subcommand, ValueEnum};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
use mapwatch::{
    aggregate::Input,
    attach::links,
    goelf::GoBinary,
    goruntime::functions::{GROWSLICE, GROWSLICE_BUF},
    plan::{self, PlanRequest, PlannedProbe, Site},
};
use mapwatch_common::{ProbeKind, ProbeSpec, map_names};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Count the CALL runtime.growslice/growsliceBuf sites of a binary.
    Sites { binary: PathBuf },
    /// Attach one variant of a growslice probe to a process.
    Cost {
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        variant: Variant,
        /// Have the kernel time the BPF program itself (BPF_ENABLE_STATS; adds two
        /// clock reads per run, so not for the timed rounds).
        #[arg(long)]
        bpf_stats: bool,
    },
    /// Attach and detach an empty program after growslice's stack check over and over
    /// (attached `--on-ms`, detached `--off-ms`) until stdin closes: what the kernel's
    /// attach and detach do to the target, apart from any hit's cost.
    Churn {
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 50)]
        on_ms: u64,
        #[arg(long, default_value_t = 1000)]
        off_ms: u64,
        /// As a uprobe_multi link (Linux 6.6+, what mapwatch uses where it can), not a
        /// perf-event uprobe.
        #[arg(long)]
        multi: bool,
    },
    /// Attach uprobes on the program's own CALL growslice sites.
    Callsites {
        #[arg(long)]
        pid: u32,
        /// Also probe growslice itself (recording caller PCs) to compare per site.
        #[arg(long)]
        runtime: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// mapwatch's go_probe after growslice's stack check (what `attach` does).
    Probe,
    /// go_probe after the stack check without the caller-PC read (its one read of the
    /// target's memory): what that read costs.
    ProbeNoCallerPc,
    /// An empty program at the same offset.
    Empty,
    /// go_probe at growslice+0 (single-stepped, fires again after stack growth).
    ProbeAt0,
    /// An empty program at growslice+0.
    EmptyAt0,
    /// go_probe on every RET of growslice (single-stepped).
    ProbeRet,
    /// An empty program on every RET of growslice.
    EmptyRet,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sites { binary } => sites(&binary),
        Command::Cost {
            pid,
            variant,
            bpf_stats,
        } => cost(pid, variant, bpf_stats),
        Command::Callsites { pid, runtime } => callsites(pid, runtime),
        Command::Churn {
            pid,
            on_ms,
            off_ms,
            multi,
        } => churn(pid, on_ms, off_ms, multi),
    }
}

/// A CALL to growslice inside a function.
struct CallSite {
    /// Link-time address of the CALL instruction.
    vaddr: u64,
    /// Where it returns: the caller PC growslice's entry probe sees.
    return_vaddr: u64,
    user: bool,
}

/// The growslice functions' entries, then every direct CALL to one of them in any
/// function of the pclntab. `user`: the function belongs to package main or to the
/// main module (its path prefix), or to a third-party module (a dot in the first path
/// element: `github.com/…`) — code whose owner can pre-size; std is everything else.
fn find_call_sites(binary: &GoBinary) -> anyhow::Result<Vec<CallSite>> {
    let targets: Vec<u64> = [GROWSLICE, GROWSLICE_BUF]
        .iter()
        .filter_map(|name| binary.function(name).map(|f| f.vaddr))
        .collect();
    if targets.is_empty() {
        bail!("no runtime.growslice in {}", binary.path().display());
    }
    let main_path = binary.build_info().path.clone();
    let module_root = main_path.split('/').next().unwrap_or_default().to_string();
    let table = binary
        .pclntab()
        .context("reading the pclntab")?
        .context("no pclntab")?;
    let mut sites = Vec::new();
    for function in table.functions() {
        let function = function.context("pclntab function")?;
        let user = is_user_function(function.name, &module_root);
        let symbol = mapwatch::goelf::FunctionSymbol {
            vaddr: function.entry,
            size: function.end - function.entry,
        };
        let Some(code) = binary.code(symbol) else {
            continue;
        };
        let mut decoder = Decoder::with_ip(64, code, function.entry, DecoderOptions::NONE);
        let mut instruction = Instruction::default();
        while decoder.can_decode() {
            decoder.decode_out(&mut instruction);
            if instruction.code() == Code::INVALID {
                break;
            }
            if instruction.mnemonic() == Mnemonic::Call
                && instruction.op0_kind() == OpKind::NearBranch64
                && targets.contains(&instruction.near_branch_target())
            {
                sites.push(CallSite {
                    vaddr: instruction.ip(),
                    return_vaddr: instruction.next_ip(),
                    user,
                });
            }
        }
    }
    Ok(sites)
}

fn is_user_function(name: &str, module_root: &str) -> bool {
    // The package path ends at the first '.' after the last '/'.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let package_end = name[last_slash..]
        .find('.')
        .map_or(name.len(), |i| last_slash + i);
    let package = &name[..package_end];
    let first = package.split('/').next().unwrap_or_default();
    package == "main"
        || (!module_root.is_empty()
            && module_root != "command-line-arguments"
            && first == module_root)
        || first.contains('.')
}

fn sites(path: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let binary = GoBinary::open(path)?;
    let sites = find_call_sites(&binary)?;
    let user = sites.iter().filter(|s| s.user).count();
    println!(
        "{}",
        serde_json::json!({
            "binary": path.display().to_string(),
            "size": std::fs::metadata(path)?.len(),
            "sites_total": sites.len(),
            "sites_user": user,
            "analysis_ms": started.elapsed().as_secs_f64() * 1e3,
        })
    );
    Ok(())
}

/// The mapwatch BPF object, loaded on its own (independent of `Probes`).
struct Loaded {
    ebpf: Ebpf,
    specs: Array<MapData, ProbeSpec>,
    links: Vec<(&'static str, UProbeLinkId)>,
    multi_links: Vec<links::ProbeLink>,
}

impl Loaded {
    fn load() -> anyhow::Result<Loaded> {
        Loaded::load_with(|program| Ok(program.load()?))
    }

    /// Loaded for uprobe_multi links ([`Loaded::attach_multi`]) instead.
    fn load_for_multi_links() -> anyhow::Result<Loaded> {
        Loaded::load_with(|program| Ok(program.load_for_multi_link()?))
    }

    fn load_with(load: impl Fn(&mut UProbe) -> anyhow::Result<()>) -> anyhow::Result<Loaded> {
        let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/mapwatch"
        )))?;
        for name in ["go_probe", "empty_probe"] {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("no {name} in the BPF object"))?
                .try_into()?;
            load(program)?;
        }
        let specs = Array::try_from(
            ebpf.take_map(map_names::PROBE_SPECS)
                .context(map_names::PROBE_SPECS)?,
        )?;
        Ok(Loaded {
            ebpf,
            specs,
            links: Vec::new(),
            multi_links: Vec::new(),
        })
    }

    fn attach(
        &mut self,
        program: &'static str,
        pid: u32,
        file_offset: u64,
        slot: u32,
        spec: ProbeSpec,
    ) -> anyhow::Result<()> {
        self.specs.set(slot, spec, 0)?;
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .context("program")?
            .try_into()?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(file_offset),
            cookie: Some(u64::from(slot)),
        };
        let pid_nz = NonZeroU32::new(pid).context("pid 0")?;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let link = uprobe.attach(point, &exe, UProbeScope::OneProcess(pid_nz))?;
        self.links.push((program, link));
        Ok(())
    }

    fn hits(&self, slots: std::ops::Range<u32>) -> anyhow::Result<Vec<u64>> {
        let map = self
            .ebpf
            .map(map_names::PROBE_HITS)
            .context(map_names::PROBE_HITS)?;
        let hits: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        slots
            .map(|slot| Ok(hits.get(&slot, 0)?.iter().sum()))
            .collect()
    }

    /// Detaches every link; returns how long that took.
    /// `program` at `file_offset` as a uprobe_multi link, as mapwatch attaches.
    fn attach_multi(
        &mut self,
        program: &'static str,
        pid: u32,
        file_offset: u64,
    ) -> anyhow::Result<()> {
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .context("program")?
            .try_into()?;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let site = links::Site {
            file_offset,
            cookie: 0,
        };
        let pid = NonZeroU32::new(pid).context("pid 0")?;
        let link = links::attach(uprobe, links::LinkMode::Multi, &exe, pid, &[site])?;
        self.multi_links.push(link);
        Ok(())
    }

    fn detach_all(&mut self) -> Duration {
        let started = Instant::now();
        self.multi_links.clear();
        for (program, link) in std::mem::take(&mut self.links) {
            if let Some(Ok(uprobe)) = self.ebpf.program_mut(program).map(<&mut UProbe>::try_from) {
                let _ = uprobe.detach(link);
            }
        }
        started.elapsed()
    }
}

/// Drains the ring buffer with the daemon's own reader task (readiness + timer, so
/// wake-ups and their cost are as in `mapwatch attach`), counting records per caller PC
/// for `slot_with_caller`.
struct Drain {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    reader: tokio::task::JoinHandle<std::io::Result<()>>,
    counter: tokio::task::JoinHandle<(u64, HashMap<u64, u64>)>,
}

/// What `mapwatch attach` drains at (cli/attach.rs).
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

impl Drain {
    fn start(ebpf: &mut Ebpf, slot_with_caller: Option<u32>) -> anyhow::Result<Drain> {
        let ring = RingBuf::try_from(
            ebpf.take_map(map_names::EVENTS)
                .context(map_names::EVENTS)?,
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (to_counter, mut from_reader) = tokio::sync::mpsc::channel::<Input>(64);
        let (stop, stop_signal) = tokio::sync::watch::channel(false);
        // No process is ever detached here: nothing to forget.
        let (_, no_forgets) = tokio::sync::mpsc::channel(1);
        let reader = runtime.spawn(mapwatch::attach::reader::run(
            ring,
            to_counter,
            DRAIN_INTERVAL,
            stop_signal,
            no_forgets,
        ));
        let counter = runtime.spawn(async move {
            let mut records = 0u64;
            let mut callers: HashMap<u64, u64> = HashMap::new();
            while let Some(input) = from_reader.recv().await {
                if let Input::Events(events) = input {
                    records += events.len() as u64;
                    for event in events {
                        if Some(event.slot) == slot_with_caller {
                            *callers.entry(event.caller_pc).or_default() += 1;
                        }
                    }
                }
            }
            (records, callers)
        });
        Ok(Drain {
            runtime,
            stop,
            reader,
            counter,
        })
    }

    fn finish(self) -> (u64, HashMap<u64, u64>) {
        let _ = self.stop.send(true);
        self.runtime.block_on(async {
            let _ = self.reader.await;
            self.counter.await.unwrap_or_default()
        })
    }
}

fn growslice_plan(binary: &GoBinary, exact: bool) -> anyhow::Result<Vec<PlannedProbe>> {
    let request = PlanRequest {
        slice_growth: true,
        map_growth: false,
        stw_gc: false,
        exact,
        make_sites: false,
        hot: Default::default(),
    };
    let plan = plan::plan_probes(binary, request)?;
    Ok(plan
        .probes
        .into_iter()
        .filter(|p| p.function == GROWSLICE)
        .collect())
}

fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn churn(pid: u32, on_ms: u64, off_ms: u64, multi: bool) -> anyhow::Result<()> {
    let binary = GoBinary::open(Path::new(&format!("/proc/{pid}/exe")))?;
    let entry = growslice_plan(&binary, false)?
        .into_iter()
        .find(|p| p.site == Site::Entry)
        .context("no growslice entry probe")?;
    let mut loaded = if multi {
        Loaded::load_for_multi_links()?
    } else {
        Loaded::load()?
    };
    println!("{}", serde_json::json!({ "attached": 0 }));
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        wait_for_stdin_eof();
        let _ = stop_tx.send(());
    });
    let (mut cycles, mut attach_time, mut detach_time) = (0u64, Duration::ZERO, Duration::ZERO);
    loop {
        let started = Instant::now();
        if multi {
            loaded.attach_multi("empty_probe", pid, entry.file_offset)?;
        } else {
            loaded.attach("empty_probe", pid, entry.file_offset, 0, entry.spec)?;
        }
        attach_time += started.elapsed();
        std::thread::sleep(Duration::from_millis(on_ms));
        detach_time += loaded.detach_all();
        cycles += 1;
        if stop_rx.recv_timeout(Duration::from_millis(off_ms)).is_ok() {
            break;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "cycles": cycles,
            "attach_ms_mean": attach_time.as_secs_f64() * 1e3 / cycles as f64,
            "detach_ms_mean": detach_time.as_secs_f64() * 1e3 / cycles as f64,
            "counts_hits": false,
        })
    );
    Ok(())
}

fn cost(pid: u32, variant: Variant, bpf_stats: bool) -> anyhow::Result<()> {
    let binary = GoBinary::open(Path::new(&format!("/proc/{pid}/exe")))?;
    let probes = growslice_plan(&binary, true)?;
    let entry = probes
        .iter()
        .find(|p| p.site == Site::Entry)
        .context("no growslice entry probe")?;
    let rets: Vec<&PlannedProbe> = probes.iter().filter(|p| p.site == Site::Ret).collect();
    let function = binary.function(GROWSLICE).context("growslice")?;
    let start_offset = binary
        .file_offset(function.vaddr)
        .context("growslice's file offset")?;
    let program = match variant {
        Variant::Probe | Variant::ProbeNoCallerPc | Variant::ProbeAt0 | Variant::ProbeRet => {
            "go_probe"
        }
        Variant::Empty | Variant::EmptyAt0 | Variant::EmptyRet => "empty_probe",
    };
    let mut sites: Vec<(u64, ProbeSpec)> = match variant {
        Variant::Probe | Variant::Empty => vec![(entry.file_offset, entry.spec)],
        Variant::ProbeNoCallerPc => {
            let mut spec = entry.spec;
            spec.flags &= !ProbeSpec::FLAG_CALLER_PC;
            vec![(entry.file_offset, spec)]
        }
        Variant::ProbeAt0 | Variant::EmptyAt0 => {
            // At +0 nothing has been pushed either: the entry spec (caller PC at
            // [RSP]) reads the same values.
            vec![(start_offset, entry.spec)]
        }
        Variant::ProbeRet | Variant::EmptyRet => {
            rets.iter().map(|p| (p.file_offset, p.spec)).collect()
        }
    };
    sites.sort_by_key(|(offset, _)| *offset);
    let _stats = bpf_stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .transpose()?;
    let mut loaded = Loaded::load()?;
    let drain = Drain::start(&mut loaded.ebpf, None)?;
    let started = Instant::now();
    for (slot, (offset, spec)) in sites.iter().enumerate() {
        loaded.attach(program, pid, *offset, slot as u32, *spec)?;
    }
    let attach_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        serde_json::json!({"attached": sites.len(), "attach_ms": attach_ms})
    );
    wait_for_stdin_eof();
    let hits: u64 = loaded.hits(0..sites.len() as u32)?.iter().sum();
    let uprobe: &UProbe = loaded
        .ebpf
        .program(program)
        .context("program")?
        .try_into()?;
    let info = uprobe.info()?;
    let program_ns_per_run =
        (info.run_count() > 0).then(|| info.run_time().as_nanos() as f64 / info.run_count() as f64);
    let detach = loaded.detach_all();
    let (records, _) = drain.finish();
    println!(
        "{}",
        serde_json::json!({
            "hits": hits,
            "records": records,
            "detach_ms": detach.as_secs_f64() * 1e3,
            "counts_hits": program == "go_probe",
            "program_ns_per_run": program_ns_per_run,
        })
    );
    Ok(())
}

fn callsites(pid: u32, runtime: bool) -> anyhow::Result<()> {
    let binary = GoBinary::open(Path::new(&format!("/proc/{pid}/exe")))?;
    let all = find_call_sites(&binary)?;
    let user: Vec<&CallSite> = all.iter().filter(|s| s.user).collect();
    let entry = growslice_plan(&binary, false)?
        .into_iter()
        .find(|p| p.site == Site::Entry)
        .context("no growslice entry probe")?;
    // At the CALL the arguments are already in their registers, so growslice's entry
    // spec reads the same values; [RSP] is not a return address yet.
    let mut site_spec = entry.spec;
    site_spec.flags &= !ProbeSpec::FLAG_CALLER_PC;
    if site_spec.kind == ProbeKind::None as u16 {
        bail!("empty spec");
    }
    let mut loaded = Loaded::load()?;
    let runtime_slot = user.len() as u32;
    let drain = Drain::start(&mut loaded.ebpf, runtime.then_some(runtime_slot))?;
    let started = Instant::now();
    for (slot, site) in user.iter().enumerate() {
        let offset = binary
            .file_offset(site.vaddr)
            .context("call site's file offset")?;
        loaded.attach("go_probe", pid, offset, slot as u32, site_spec)?;
    }
    let attach_ms = started.elapsed().as_secs_f64() * 1e3;
    if runtime {
        loaded.attach("go_probe", pid, entry.file_offset, runtime_slot, entry.spec)?;
    }
    println!(
        "{}",
        serde_json::json!({"attached": user.len(), "attach_ms": attach_ms, "sites_total": all.len()})
    );
    wait_for_stdin_eof();
    let slots = user.len() as u32 + u32::from(runtime);
    let hits = loaded.hits(0..slots)?;
    let detach = loaded.detach_all();
    let (_, callers) = drain.finish();
    // Non-PIE fixtures: run-time return addresses are link-time ones.
    let site_hits: u64 = hits[..user.len()].iter().sum();
    let runtime_at_user_sites: u64 = user
        .iter()
        .map(|s| callers.get(&s.return_vaddr).copied().unwrap_or(0))
        .sum();
    let mismatched_sites = user
        .iter()
        .zip(&hits)
        .filter(|(s, h)| runtime && callers.get(&s.return_vaddr).copied().unwrap_or(0) != **h)
        .count();
    let active_sites = hits[..user.len()].iter().filter(|h| **h > 0).count();
    println!(
        "{}",
        serde_json::json!({
            "site_hits": site_hits,
            "active_sites": active_sites,
            "runtime_hits": if runtime { hits[user.len()] } else { 0 },
            "runtime_at_user_sites": runtime_at_user_sites,
            "mismatched_sites": mismatched_sites,
            "detach_ms": detach.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
