//! What to change at a site, with numbers — or why nothing. Pure rules over what the
//! capture saw at the site; docs/report.md explains them to users.
//!
//! The size advised is the 95th percentile of the capacity the site's instances ended
//! with: every instance that ended at or below it would not have grown at all (its
//! final length is at most its capacity), and it stays below twice the final length
//! because the runtime at most doubles (src/runtime/slice.go nextslicecap; a map
//! doubles its buckets or table).
use super::model::{Advice, Distribution, Location};

/// Fewer growths than this at a site in a whole capture are not worth a change.
const MIN_GROWTHS: u64 = 10;
/// A slice or map that grows about once saves at most that one growth.
const MIN_GROWTHS_PER_INSTANCE: f64 = 1.5;
/// Final sizes whose p95 is this many times their median: a size for the p95 would
/// waste memory on most instances.
const MAX_SPREAD: u64 = 16;

pub struct SliceFacts<'a> {
    pub location: Option<&'a Location>,
    pub elem_type: Option<&'a str>,
    pub growths: u64,
    /// Per instance: the new capacity and the bytes copied of each growth, in order.
    pub instances: &'a [(&'a [u64], &'a [u64])],
    pub started_non_empty: u64,
    pub growths_per_instance: Distribution,
    pub final_cap: Distribution,
    pub bytes_copied_per_s: f64,
    pub duration_s: f64,
}

pub fn for_slice(facts: &SliceFacts) -> Advice {
    let Some(location) = facts.location else {
        return none("the append site could not be named (no symbol for the caller)");
    };
    if is_runtime(&location.function) {
        return none("in the Go runtime: not code to change (it grows as the program uses it)");
    }
    if let Some(why) = common_refusals(
        facts.growths,
        facts.growths_per_instance,
        facts.final_cap,
        facts.duration_s,
        "slice",
    ) {
        return none(&why);
    }
    let n = facts.final_cap.p95;
    let (mut saved, mut copied_saved, mut never_grow) = (0u64, 0u64, 0u64);
    for (caps, copied) in facts.instances {
        let avoided = caps.iter().take_while(|&&cap| cap <= n).count();
        saved += avoided as u64;
        copied_saved = copied[..avoided.min(copied.len())]
            .iter()
            .fold(copied_saved, |sum, &c| sum.saturating_add(c));
        never_grow += u64::from(avoided == caps.len());
    }
    let instances = facts.instances.len().max(1) as f64;
    let elem = facts
        .elem_type
        .map_or("T".to_string(), |t| go_type_in(t, &location.function));
    let code = format!("make([]{elem}, 0, {n})");
    let already = if facts.started_non_empty.saturating_mul(2) > facts.instances.len() as u64 {
        " (already made with a capacity, but it outgrows it)"
    } else {
        ""
    };
    let bytes_saved_per_s = if facts.duration_s > 0.0 {
        copied_saved as f64 / facts.duration_s
    } else {
        0.0
    };
    let message = format!(
        "pre-size at {}: {code}{already} — p95 final capacity {n}, {:.1} growths per slice, \
         {} copied; saves ~{:.1} growths per slice ({:.0}% of slices would not grow)",
        short(location),
        facts.growths_per_instance.mean,
        per_second(facts.bytes_copied_per_s),
        saved as f64 / instances,
        100.0 * never_grow as f64 / instances,
    );
    Advice::PreSize {
        n,
        code,
        growths_saved: saved,
        growths_saved_per_instance: saved as f64 / instances,
        bytes_saved_per_s,
        message,
    }
}

pub struct MapFacts<'a> {
    pub location: Option<&'a Location>,
    /// Where the maps were made and their largest hint, when the makes were seen.
    pub made_at: Option<&'a Location>,
    pub max_hint: Option<u64>,
    pub map_type: Option<&'a str>,
    pub growths: u64,
    pub growths_per_map: Distribution,
    /// Per map: entries it can hold after its last growth.
    pub capacity_reached: Distribution,
}

pub fn for_map(facts: &MapFacts) -> Advice {
    let Some(location) = facts.location.filter(|l| !is_runtime(&l.function)) else {
        return none(
            "the line that inserted is not known: only the runtime's frame was recorded \
             (the map's growth is counted; its user-code line needs a stack)",
        );
    };
    if let Some(why) = common_refusals(
        facts.growths,
        facts.growths_per_map,
        facts.capacity_reached,
        1.0,
        "map",
    ) {
        return none(&why);
    }
    let n = facts.capacity_reached.p95;
    let map_type = facts
        .map_type
        .map_or("map[K]V".to_string(), |t| go_type_in(t, &location.function));
    let code = format!("make({map_type}, {n})");
    let saved = (facts.growths_per_map.mean * facts.growths_per_map.count as f64).round() as u64;
    // The change goes where the map is made; the insert that grew it says which map.
    let (at, made) = match facts.made_at {
        Some(made_at) => (
            short(made_at),
            match facts.max_hint {
                Some(0) | None => format!(" (no size hint; grows at {})", short(location)),
                Some(hint) => format!(" (hint {hint} is too small; grows at {})", short(location)),
            },
        ),
        None => (short(location), String::new()),
    };
    let message = format!(
        "pre-size at {at}{made}: {code} — maps reach room for {n} entries (p95), {:.1} \
         growths per map; a hint of {n} saves them",
        facts.growths_per_map.mean,
    );
    Advice::PreSize {
        n,
        code,
        growths_saved: saved,
        growths_saved_per_instance: facts.growths_per_map.mean,
        bytes_saved_per_s: 0.0,
        message,
    }
}

