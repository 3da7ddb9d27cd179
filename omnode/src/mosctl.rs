//! `omnode mosctl VERB [ARG]` (classic name `mosctl`): the node's flags and figures, bare
//! values for scripts (`mosctl getload 2` prints `0.52`) or one JSON object with `--json`.
//! A thin client of the control socket; the flags live in [`crate::balancer`], the figures
//! come from `status`. Verbs that change the node need root (or the daemon's user): the
//! daemon checks the caller with SO_PEERCRED.

use std::path::Path;

use crate::Error;
use crate::balancer::{Flag, NodeOp};
use crate::control::{self, NodeRow, Request, Response};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Stay,
    Nostay,
    Lstay,
    Nolstay,
    Block,
    Noblock,
    Quiet,
    Noquiet,
    Expel,
    Bring,
    Getload,
    Getspeed,
    Getmem,
    Getfree,
    Getutil,
    Isup,
    Status,
    Whois,
    Setspeed,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do or show.
    #[arg(value_enum)]
    pub verb: Verb,
    /// A node number for get*/isup/whois (default: this node), an address for whois, the
    /// speed for setspeed.
    pub arg: Option<String>,
    /// One JSON object instead of the bare value.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

fn refused(path: &Path, reason: String) -> Error {
    Error::Refused {
        path: path.to_path_buf(),
        reason,
    }
}

pub fn run(a: Args) -> Result<(), Error> {
    let path = &a.socket.socket;
    let flag = |f, on| NodeOp::Set { flag: f, on };
    let op = match a.verb {
        Verb::Stay => Some(flag(Flag::Stay, true)),
        Verb::Nostay => Some(flag(Flag::Stay, false)),
        Verb::Lstay => Some(flag(Flag::Lstay, true)),
        Verb::Nolstay => Some(flag(Flag::Lstay, false)),
        Verb::Block => Some(flag(Flag::Block, true)),
        Verb::Noblock => Some(flag(Flag::Block, false)),
        Verb::Quiet => Some(flag(Flag::Quiet, true)),
        Verb::Noquiet => Some(flag(Flag::Quiet, false)),
        Verb::Expel => Some(NodeOp::Expel),
        Verb::Bring => Some(NodeOp::Bring),
        Verb::Status => Some(NodeOp::Flags),
        Verb::Setspeed => {
            let s = a.arg.as_deref().ok_or_else(|| {
                Error::Config("mosctl setspeed needs a speed (e.g. mosctl setspeed 2000)".into())
            })?;
            let speed = s
                .parse()
                .map_err(|_| Error::Config(format!("setspeed: '{s}' is not a speed")))?;
            Some(NodeOp::SetSpeed { speed })
        }
        _ => None,
    };
    if let Some(op) = op {
        return node_op(path, a.verb, op, a.json);
    }
    let report = match control::call(path, &Request::Status)? {
        Response::Status(r) => r,
        Response::Error(e) => return Err(refused(path, e)),
        other => return Err(refused(path, format!("unexpected answer {other:?}"))),
    };
    if a.verb == Verb::Whois {
        return whois(&report, a.arg.as_deref(), a.json);
    }
    let id = match a.arg.as_deref() {
        None => report.node,
        Some(s) => s
            .parse()
            .map_err(|_| Error::Config(format!("'{s}' is not a node number")))?,
    };
    let row = report.nodes.iter().find(|r| r.id == id).ok_or_else(|| {
        Error::Config(format!(
            "node {id} is not in the cluster as node {} knows it",
            report.node
        ))
    })?;
    if a.verb == Verb::Isup {
        if a.json {
            println!("{}", serde_json::json!({ "node": id, "up": row.up }));
        } else {
            println!("{}", if row.up { "yes" } else { "no" });
        }
        return if row.up {
            Ok(())
        } else {
            Err(Error::Config(format!("node {id} is down")))
        };
    }
    let (key, value) = figure(a.verb, row)
        .ok_or_else(|| Error::Config(format!("node {id}: no fresh figures (is it up?)")))?;
    if a.json {
        println!("{}", serde_json::json!({ "node": id, key: value }));
    } else {
        println!("{value}");
    }
    Ok(())
}

/// The figure a get* verb shows, by its JSON key.
fn figure(verb: Verb, r: &NodeRow) -> Option<(&'static str, serde_json::Value)> {
    let round = |x: f64| (x * 100.0).round() / 100.0;
    Some(match verb {
        Verb::Getload => ("load", round(r.load?).into()),
        Verb::Getspeed => ("speed", r.speed?.into()),
        Verb::Getmem => ("mem", r.total_mem?.into()),
        Verb::Getfree => ("free", r.free_mem?.into()),
        Verb::Getutil => ("util", utilisation(r.load?, r.capacity?).into()),
        _ => return None,
    })
}

/// Percent of the node's CPU capacity in use (runnable processes over capacity, at most 100).
pub fn utilisation(load: f64, capacity: f64) -> u32 {
    if capacity <= 0.0 || !load.is_finite() {
        return 0;
    }
    ((load / capacity * 100.0).round().clamp(0.0, 100.0)) as u32
}

/// `whois`: no argument, this node's number; a number, its address; an address, its number.
fn whois(report: &control::StatusReport, arg: Option<&str>, json: bool) -> Result<(), Error> {
    let row = match arg {
        None => report.nodes.iter().find(|r| r.id == report.node),
        Some(s) => match s.parse::<u32>() {
            Ok(id) => report.nodes.iter().find(|r| r.id == id),
            Err(_) => report.nodes.iter().find(|r| r.addr == s),
        },
    }
    .ok_or_else(|| {
        Error::Config(format!(
            "no node {} in the cluster as node {} knows it",
            arg.unwrap_or("?"),
            report.node
        ))
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "node": row.id, "addr": row.addr })
        );
    } else if arg.is_some_and(|s| s.parse::<u32>().is_ok()) {
        println!("{}", row.addr);
    } else {
        println!("{}", row.id);
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn node_op(path: &Path, verb: Verb, op: NodeOp, json: bool) -> Result<(), Error> {
    match control::call(path, &Request::Node(op))? {
        Response::Flags(f) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&f).map_err(std::io::Error::other)?
                );
            } else if verb == Verb::Status {
                println!("node: {}", f.node);
                println!("stay: {}", yes(f.stay));
                println!("lstay: {}", yes(f.lstay));
                println!("block: {}", yes(f.block));
                println!("quiet: {}", yes(f.quiet));
                match f.speed {
                    Some(s) => println!("speed: {s} (set)"),
                    None => println!("speed: measured"),
                }
                println!("candidates: {}", f.candidates);
            }
            Ok(())
        }
        Response::Moves(m) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&m).map_err(std::io::Error::other)?
                );
            } else {
                for pid in &m.moved {
                    println!("{pid}");
                }
                for (pid, why) in &m.failed {
                    eprintln!("{pid}: not moved: {why}");
                }
            }
            if m.failed.is_empty() {
                Ok(())
            } else {
                Err(refused(
                    path,
                    format!("{} process(es) did not move", m.failed.len()),
                ))
            }
        }
        Response::Error(e) => Err(refused(path, e)),
        other => Err(refused(path, format!("unexpected answer {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_load_over_capacity_capped() {
        assert_eq!(utilisation(0.25, 0.5), 50);
        assert_eq!(utilisation(3.0, 2.0), 100);
        assert_eq!(utilisation(1.0, 0.0), 0);
        assert_eq!(utilisation(f64::NAN, 1.0), 0);
    }
}
