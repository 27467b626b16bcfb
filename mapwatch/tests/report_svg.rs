//! `--format svg` as a browser shows it: headless Chromium screenshots the SVG of a
//! hand-built report, and the picture must have the charts' ink and colours (an
//! unparsable SVG gives Chromium's error page, without them). No root; needs Chromium
//! (`cargo xtask setup` installs it).
//!
//! `MAPWATCH_UPDATE_EXAMPLE=1` also writes docs/report-example.svg;
//! `MAPWATCH_KEEP_SCREENSHOT=1` keeps the temporary directory with the PNG.
mod support;

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mapwatch::report::{model::*, svg};
use support::in_ci;

const SLICE_BLUE: [u8; 3] = [0x2b, 0x6c, 0xb0];
const MAP_ORANGE: [u8; 3] = [0xdd, 0x6b, 0x20];
const PAUSE_RED: [u8; 3] = [0xc5, 0x30, 0x30];
/// Background of Chromium's "This page contains the following errors" box, shown
/// above whatever part of a malformed SVG it could still draw.
const XML_ERROR_PINK: [u8; 3] = [0xff, 0xdd, 0xdd];

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file());
    if found.is_none() {
        let message =
            "report_svg: no chromium on PATH; `apt-get install chromium` or run `cargo xtask test`";
        assert!(!in_ci(), "skipped in CI: {message}");
        eprintln!("SKIP {message}");
    }
    found
}

fn loc(function: &str, file: &str, line: u32) -> Location {
    Location {
        function: function.into(),
        file: file.into(),
        line,
    }
}

fn advice(n: u64) -> Advice {
    Advice::PreSize {
        n,
        code: format!("make([]T, 0, {n})"),
        growths_saved: 10,
        growths_saved_per_instance: 1.0,
        bytes_saved_per_s: 100.0,
        message: format!("pre-size to {n}: <saves> 90% & more"),
    }
}

fn slice(location: Option<Location>, growths: u64, copied: u64) -> SliceSite {
    SliceSite {
        location,
        elem_types: vec!["main.Row".into()],
        elem_size: Some(48),
        growths,
        bytes_allocated: copied * 2,
        bytes_copied: copied,
        bytes_copied_per_s: copied as f64 / 60.0,
        instances: growths / 8 + 1,
        growths_per_instance: Distribution::default(),
        final_cap: Distribution::default(),
        started_non_empty: 0,
        stacks: Vec::new(),
        advice: advice(512),
    }
}

fn map(location: Option<Location>, growths: u64, maps: u64) -> MapSite {
    MapSite {
        location,
        map_types: Vec::new(),
        kinds: BTreeMap::from([("double".into(), growths)]),
        growths,
        maps,
        growths_per_map: Distribution::default(),
        size_at_last_growth: Distribution::default(),
        capacity_reached: Distribution::default(),
        hint: None,
        made_at: None,
        mean_load_factor_at_growth: Some(6.5),
        mean_overflow_buckets_at_growth: None,
        stacks: Vec::new(),
        advice: Advice::None {
            why: "already sized by make(map, n)".into(),
        },
    }
}

