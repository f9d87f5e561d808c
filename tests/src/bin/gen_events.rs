//! Writes a seeded PostHog-like event log (JSON lines) for benchmarks and trials:
//!
//! ```text
//! gen_events --count N [--seed S] [--teams T] [--visitors V] [--bad-rate R] [--bad-kinds a,b] [--huge-kb K] -o FILE
//! ```
//!
//! The same options give the same bytes (see `pluginflow_tests::eventlog`).

use pluginflow_tests::eventlog::{BadKind, GenOptions, generate};

fn usage(problem: &str) -> ! {
    eprintln!(
        "gen_events: {problem}\nusage: gen_events --count N [--seed S] [--teams T] [--visitors V] [--bad-rate R] [--bad-kinds truncated,non_object,missing_event,huge_property,invalid_utf8] [--huge-kb K] -o FILE"
    );
    std::process::exit(2)
}

fn main() {
    let mut opts = GenOptions { bad_rate: 0.0, ..GenOptions::default() };
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |what: &str| -> usize { value.parse().unwrap_or_else(|_| usage(&format!("{flag}: {value:?} is not {what}"))) };
        match flag.as_str() {
            "--count" => opts.count = number("a count"),
            "--seed" => opts.seed = number("a seed") as u64,
            "--teams" => opts.teams = number("a count") as u32,
            "--visitors" => opts.visitors = number("a count"),
            "--huge-kb" => opts.huge_kb = number("a size"),
            "--bad-rate" => {
                opts.bad_rate = value.parse().ok().filter(|r| (0.0..=1.0).contains(r)).unwrap_or_else(|| usage("--bad-rate takes 0 to 1"))
            }
            "--bad-kinds" => {
                opts.bad_kinds =
                    value.split(',').map(|k| BadKind::parse(k).unwrap_or_else(|| usage(&format!("unknown bad kind {k}")))).collect();
            }
            "-o" | "--output" => out = Some(value),
            other => usage(&format!("unknown option {other}")),
        }
    }
    let out = out.unwrap_or_else(|| usage("-o FILE is required"));
    if opts.teams == 0 {
        usage("--teams must be at least 1");
    }
    if let Err(e) = std::fs::write(&out, generate(&opts)) {
        eprintln!("gen_events: cannot write {out}: {e}");
        std::process::exit(1);
    }
}
