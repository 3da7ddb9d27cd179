//! The daemon: read key and map, find this node, start the transport and the actors
//! (membership, load monitor, control), serve until SIGINT/SIGTERM, shut down cleanly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery::map::{self, Map};
use discovery::membership::{self, Membership, Source};
use runtime::System;
use runtime::transport::{PeerInfo, Transport};

use crate::control::{self, Control};
use crate::loadmon::{self, LoadMonitor};
use crate::members::{self, Members};
use crate::{DaemonArgs, Error, key};

pub fn run(args: DaemonArgs, socket: PathBuf) -> Result<(), Error> {
    init_logging();
    let key = key::load(&args.key_file)?;
    let map_path = match &args.map {
        Some(p) => p.clone(),
        None => map::find_default()?,
    };
    let map = Map::load(&map_path)?;
    let local = map.find_local(map::is_local_addr, args.node)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args, socket, key, map, local))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(
    args: DaemonArgs,
    socket: PathBuf,
    key: [u8; key::LEN],
    map: Map,
    local: u32,
) -> Result<(), Error> {
    let me = map
        .node(local)
        .expect("find_local returns a node of the map");
    let listen = SocketAddr::new(me.addr, args.port);
    let cluster = map.digest_hex();
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(4096);
    let config = transport_tcp::Config::new(local, listen, key, cluster.clone());
    let transport = transport_tcp::Transport::start(config, events_tx)
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    let transport: Arc<dyn Transport> = transport;
    let peers = map
        .nodes()
        .filter(|n| n.id != local)
        .map(|n| PeerInfo {
            id: n.id,
            addrs: n.addrs().map(|a| SocketAddr::new(a, args.port)).collect(),
        })
        .collect();
    transport.set_peers(peers);
    let system = System::start(local, Some((transport, events_rx)));

    let tick = Duration::from_millis(args.load_tick_ms.max(10));
    let load = system.spawn(loadmon::NAME, move || LoadMonitor::new(local, tick));
    system.serve::<loadmon::Gossip, _>(loadmon::NAME, load.clone());

    let node_ids: Vec<u32> = map.ids().collect();
    let addrs: BTreeMap<u32, String> = map.nodes().map(|n| (n.id, n.addr.to_string())).collect();
    let (load2, cluster2) = (load.clone(), cluster.clone());
    let members = system.spawn(members::NAME, move || {
        let now = Instant::now();
        let mut table = Membership::new(local, membership::Config::default(), now);
        table.add_nodes(node_ids.iter().copied(), Source::Map, now);
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

    tracing::info!(
        node = local,
        "omnode node {local} of {} listening on {listen}, map {}, control socket {}",
        map.len(),
        map.file(),
        socket.display()
    );

    wait_for_signal().await;
    tracing::info!("shutting down");
    system.shutdown(Duration::from_secs(3)).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
