//! `--metrics ADDR`: the node's figures as Prometheus text over plain HTTP (GET /metrics).
//! One short request per connection, read with a size limit and a time-out.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runtime::Addr;
use runtime::transport::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::control::{self, Control, Request, Response, StatusReport};

/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of this process, bumped where things happen.
pub struct Counters {
    pub gossip_sent: AtomicU64,
    pub gossip_received: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_received: AtomicU64,
    pub map_loads: AtomicU64,
    pub map_load_failures: AtomicU64,
    /// Processes of this node moved to another node (the target confirmed, home parked).
    pub migrations_out: AtomicU64,
    /// Guests started here (moved in from their home node).
    pub migrations_in: AtomicU64,
    /// System calls of moved processes that this node's deputies ran at home.
    pub forwarded_calls: AtomicU64,
}

pub static COUNTERS: Counters = Counters {
    gossip_sent: AtomicU64::new(0),
    gossip_received: AtomicU64::new(0),
    heartbeats_sent: AtomicU64::new(0),
    heartbeats_received: AtomicU64::new(0),
    map_loads: AtomicU64::new(0),
    map_load_failures: AtomicU64::new(0),
    migrations_out: AtomicU64::new(0),
    migrations_in: AtomicU64::new(0),
    forwarded_calls: AtomicU64::new(0),
};

/// Add one to `c`.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--metrics {addr}: cannot listen: {e}")))
}