/// A minute of a service: a steady load with a burst at 20–30 s, a few sites with
/// the names real Go gives (generics, pointer receivers, closures, module paths).
fn report() -> Report {
    let slice_sites = vec![
        slice(
            Some(loc(
                "github.com/acme/ingest/store.(*Loader[go.shape.struct { ID int64; Tags []string }]).Load",
                "/home/ci/go/pkg/mod/github.com/acme/ingest@v1.4.2/store/loader.go",
                212,
            )),
            48_210,
            96_000_000,
        ),
        slice(
            Some(loc("main.parseRows", "/src/app/parse.go", 88)),
            21_400,
            12_500_000,
        ),
        slice(
            Some(loc(
                "main.(*Server).handle.func2",
                "/src/app/server & api.go",
                140,
            )),
            9_870,
            3_100_000,
        ),
        slice(
            Some(loc(
                "encoding/json.(*decodeState).array",
                "/usr/lib/go/src/encoding/json/decode.go",
                557,
            )),
            4_020,
            800_000,
        ),
        slice(None, 1_230, 40_000),
        slice(
            Some(loc("main.collect[...]", "/src/app/collect.go", 19)),
            610,
            9_000,
        ),
    ];
    let map_sites = vec![
        map(
            Some(loc("main.(*Index).Add", "/src/app/index.go", 61)),
            3_100,
            220,
        ),
        map(
            Some(loc("main.buildCache<T>", "/src/app/cache.go", 33)),
            870,
            12,
        ),
        map(None, 45, 3),
    ];
    let buckets = 60;
    let slice_growths: Vec<u64> = (0..buckets)
        .map(|i| {
            if (20..30).contains(&i) {
                4_500 + i * 37
            } else {
                600 + (i * 53) % 200
            }
        })
        .collect();
    let map_growths: Vec<u64> = (0..buckets).map(|i| 40 + (i * 29) % 50).collect();
    let stw_pauses: Vec<Pause> = (0..24)
        .map(|i| Pause {
            t_s: 1.3 + i as f64 * 2.45,
            duration_ms: if (8..12).contains(&i) {
                2.5 + i as f64 * 0.4
            } else {
                0.2 + (i % 5) as f64 * 0.15
            },
            reason: "GC mark termination".into(),
        })
        .collect();
    let slice_total: u64 = slice_sites.iter().map(|s| s.growths).sum();
    let copied: u64 = slice_sites.iter().map(|s| s.bytes_copied).sum();
    let map_total: u64 = map_sites.iter().map(|s| s.growths).sum();
    Report {
        schema_version: SCHEMA_VERSION,
        capture: CaptureInfo {
            binary: "/srv/acme/bin/ingest-server".into(),
            build_id: "9f2c0e".into(),
            go_version: "go1.27.3".into(),
            map_implementation: "swiss".into(),
            pid: 31337,
            command: None,
            start_unix_s: 1_800_000_000.0,
            duration_s: 60.0,
            stopped_because: Some("--duration 60s".into()),
            complete: false,
            damage: None,
            events_lost: 12,
            observations_dropped: 0,
        },
        summary: Summary {
            slice_growths: slice_total,
            slice_growths_per_s: slice_total as f64 / 60.0,
            slice_bytes_allocated: copied * 2,
            slice_bytes_copied: copied,
            slice_bytes_copied_per_s: copied as f64 / 60.0,
            map_growths: map_total,
            map_growths_per_s: map_total as f64 / 60.0,
            gc_cycles: 24,
            stw_pauses: 24,
            stw_p50_ms: 0.5,
            stw_p99_ms: 6.9,
            stw_max_ms: 6.9,
            stw_total_ms: 38.0,
            growth_stw_correlation: Some(0.82),
        },
        slice_sites,
        map_sites,
        timeline: Timeline {
            bucket_s: 1.0,
            slice_growths,
            map_growths,
            slice_bytes_copied: vec![0; buckets as usize],
            gc_cycles: vec![0; buckets as usize],
        },
        stw_pauses,
    }
}

/// Runs Chromium, killing it if it has not written the screenshot within a minute.
fn screenshot(chromium: &Path, svg: &Path, png: &Path, dir: &Path) {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg("--force-device-scale-factor=1")
        .arg("--window-size=1200,900")
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium: {status}");
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "chromium took over a minute to screenshot {}",
                svg.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// RGB pixels of a PNG.
fn pixels(png: &Path) -> Vec<[u8; 3]> {
    let file = std::io::BufReader::new(std::fs::File::open(png).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

fn near(p: [u8; 3], colour: [u8; 3]) -> bool {
    p.iter().zip(colour).all(|(&a, b)| a.abs_diff(b) <= 12)
}

#[test]
fn chromium_draws_the_svg_report() {
    let Some(chromium) = chromium() else { return };
    let dir = std::env::temp_dir().join(format!("mapwatch-report-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = svg::render(&report(), 10);
    if std::env::var_os("MAPWATCH_UPDATE_EXAMPLE").is_some() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report-example.svg");
        std::fs::write(example, &text).unwrap();
    }
    let (svg_path, png_path) = (dir.join("report.svg"), dir.join("report.png"));
    std::fs::write(&svg_path, &text).unwrap();
    screenshot(&chromium, &svg_path, &png_path, &dir);

    let pixels = pixels(&png_path);
    assert_eq!(pixels.len(), 1200 * 900);
    let ink = pixels.iter().filter(|p| p.iter().any(|&c| c < 200)).count();
    let colours: HashSet<[u8; 3]> = pixels.iter().copied().collect();
    let count = |colour| pixels.iter().filter(|&&p| near(p, colour)).count();
    let (blue, orange, red) = (count(SLICE_BLUE), count(MAP_ORANGE), count(PAUSE_RED));
    let pink = count(XML_ERROR_PINK);
    println!(
        "{}: {ink} dark pixels, {} colours, blue {blue}, orange {orange}, red {red}, pink {pink}",
        png_path.display(),
        colours.len()
    );
    assert!(
        pink < 10_000,
        "{pink} pixels of Chromium's XML error box: malformed SVG"
    );
    assert!(ink > 20_000, "only {ink} dark pixels: blank?");
    assert!(colours.len() > 16, "only {} colours", colours.len());
    // Each series' colour, in its chart and its bars: the 900-pixel window shows the
    // growth chart, both bar sections and most of the pause chart.
    assert!(blue > 5_000, "slice line and bars: {blue} pixels");
    assert!(orange > 5_000, "map line and bars: {orange} pixels");
    assert!(red > 300, "warning text and pauses: {red} pixels");
    if std::env::var_os("MAPWATCH_KEEP_SCREENSHOT").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}
