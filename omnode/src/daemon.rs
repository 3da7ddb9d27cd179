//! The daemon: read key and map (or go zero-config), find this node, start the transport and
//! the actors (membership, load monitor, control), serve until SIGINT/SIGTERM, shut down.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery::NodeId;
use discovery::map::{self, Map};
use discovery::membership::{self, Membership, Source};
use discovery::zeroconf;
use runtime::System;
use runtime::transport::{Events, PeerInfo, Transport};

use crate::control::{self, Control};
use crate::loadmon::{self, LoadMonitor};
use crate::members::{self, Members};
use crate::{DaemonArgs, DiscoveryMode, Error, TransportKind, key};

/// How this node finds the others.
enum Found {
    Map(Map),
    Mdns,
}

/// Everything decided before the node starts.
struct Plan {
    found: Found,
    local: NodeId,
    listen: SocketAddr,
    transport: TransportKind,
    /// Sent in the handshake: the map's digest, or the mDNS constant.
    cluster: String,
}

pub fn run(args: DaemonArgs, socket: PathBuf) -> Result<(), Error> {
    init_logging();
    let key = key::load(&args.key_file)?;
    let plan = plan(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args, plan, socket, key))
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Map or mDNS, which node we are, where we listen, over which transport.
fn plan(args: &DaemonArgs) -> Result<Plan, Error> {
    let map_path = match (args.discovery, &args.map) {
        (DiscoveryMode::Mdns, _) => None,
        (_, Some(p)) => Some(p.clone()),
        (DiscoveryMode::Map, None) => Some(map::find_default()?),
        (DiscoveryMode::Auto, None) => match map::find_default() {
            Ok(p) => Some(p),
            Err(map::Error::NotFound { .. }) => {
                tracing::info!("no map file found; zero-config mode (mDNS)");
                None
            }
            Err(e) => return Err(e.into()),
        },
    };
    match map_path {
        Some(path) => {
            let map = Map::load(&path)?;
            let local = map.find_local(map::is_local_addr, args.node)?;
            let addr = map
                .node(local)
                .expect("find_local returns a node of the map")
                .addr;
            Ok(Plan {
                local,
                listen: SocketAddr::new(addr, args.port),
                transport: args.transport.unwrap_or(TransportKind::Tcp),
                cluster: map.digest_hex(),
                found: Found::Map(map),
            })
        }
        None => {
            if args.transport == Some(TransportKind::Tcp) {
                return Err(Error::Config(
                    "mDNS discovery needs --transport p2p (or give a map with --map)".into(),
                ));
            }
            let ip = match args.listen {
                Some(ip) => ip,
                None => {
                    let addrs = map::local_addrs()?;
                    IpAddr::V4(zeroconf::primary_ipv4(&addrs).ok_or_else(|| {
                        Error::Config("zero-config mode: this machine has no non-loopback IPv4 address; give --listen IP or a map".into())
                    })?)
                }
            };
            let local = match (args.node, ip) {
                (Some(n), _) => n,
                (None, IpAddr::V4(v4)) => zeroconf::node_id(v4).ok_or_else(|| {
                    Error::Config(format!("address {v4} gives no node id (its last two bytes are 0); choose one with --node N"))
                })?,
                (None, IpAddr::V6(_)) => {
                    return Err(Error::Config("an IPv6 --listen address needs --node N".into()));
                }
            };
            Ok(Plan {
                found: Found::Mdns,
                local,
                listen: SocketAddr::new(ip, args.port),
                transport: TransportKind::P2p,
                cluster: zeroconf::CLUSTER.into(),
            })
        }
    }
}

async fn start_transport(
    plan: &Plan,
    key: [u8; key::LEN],
    events: Events,
) -> Result<Arc<dyn Transport>, Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    match plan.transport {
        TransportKind::Tcp => {
            let config =
                transport_tcp::Config::new(plan.local, plan.listen, key, plan.cluster.clone());
            let t = transport_tcp::Transport::start(config, events)
                .await
                .map_err(|e| fail(&e))?;
            Ok(t)
        }
        #[cfg(feature = "p2p")]
        TransportKind::P2p => {
            let mut config =
                transport_p2p::Config::new(plan.local, plan.listen, key, plan.cluster.clone());
            config.mdns = matches!(plan.found, Found::Mdns);
            let t = transport_p2p::Transport::start(config, events)
                .await
                .map_err(|e| fail(&e))?;
            Ok(t)
        }
        #[cfg(not(feature = "p2p"))]
        TransportKind::P2p => Err(Error::Config(
            "this omnode was built without libp2p support (build with --features p2p)".into(),
        )),
    }
}

async fn serve(
    args: DaemonArgs,
    plan: Plan,
    socket: PathBuf,
    key: [u8; key::LEN],
) -> Result<(), Error> {
    let local = plan.local;
    let system = System::new(local);
    let transport = start_transport(&plan, key, system.events()).await?;
    let mut addrs: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut peers_of_map: Vec<NodeId> = Vec::new();
    addrs.insert(local, plan.listen.ip().to_string());
    if let Found::Map(map) = &plan.found {
        let peers = map
            .nodes()
            .filter(|n| n.id != local)
            .map(|n| PeerInfo {
                id: n.id,
                addrs: n.addrs().map(|a| SocketAddr::new(a, args.port)).collect(),
            })
            .collect();
        transport.set_peers(peers);
        addrs.extend(map.nodes().map(|n| (n.id, n.addr.to_string())));
        peers_of_map = map.ids().filter(|&id| id != local).collect();
    }
    system.attach(transport);

    let tick = Duration::from_millis(args.load_tick_ms.max(10));
    let load = system.spawn(loadmon::NAME, move || LoadMonitor::new(local, tick));
    system.serve::<loadmon::Gossip, _>(loadmon::NAME, load.clone());

    let (load2, cluster2) = (load.clone(), plan.cluster.clone());
    let members = system.spawn(members::NAME, move || {
        let now = Instant::now();
        let mut table = Membership::new(local, membership::Config::default(), now);
        table.add_nodes(peers_of_map.iter().copied(), Source::Map, now);
        Members::new(table, addrs.clone(), cluster2.clone(), load2.clone())
    });
    system.serve::<members::Heartbeat, _>(members::NAME, members.clone());

    let (m2, l2) = (members.clone(), load.clone());
    let control = system.spawn("control", move || {
        Control::new(local, m2.clone(), l2.clone())
    });
    let listener = control::bind(&socket).await?;
    let token = system.shutdown_token();
    system
        .tasks()
        .spawn(control::serve(listener, control, token));

    let how = match &plan.found {
        Found::Map(m) => format!("map {} ({} nodes)", m.file(), m.len()),
        Found::Mdns => "zero-config (mDNS)".to_string(),
    };
    tracing::info!(
        node = local,
        "omnode node {local} listening on {} over {:?}, {how}, control socket {}",
        plan.listen,
        plan.transport,
        socket.display()
    );

    let mfs_nodes = addrs_nodes(&plan);
    let mfs = crate::mfsd::start(&system, &args.mfs, mfs_nodes)?;

    wait_for_signal().await;
    tracing::info!("shutting down");
    drop(mfs);
    system.shutdown(Duration::from_secs(3)).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The map's nodes (MFS shows a folder for each).
fn addrs_nodes(plan: &Plan) -> Vec<NodeId> {
    match &plan.found {
        Found::Map(m) => m.ids().collect(),
        Found::Mdns => vec![plan.local],
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