/// Serve scrapes until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    control: Addr<Control>,
    transport: Arc<dyn Transport>,
    token: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (control, transport) = (control.clone(), transport.clone());
        tokio::spawn(async move {
            if let Err(e) = scrape(stream, control, transport).await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

async fn scrape(
    mut stream: TcpStream,
    control: Addr<Control>,
    transport: Arc<dyn Transport>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("no request within 5 s"))??;
    let first = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or(&[]))
        .trim()
        .to_string();
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = if method != "GET" {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "see /metrics\n".to_string())
    } else {
        let answer = control
            .ask(
                |reply| control::Msg::Request {
                    req: Request::Status,
                    uid: None,
                    reply,
                },
                ASK_TIMEOUT,
            )
            .await;
        match answer {
            Ok(Response::Status(r)) => ("200 OK", render(&r, transport.connected().len())),
            Ok(other) => ("503 Service Unavailable", format!("{other:?}\n")),
            Err(e) => ("503 Service Unavailable", format!("{e}\n")),
        }
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::other("answer not taken within 5 s"))?
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text for `r` (as this node sees the cluster), `links_up` links and the
/// process counters.
pub fn render(r: &StatusReport, links_up: usize) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_node = |f: &dyn Fn(&control::NodeRow) -> Option<String>| -> Vec<(String, String)> {
        r.nodes
            .iter()
            .filter_map(|n| Some((format!("{{node=\"{}\"}}", n.id), f(n)?)))
            .collect()
    };
    metric(
        "omnode_node_id",
        "gauge",
        "This node's id.",
        vec![(String::new(), r.node.to_string())],
    );
    metric(
        "omnode_node_up",
        "gauge",
        "1 if the node is up as this node sees it, else 0.",
        r.nodes
            .iter()
            .map(|n| {
                (
                    format!(
                        "{{node=\"{}\",addr=\"{}\",found_by=\"{}\"}}",
                        n.id,
                        label(&n.addr),
                        label(&n.source)
                    ),
                    u8::from(n.up).to_string(),
                )
            })
            .collect(),
    );
    let up = r.nodes.iter().filter(|n| n.up).count();
    metric(
        "omnode_nodes",
        "gauge",
        "Nodes known (map or mDNS), this one included.",
        vec![(String::new(), r.nodes.len().to_string())],
    );
    metric(
        "omnode_nodes_up",
        "gauge",
        "Nodes up, this one included.",
        vec![(String::new(), up.to_string())],
    );
    metric(
        "omnode_links_up",
        "gauge",
        "Authenticated links to peers that are up.",
        vec![(String::new(), links_up.to_string())],
    );
    metric(
        "omnode_node_load",
        "gauge",
        "Smoothed runnable processes of each node that is up.",
        per_node(&|n| n.load.map(|l| l.to_string())),
    );
    metric(
        "omnode_node_cpus",
        "gauge",
        "CPUs of each node that is up.",
        per_node(&|n| n.cpus.map(|c| c.to_string())),
    );
    metric(
        "omnode_node_speed_mhz",
        "gauge",
        "CPU speed of each node that is up.",
        per_node(&|n| n.speed.map(|c| c.to_string())),
    );
    metric(
        "omnode_node_free_memory_bytes",
        "gauge",
        "Available memory of each node that is up.",
        per_node(&|n| n.free_mem.map(|c| c.to_string())),
    );
    metric(
        "omnode_node_total_memory_bytes",
        "gauge",
        "Total memory of each node that is up.",
        per_node(&|n| n.total_mem.map(|c| c.to_string())),
    );
    metric(
        "omnode_node_last_seen_seconds",
        "gauge",
        "Seconds since each peer's last sign of life.",
        per_node(&|n| n.last_seen_s.map(|c| format!("{c:.3}"))),
    );
    let c = &COUNTERS;
    let counters: [(&str, &str, &AtomicU64); 9] = [
        (
            "omnode_gossip_sent_total",
            "Load gossip messages sent.",
            &c.gossip_sent,
        ),
        (
            "omnode_gossip_received_total",
            "Load gossip messages received.",
            &c.gossip_received,
        ),
        (
            "omnode_heartbeats_sent_total",
            "Membership heartbeats sent.",
            &c.heartbeats_sent,
        ),
        (
            "omnode_heartbeats_received_total",
            "Membership heartbeats received.",
            &c.heartbeats_received,
        ),
        (
            "omnode_map_loads_total",
            "Maps loaded into the running node (setpe -w, SIGHUP).",
            &c.map_loads,
        ),
        (
            "omnode_map_load_failures_total",
            "Map loads refused (the map in use stayed).",
            &c.map_load_failures,
        ),
        (
            "omnode_migrations_out_total",
            "Processes of this node moved to another node.",
            &c.migrations_out,
        ),
        (
            "omnode_migrations_in_total",
            "Moved processes started here as guests.",
            &c.migrations_in,
        ),
        (
            "omnode_forwarded_calls_total",
            "System calls of moved processes run at home by this node's deputies.",
            &c.forwarded_calls,
        ),
    ];
    for (name, help, value) in counters {
        let v = value.load(Ordering::Relaxed).to_string();
        metric(name, "counter", help, vec![(String::new(), v)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::NodeRow;

    #[test]
    fn renders_each_nodes_figures_and_only_fresh_ones() {
        let row = |id: u32, up: bool| NodeRow {
            id,
            addr: format!("10.0.0.{id}"),
            up,
            local: id == 1,
            source: "map".into(),
            since_s: 1.0,
            last_seen_s: (id != 1).then_some(2.5),
            load: up.then_some(0.75 * id as f64),
            load_age_ms: None,
            capacity: up.then_some(4.0),
            norm_load: up.then_some(0.75 * id as f64 * 1000.0 / 9600.0),
            cpus: up.then_some(4),
            speed: up.then_some(2400),
            free_mem: up.then_some(1 << 30),
            total_mem: up.then_some(2 << 30),
            link: None,
            link_why: None,
        };
        let text = render(
            &StatusReport {
                node: 1,
                nodes: vec![row(1, true), row(2, true), row(3, false)],
            },
            1,
        );
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .to_string()
        };
        assert_eq!(line("omnode_node_id "), "omnode_node_id 1");
        assert_eq!(line("omnode_nodes_up "), "omnode_nodes_up 2");
        assert_eq!(line("omnode_links_up "), "omnode_links_up 1");
        assert_eq!(
            line("omnode_node_load{node=\"2\"}"),
            "omnode_node_load{node=\"2\"} 1.5"
        );
        assert!(line("omnode_node_up{node=\"3\"").ends_with(" 0"));
        assert!(!text.contains("omnode_node_load{node=\"3\"}"), "{text}");
        assert_eq!(
            line("omnode_node_last_seen_seconds{node=\"3\"}"),
            "omnode_node_last_seen_seconds{node=\"3\"} 2.500"
        );
        // Every sample belongs to a declared metric.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{l}");
        }
    }
}
