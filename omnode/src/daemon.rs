//! The daemon: read key and map (or go zero-config), find this node, start the transport and
//! the actors (membership, load monitor, control), tell systemd it is ready, serve until
//! SIGINT/SIGTERM or `setpe -off`, shut down. SIGHUP reloads the map file (as `setpe -w`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
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
use crate::reload::{Reload, SetCluster};
use crate::{DaemonArgs, DiscoveryMode, Error, TransportKind, key};
use crate::{metrics, notify};
use tokio_util::sync::CancellationToken;

/// How this node finds the others.
enum Found {
    /// The map and the file it came from.
    Map(Map, std::path::PathBuf),
    Mdns,
}

/// Read only by the `rdma` build (without it, `--transport rdma` is refused before they matter).
#[cfg_attr(not(feature = "rdma"), allow(dead_code))]
#[derive(Clone, Debug, Default)]
struct RdmaOpts {
    device: Option<String>,
    gid_index: u8,
    no_fallback: bool,
}

/// Everything decided before the node starts.
struct Plan {
    found: Found,
    local: NodeId,
    listen: SocketAddr,
    transport: TransportKind,
    /// `--rdma-device`, `--rdma-gid-index`, `--no-fallback`.
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    rdma: RdmaOpts,
    /// Sent in the handshake: the map's digest, or the mDNS constant.
    cluster: String,
}

pub fn run(args: DaemonArgs) -> Result<(), Error> {
    crate::logging::init(args.log_format);
    crate::cpufeat::set_mask(args.mask_cpu_features.as_deref().unwrap_or(""));
    let key = key::load(&args.key_file)?;
    let plan = plan(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args, plan, key))
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
                rdma: RdmaOpts {
                    device: args.rdma_device.clone(),
                    gid_index: args.rdma_gid_index,
                    no_fallback: args.no_fallback,
                },
                cluster: map.digest_hex(),
                found: Found::Map(map, path),
            })
        }
        None => {
            if matches!(
                args.transport,
                Some(TransportKind::Tcp | TransportKind::Rdma)
            ) {
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
                rdma: RdmaOpts::default(),
                cluster: zeroconf::CLUSTER.into(),
            })
        }
    }
}

/// The transport, and how to give it a new map digest ([`crate::reload`]).
async fn start_transport(
    plan: &Plan,
    key: [u8; key::LEN],
    events: Events,
) -> Result<(Arc<dyn Transport>, SetCluster), Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    match plan.transport {
        TransportKind::Tcp => {
            let config =
                transport_tcp::Config::new(plan.local, plan.listen, key, plan.cluster.clone());
            let t = transport_tcp::Transport::start(config, events)
                .await
                .map_err(|e| fail(&e))?;
            let t2 = t.clone();
            Ok((t, Box::new(move |c| t2.set_cluster(c))))
        }
        #[cfg(feature = "p2p")]
        TransportKind::P2p => {
            let mut config =
                transport_p2p::Config::new(plan.local, plan.listen, key, plan.cluster.clone());
            config.mdns = matches!(plan.found, Found::Mdns);
            let t = transport_p2p::Transport::start(config, events)
                .await
                .map_err(|e| fail(&e))?;
            let t2 = t.clone();
            Ok((t, Box::new(move |c| t2.set_cluster(c))))
        }
        #[cfg(not(feature = "p2p"))]
        TransportKind::P2p => Err(Error::Config(
            "this omnode was built without libp2p support (build with --features p2p)".into(),
        )),
        #[cfg(feature = "rdma")]
        TransportKind::Rdma => {
            let tcp = transport_tcp::Config::new(plan.local, plan.listen, key, plan.cluster.clone());
            let mut config = transport_rdma::Config::new(tcp);
            config.link.device = plan.rdma.device.clone();
            config.link.gid_index = plan.rdma.gid_index;
            config.fallback = !plan.rdma.no_fallback;
            let t = transport_rdma::Transport::start(config, events)
                .await
                .map_err(|e| fail(&e))?;
            let (t2, t3) = (t.clone(), Arc::downgrade(&t));
            crate::status::set_link_of(Box::new(move |peer| {
                use transport_rdma::LinkKind;
                match t3.upgrade()?.link_kind(peer)? {
                    LinkKind::Rdma => Some(("rdma".into(), None)),
                    LinkKind::Tcp(why) => Some(("tcp (fallback)".into(), Some(why))),
                }
            }));
            Ok((t, Box::new(move |c| t2.tcp().set_cluster(c))))
        }
        #[cfg(not(feature = "rdma"))]
        TransportKind::Rdma => Err(Error::Config(
            "this omnode was built without RDMA support (build with --features rdma; needs libibverbs-dev, librdmacm-dev, libclang-dev, pkg-config)".into(),
        )),
    }
}

