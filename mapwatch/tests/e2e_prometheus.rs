//! The whole operator path with real parts: `mapwatch run` on this machine profiling Go
//! fixtures of several versions, scraped by a real Prometheus (Debian's) started with
//! deploy/prometheus/prometheus.yml and its alert rules. Every PromQL expression of
//! every dashboard panel in deploy/grafana must return at least one series, and one
//! alert must really fire.
#[path = "../../xtask/src/deploy/dashboards.rs"]
mod dashboards;
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Fixture, Mapwatch, fixture, mapwatch_links, privileged};

/// The alert that can fire within a short run: it has no `for:` and an unsupported
/// binary trips it at once.
const ALERT_THAT_FIRES: &str = "MapwatchAttachErrors";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// deploy/prometheus/prometheus.yml with the target, rule path and intervals made fit
/// for a test: each substitution must apply, so a changed file fails loudly here.
fn render_config(target: &str) -> String {
    let deploy = repo().join("deploy/prometheus");
    let mut text = std::fs::read_to_string(deploy.join("prometheus.yml")).expect("prometheus.yml");
    let rules = deploy.join("rules.yml").canonicalize().expect("rules.yml");
    for (from, to) in [
        ("127.0.0.1:9433", target.to_string()),
        ("  - rules.yml", format!("  - {}", rules.display())),
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_string(),
        ),
    ] {
        assert!(
            text.contains(from),
            "prometheus.yml no longer contains {from:?}"
        );
        text = text.replace(from, &to);
    }
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("mapwatch-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, render_config(target)).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus (cargo xtask setup installs Debian's package)");
    Prometheus {
        child,
        addr,
        _dir: TempDir(dir),
    }
}

impl Prometheus {
    fn get(&self, path: &str, query: Option<&str>) -> Option<Value> {
        let mut request = ureq::get(&format!("http://{}{path}", self.addr));
        if let Some(q) = query {
            request = request.query("query", q);
        }
        let body = request.call().ok()?.body_mut().read_to_string().ok()?;
        serde_json::from_str(&body).ok()
    }

    /// Series an instant query returns (None: the query failed).
    fn series(&self, expr: &str) -> Option<usize> {
        let reply = self.get("/api/v1/query", Some(expr))?;
        (reply["status"] == "success").then(|| {
            reply["data"]["result"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
        })
    }

    fn firing(&self) -> Vec<String> {
        self.get("/api/v1/alerts", None)
            .and_then(|reply| {
                Some(
                    reply["data"]["alerts"]
                        .as_array()?
                        .iter()
                        .filter(|a| a["state"] == "firing")
                        .filter_map(|a| a["labels"]["alertname"].as_str().map(String::from))
                        .collect(),
                )
            })
            .unwrap_or_default()
    }
}

/// A copy of `binary` claiming Go 1.20, which mapwatch refuses (see tests/daemon.rs).
fn unsupported_copy(binary: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(binary).unwrap();
    let (from, to) = (b"go1.22.10", b"go1.20.10");
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
        bytes[at + i..at + i + from.len()].copy_from_slice(to);
        at += i + from.len();
    }
    let path = dir.join("legacy");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[test]
fn every_dashboard_query_and_an_alert_work_against_a_real_prometheus() {
    let Some(_kernel) =
        privileged("every_dashboard_query_and_an_alert_work_against_a_real_prometheus")
    else {
        return;
    };
    let wanted = [
        ("go1.22.10", "demo"),
        ("go1.27.3", "demo"),
        ("go1.22.10", "mapgrow"),
        ("go1.24.11", "mapgrow"),
        ("go1.22.10", "gcstw"),
    ];
    let Some(binaries) = wanted
        .iter()
        .map(|(go, name)| fixture(go, name))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let scratch =
        TempDir(std::env::temp_dir().join(format!("mapwatch-e2e-bin-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let legacy = unsupported_copy(&binaries[2], &scratch.0);

    let daemon = Mapwatch::run(&[
        "--kubernetes",
        "off",
        "--include-binary",
        "demo,mapgrow,gcstw,legacy",
        "--slice-growth",
        "--hot-probes",
        "mapassign_fast64,mallocgc",
    ]);
    let mut fixtures: Vec<Fixture> = binaries.iter().map(|b| Fixture::start(b, &[])).collect();
    daemon.scrape_until("every fixture attached", |s| {
        s.sum("mapwatch_attached_processes", &[]) == wanted.len() as u64
    });
    let prometheus = start_prometheus(&daemon.addr);
    // The unsupported binary starts once Prometheus has seen its error counter at 0:
    // the alert fires on an increase.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus
        .series("mapwatch_attach_errors_total{reason=\"unsupported_go_version\"} == 0")
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped mapwatch"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut legacy = Fixture::start(&legacy, &[]);
    // The workloads that run once (map growth to every kind, GC and STW reasons).
    for f in fixtures.iter_mut().filter(|f| !is_forever(f)) {
        f.run_workload_fields();
    }
    legacy.run_workload_fields();

    let values = dashboards::example_variable_values();
    let queries = dashboards::dashboard_queries(&repo().join("deploy/grafana"), &values)
        .expect("dashboard queries");
    assert!(!queries.is_empty());
    for query in &queries {
        assert!(
            !query.expr.contains("or vector(") && !query.expr.contains("absent("),
            "{} / {}: hides emptiness: {}",
            query.dashboard,
            query.panel,
            query.expr
        );
    }
    // Rates need two scrapes inside their window; give the data time to arrive, then
    // report every query that still returns nothing.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (empty, firing) = loop {
        let empty: Vec<String> = queries
            .iter()
            .filter(|q| prometheus.series(&q.expr).unwrap_or(0) == 0)
            .map(|q| format!("{} / {} [{}]: {}", q.dashboard, q.panel, q.ref_id, q.expr))
            .collect();
        let firing = prometheus.firing();
        if (empty.is_empty() && firing.iter().any(|a| a == ALERT_THAT_FIRES))
            || Instant::now() > deadline
        {
            break (empty, firing);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let mut problems = Vec::new();
    if !empty.is_empty() {
        problems.push(format!(
            "{} of {} dashboard queries returned no series:\n{}",
            empty.len(),
            queries.len(),
            empty.join("\n")
        ));
    }
    if !firing.iter().any(|a| a == ALERT_THAT_FIRES) {
        problems.push(format!(
            "{ALERT_THAT_FIRES} never fired (firing: {firing:?})"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));

    drop(prometheus);
    for f in fixtures {
        if is_forever(&f) {
            drop(f); // killed
        } else {
            assert!(f.finish().success(), "a profiled fixture failed");
        }
    }
    assert!(legacy.finish().success());
    assert!(daemon.stop().success());
    assert_eq!(mapwatch_links(), 0, "mapwatch run left BPF behind");
}

/// demo runs until killed and never prints `done`.
fn is_forever(fixture: &Fixture) -> bool {
    std::fs::read_link(format!("/proc/{}/exe", fixture.pid))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "demo"))
}