fn common_refusals(
    growths: u64,
    per_instance: Distribution,
    final_size: Distribution,
    duration_s: f64,
    what: &str,
) -> Option<String> {
    if growths < MIN_GROWTHS {
        return Some(format!(
            "only {growths} growth(s) in {duration_s:.0} s: not worth a change"
        ));
    }
    if per_instance.mean < MIN_GROWTHS_PER_INSTANCE {
        return Some(format!(
            "each {what} grows about once ({:.1} growths per {what}): pre-sizing saves at most \
             that one",
            per_instance.mean
        ));
    }
    if final_size.p50 > 0 && final_size.p95 > MAX_SPREAD.saturating_mul(final_size.p50) {
        return Some(format!(
            "final sizes spread too widely (p50 {}, p95 {}): a size for the p95 would give most \
             {what}s {}x the room they need; size it from the input where its length is known",
            final_size.p50,
            final_size.p95,
            final_size.p95 / final_size.p50
        ));
    }
    None
}

fn none(why: &str) -> Advice {
    Advice::None {
        why: why.to_string(),
    }
}

/// Functions of the Go runtime, whose growth is not the user's to change.
pub fn is_runtime(function: &str) -> bool {
    function.starts_with("runtime.") || function.starts_with("internal/runtime/")
}

/// A type as written in the function's own package: the runtime names types by package
/// name (`main.Item`, `map[string]main.Item`); inside package main that is `Item`. A
/// generic function's growth carries its GC shape (`go.shape.int64`), not the type
/// argument: that is written `T`.
fn go_type_in(type_name: &str, function: &str) -> String {
    if type_name.contains("go.shape.") {
        return "T".to_string();
    }
    let package = package_name(function);
    if package.is_empty() {
        return type_name.to_string();
    }
    type_name.replace(&format!("{package}."), "")
}

/// "example.com/m/pkg.(*T).Method" → "pkg".
fn package_name(function: &str) -> &str {
    let last = function.rsplit('/').next().unwrap_or(function);
    last.split('.').next().unwrap_or("")
}

/// "handler.go:42".
fn short(location: &Location) -> String {
    let file = location.file.rsplit('/').next().unwrap_or(&location.file);
    format!("{file}:{}", location.line)
}

/// "3.1 MB/s".
pub fn per_second(bytes_per_s: f64) -> String {
    format!("{}/s", human_bytes(bytes_per_s))
}

/// Bytes in B, kB, MB, GB (powers of 1000, as in `go tool pprof`).
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analyse::distribution;

    fn location() -> Location {
        Location {
            function: "main.handle".into(),
            file: "/src/app/handler.go".into(),
            line: 42,
        }
    }

    /// Instances appending one at a time from nil to `len` elements (Go's doubling for
    /// small slices: 1, 2, 4, 8, …).
    fn grown_to(len: u64) -> Vec<u64> {
        let mut caps = vec![];
        let mut cap = 0;
        while cap < len {
            cap = if cap == 0 { 1 } else { cap * 2 };
            caps.push(cap);
        }
        caps
    }

    fn advise(lengths: &[u64]) -> Advice {
        let caps: Vec<Vec<u64>> = lengths.iter().map(|&l| grown_to(l)).collect();
        let copied: Vec<Vec<u64>> = caps.iter().map(|c| vec![8; c.len()]).collect();
        let instances: Vec<(&[u64], &[u64])> = caps
            .iter()
            .zip(&copied)
            .map(|(c, b)| (c.as_slice(), b.as_slice()))
            .collect();
        let loc = location();
        let facts = SliceFacts {
            location: Some(&loc),
            elem_type: Some("main.Item"),
            growths: caps.iter().map(|c| c.len() as u64).sum(),
            instances: &instances,
            started_non_empty: 0,
            growths_per_instance: distribution(caps.iter().map(|c| c.len() as u64)),
            final_cap: distribution(caps.iter().map(|c| *c.last().unwrap())),
            bytes_copied_per_s: 1e6,
            duration_s: 10.0,
        };
        for_slice(&facts)
    }

    #[test]
    fn the_advised_size_covers_the_p95_length_within_twice_it() {
        let lengths: Vec<u64> = (0..100).map(|i| 300 + i * 2).collect(); // 300..498
        let Advice::PreSize {
            n, code, message, ..
        } = advise(&lengths)
        else {
            panic!("no advice");
        };
        let p95_len = 300 + 94 * 2 + 2; // nearest rank 95 of 100
        assert!(n >= p95_len && n <= 2 * p95_len, "{n} vs {p95_len}");
        assert_eq!(code, format!("make([]Item, 0, {n})"));
        assert!(message.starts_with("pre-size at handler.go:42: make([]Item, 0, 512)"));
        assert!(message.contains("1.0 MB/s copied"), "{message}");
    }

    #[test]
    fn no_advice_where_it_would_not_help() {
        let once = advise(&[1; 50]);
        assert!(once.message().contains("grows about once"), "{once:?}");
        let few = advise(&[8, 8]);
        assert!(few.message().contains("not worth a change"), "{few:?}");
        let mut spread = vec![4u64; 90];
        spread.extend([4096; 10]);
        let spread = advise(&spread);
        assert!(spread.message().contains("spread too widely"), "{spread:?}");
    }

    #[test]
    fn types_are_written_as_in_their_package() {
        assert_eq!(go_type_in("main.Item", "main.handle"), "Item");
        assert_eq!(
            go_type_in("map[string]*api.User", "example.com/svc/api.(*S).Load"),
            "map[string]*User"
        );
        assert_eq!(go_type_in("go.shape.int64", "main.fill[...]"), "T");
        assert_eq!(go_type_in("[]byte", "main.f"), "[]byte");
        assert_eq!(human_bytes(3_100_000.0), "3.1 MB");
    }
}
