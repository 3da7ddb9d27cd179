//! The balancing simulator: the same decision code as the daemons over N simulated nodes.
//!
//! ```text
//! cargo run --release -p balance --example simulate -- [--nodes 16,256,4096] [--jobs-per-node 4]
//!     [--window 100] [--mean-work 120000] [--seed 1] [--hysteresis 1.3] [--accept-margin 1.1]
//!     [--choose-among 3] [--push-pull] [--spread-only]   # the last: only the gossip table
//! ```
//!
//! For each cluster size it prints a Markdown table row per mode (no balancing, perfect
//! knowledge, omnode) with the makespan and its ratio to a lower bound no schedule can beat,
//! then how many gossip ticks it takes until every node knows an idle node and the least
//! loaded node.

use std::time::Instant;

use balance::sim::{self, Mode, Scenario};

fn main() {
    let mut nodes = vec![16usize, 256, 4096];
    let (mut per_node, mut window, mut mean_work, mut seed) =
        (4usize, 100.0f64, 120_000.0f64, 1u64);
    let (mut hysteresis, mut accept_margin): (Option<f64>, Option<f64>) = (None, None);
    let (mut spread_only, mut push_pull, mut choose_among) = (false, false, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--nodes" => {
                nodes = val()
                    .split(',')
                    .map(|n| {
                        n.parse()
                            .unwrap_or_else(|_| usage("--nodes takes numbers like 16,256"))
                    })
                    .collect()
            }
            "--jobs-per-node" => {
                per_node = val().parse().unwrap_or_else(|_| usage("--jobs-per-node N"))
            }
            "--window" => window = val().parse().unwrap_or_else(|_| usage("--window SECONDS")),
            "--mean-work" => {
                mean_work = val()
                    .parse()
                    .unwrap_or_else(|_| usage("--mean-work MHZ_SECONDS"))
            }
            "--spread-only" => spread_only = true,
            "--push-pull" => push_pull = true,
            "--choose-among" => {
                choose_among = Some(val().parse().unwrap_or_else(|_| usage("--choose-among K")))
            }
            "--seed" => seed = val().parse().unwrap_or_else(|_| usage("--seed N")),
            "--hysteresis" => {
                hysteresis = Some(val().parse().unwrap_or_else(|_| usage("--hysteresis X")))
            }
            "--accept-margin" => {
                accept_margin = Some(val().parse().unwrap_or_else(|_| usage("--accept-margin X")))
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let d = balance::policy::Config::default();
    println!(
        "policy: hysteresis {}, accept margin {}, choose among {}, min stay {:?}, cost factor {}; gossip {}",
        hysteresis.unwrap_or(d.hysteresis),
        accept_margin.unwrap_or(d.accept_margin),
        choose_among.unwrap_or(d.choose_among),
        d.min_stay,
        d.cost_factor,
        if push_pull { "push-pull" } else { "push" }
    );
    println!(
        "jobs: {per_node} per node, arriving in the first {window} s at 1 node in 16, mean work {mean_work} MHz·s (exponential); seed {seed}\n"
    );
    println!(
        "| nodes | jobs | mode | makespan s | × ideal | mean response s | migrations | max per job | bounces | placed away | refusals | gossip msgs/node/s | max entries/msg | wall s |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in nodes.iter().filter(|_| !spread_only) {
        let mut s = Scenario::mixed(n, n * per_node, window, mean_work, seed);
        if let Some(h) = hysteresis {
            s.config.hysteresis = h;
        }
        if let Some(m) = accept_margin {
            s.config.accept_margin = m;
        }
        if let Some(k) = choose_among {
            s.config.choose_among = k;
        }
        s.pull = push_pull;
        let ideal = sim::ideal_makespan(&s);
        println!(
            "| {n} | {} | ideal (lower bound) | {ideal:.0} | 1.00 | | | | | | | |",
            s.jobs.len()
        );
        for mode in [Mode::None, Mode::Perfect, Mode::Omnode] {
            let t = Instant::now();
            let r = sim::run(&s, mode);
            let wall = t.elapsed().as_secs_f64();
            let gossip = if mode == Mode::Omnode {
                (
                    format!("{:.2}", r.gossip_per_node_s),
                    r.max_gossip_entries.to_string(),
                )
            } else {
                ("-".into(), "-".into())
            };
            println!(
                "| {n} | {} | {mode:?} | {:.0} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {wall:.1} |",
                s.jobs.len(),
                r.makespan,
                r.makespan / ideal,
                r.mean_response,
                r.migrations,
                r.max_moves_per_job,
                r.bounces,
                r.remote_placements,
                r.refusals,
                gossip.0,
                gossip.1,
            );
        }
    }
    println!(
        "\n| nodes | gossip | ticks until every node knows an idle node | … knows the least loaded node |"
    );
    println!("|---:|---|---:|---:|");
    for &n in &nodes {
        for (name, pull) in [("push (2 peers)", false), ("push-pull (2 peers)", true)] {
            let (idle, least) = sim::spread_ticks(n, seed, 100, pull);
            let f = |t: Option<u64>| t.map(|t| t.to_string()).unwrap_or_else(|| "> 100".into());
            println!("| {n} | {name} | {} | {} |", f(idle), f(least));
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "simulate: {why}\nusage: simulate [--nodes 16,256,4096] [--jobs-per-node 4] [--window 100] [--mean-work 120000] [--seed 1] [--hysteresis 1.3] [--accept-margin 1.1] [--choose-among 3] [--push-pull] [--spread-only]"
    );
    std::process::exit(2)
}
