//! Runs every workload of BENCHMARKS.md and prints JSON lines, then a table.
//!
//! `cargo run --release -p aios-benches --bin report [-- --quick] [-- --only AUD]`

use aios_benches::{
    ann, audit, console, governance, memory, orchestrator, print_json, print_table, quality, sched,
    sqlite, workspace, Config,
};

/// One area's workloads.
type Area = fn(&Config) -> Vec<aios_benches::Measurement>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let config = Config { quick };
    if let Some(name) = args
        .iter()
        .position(|a| a == "--subprocess")
        .and_then(|i| args.get(i + 1))
    {
        // an isolated workload run by the orchestrator area in a fresh process
        if name == "ann" {
            print_json(&ann::subprocess(&config));
        } else {
            print_json(&orchestrator::subprocess(name, &config));
        }
        return;
    }
    let areas: [(&str, Area); 10] = [
        ("audit", audit::run),
        ("governance", governance::run),
        ("memory", memory::run),
        ("ann", ann::run),
        ("orchestrator", orchestrator::run),
        ("sqlite", sqlite::run),
        ("sched", sched::run),
        ("embed", quality::run),
        ("workspace", workspace::run),
        ("console", console::run),
    ];
    let mut all = Vec::new();
    for (name, run) in areas {
        if only
            .as_deref()
            .is_some_and(|o| !name.starts_with(&o.to_lowercase()))
        {
            continue;
        }
        let ms = run(&config);
        print_json(&ms);
        all.extend(ms);
    }
    print_table(&all);
}