/// The transport's name for the LINK column of `status`, for transports with one kind of link.
fn set_plain_link_of(t: &Arc<dyn Transport>, name: &'static str) {
    let t = Arc::downgrade(t);
    crate::status::set_link_of(Box::new(move |peer| {
        t.upgrade()?
            .connected()
            .contains(&peer)
            .then(|| (name.to_string(), None))
    }));
}

async fn serve(args: DaemonArgs, plan: Plan, key: [u8; key::LEN]) -> Result<(), Error> {
    // Signals first: a SIGHUP while starting must not kill the daemon.
    let mut signals = Signals::new()?;
    let socket = args.socket.clone();
    let local = plan.local;
    let system = System::new(local);
    let (transport, set_cluster) = start_transport(&plan, key, system.events()).await?;
    match plan.transport {
        TransportKind::Tcp => set_plain_link_of(&transport, "tcp"),
        TransportKind::P2p => set_plain_link_of(&transport, "p2p"),
        TransportKind::Rdma => {} // set by start_transport: rdma or tcp per link
    }
    let mut addrs: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut peers_of_map: Vec<NodeId> = Vec::new();
    addrs.insert(local, plan.listen.ip().to_string());
    if let Found::Map(map, _) = &plan.found {
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
    system.attach(transport.clone());

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

    let reload = match &plan.found {
        Found::Map(map, path) => Some(Arc::new(Reload::new(
            local,
            args.node,
            args.port,
            (map.clone(), path.clone()),
            transport.clone(),
            set_cluster,
            members.clone(),
        ))),
        Found::Mdns => None,
    };
    crate::migrator::start(&system);
    crate::balancer::start(
        &system,
        local,
        load.clone(),
        members.clone(),
        tick.max(Duration::from_millis(500)),
    );
    let leave = CancellationToken::new();
    let (m2, l2, r2, leave2) = (members.clone(), load.clone(), reload.clone(), leave.clone());
    let control = system.spawn("control", move || {
        Control::new(local, m2.clone(), l2.clone(), r2.clone(), leave2.clone())
    });
    let listener = control::bind(&socket).await?;
    let token = system.shutdown_token();
    system
        .tasks()
        .spawn(control::serve(listener, control.clone(), token.clone()));
    if let Some(addr) = args.metrics {
        let listener = metrics::bind(addr).await?;
        tracing::info!("metrics at http://{addr}/metrics");
        system
            .tasks()
            .spawn(metrics::serve(listener, control, transport, token));
    }

    let how = match &plan.found {
        Found::Map(m, _) => format!("map {} ({} nodes)", m.file(), m.len()),
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

    // The control socket is bound and the map loaded: ready.
    notify::notify(&format!("READY=1\nSTATUS=node {local}, {how}"));

    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = leave.cancelled() => break,
            _ = signals.hup.recv() => match &reload {
                Some(r) => {
                    tracing::info!("SIGHUP: reloading the map");
                    notify::notify("RELOADING=1");
                    // Errors are logged by `load`; the map in use stays.
                    let _ = r.load(None).await;
                    notify::notify("READY=1");
                }
                None => tracing::warn!("SIGHUP: zero-config (mDNS) mode has no map to reload"),
            },
        }
    }
    tracing::info!("shutting down");
    notify::notify("STOPPING=1");
    drop(mfs);
    system.shutdown(Duration::from_secs(3)).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The map's nodes (MFS shows a folder for each).
fn addrs_nodes(plan: &Plan) -> Vec<NodeId> {
    match &plan.found {
        Found::Map(m, _) => m.ids().collect(),
        Found::Mdns => vec![plan.local],
    }
}

/// The signals the daemon handles; registered before anything else starts.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let on = |k: SignalKind, name: &str| {
            signal(k).map_err(|e| Error::Config(format!("cannot handle {name}: {e}")))
        };
        Ok(Signals {
            term: on(SignalKind::terminate(), "SIGTERM")?,
            int: on(SignalKind::interrupt(), "SIGINT")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}
