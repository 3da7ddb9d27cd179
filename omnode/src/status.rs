//! `omnode status [--json]`: ask a node's daemon how it sees the cluster.

use std::path::Path;
use std::sync::OnceLock;

use crate::Error;
use crate::control::{self, NodeRow, Request, Response, StatusReport};

/// For each peer: the name of the transport its link uses now, and why it is not the one
/// asked for (an `--transport rdma` link that fell back to TCP). `None` without a link.
pub type LinkOf = Box<dyn Fn(u32) -> Option<(String, Option<String>)> + Send + Sync>;

static LINK_OF: OnceLock<LinkOf> = OnceLock::new();

/// Set once by the daemon when its transport starts (one transport per process).
pub fn set_link_of(f: LinkOf) {
    let _ = LINK_OF.set(f);
}

/// The transport of this node's link to `peer` (for the LINK column).
pub fn link_of(peer: u32) -> Option<(String, Option<String>)> {
    LINK_OF.get().and_then(|f| f(peer))
}

pub fn run(socket: &Path, json: bool) -> Result<(), Error> {
    let report = match control::call(socket, &Request::Status)? {
        Response::Status(r) => r,
        Response::Error(reason) => {
            return Err(Error::Refused {
                path: socket.to_owned(),
                reason,
            });
        }
        other => {
            return Err(Error::Refused {
                path: socket.to_owned(),
                reason: format!("unexpected answer to status: {other:?}"),
            });
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(std::io::Error::other)?
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The report as an aligned table; `*` marks the answering node.
pub fn table(r: &StatusReport) -> String {
    let mut rows = vec![
        [
            "NODE",
            "ADDRESS",
            "STATE",
            "LINK",
            "LOAD",
            "NLOAD",
            "CPUS",
            "CAP",
            "SPEED",
            "FREE MEM",
            "TOTAL MEM",
            "FOUND BY",
        ]
        .map(String::from),
    ];
    for n in &r.nodes {
        rows.push(row(n));
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let up = r.nodes.iter().filter(|n| n.up).count();
    out.push_str(&format!(
        "{up} of {} nodes up (as seen by node {})\n",
        r.nodes.len(),
        r.node
    ));
    out
}

fn row(n: &NodeRow) -> [String; 12] {
    let dash = || "-".to_string();
    [
        if n.local {
            format!("{}*", n.id)
        } else {
            n.id.to_string()
        },
        n.addr.clone(),
        if n.up {
            "up".into()
        } else {
            match n.last_seen_s {
                Some(s) => format!("DOWN (last seen {})", ago(s)),
                None => "DOWN (never seen)".into(),
            }
        },
        n.link.clone().unwrap_or_else(dash),
        n.load.map(|l| format!("{l:.2}")).unwrap_or_else(dash),
        n.norm_load.map(|l| format!("{l:.2}")).unwrap_or_else(dash),
        n.cpus.map(|c| c.to_string()).unwrap_or_else(dash),
        n.capacity.map(|c| format!("{c:.2}")).unwrap_or_else(dash),
        n.speed.map(|s| s.to_string()).unwrap_or_else(dash),
        n.free_mem.map(gib).unwrap_or_else(dash),
        n.total_mem.map(gib).unwrap_or_else(dash),
        n.source.clone(),
    ]
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_marks_local_and_down_nodes() {
        let node = |id, up, load| NodeRow {
            id,
            addr: format!("127.0.0.{id}"),
            up,
            local: id == 1,
            source: "map".into(),
            since_s: 1.0,
            last_seen_s: (id == 2).then_some(12.4),
            load,
            load_age_ms: load.map(|_| 10),
            cpus: load.map(|_| 2),
            speed: load.map(|_| 2400),
            free_mem: load.map(|_| 3 << 30),
            total_mem: load.map(|_| 4 << 30),
            capacity: load.map(|_| 1.5),
            norm_load: load.map(|l| l / 3.6),
            link: (id == 2).then(|| "tcp (fallback)".to_string()),
            link_why: None,
        };
        let t = table(&StatusReport {
            node: 1,
            nodes: vec![
                node(1, true, Some(0.5)),
                node(2, false, None),
                node(3, false, None),
            ],
        });
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE  ADDRESS"), "{t}");
        // The LINK column: a dash without a link, the transport's name with one.
        let link_col = lines[0].find("LINK").expect("a LINK column");
        assert!(lines[1][link_col..].starts_with("- "), "{t}");
        assert!(lines[2][link_col..].starts_with("tcp (fallback)"), "{t}");
        assert!(
            lines[1].starts_with("1*")
                && lines[1].contains("0.50")
                && lines[1].contains("3.0 GiB")
                && lines[1].contains(" 0.14 ")
                && lines[1].contains(" 1.50 "),
            "{t}"
        );
        assert!(
            lines[2].contains("DOWN (last seen 12s ago)") && lines[2].contains(" -"),
            "{t}"
        );
        assert!(lines[3].contains("DOWN (never seen)"), "{t}");
        assert_eq!(lines[4], "1 of 3 nodes up (as seen by node 1)");
        assert_eq!(ago(61.0), "61s ago");
        assert_eq!(ago(600.0), "10m ago");
        assert_eq!(ago(4.0 * 86400.0), "4d ago");
    }
}
