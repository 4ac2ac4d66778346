//! `meshgate-benchserver`: meshgate's store and xDS server with a synthetic workload, for
//! `make bench` — the xDS path alone, from a published update to every stream's ACK.
//!
//! It serves xDS on `--xds` and a control port on `--control` (`POST /change`, `GET /stats`,
//! see `integration::bench`), and prints one JSON line on stdout once both listen:
//! `{"xds":"127.0.0.1:…","control":"127.0.0.1:…"}`. Nodes are placed as meshgate places them
//! (metadata `role` and `datacenter`); the workload is published to the ingress group of
//! `--datacenter`.

use std::alloc::System;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use integration::bench::{Applied, Control, Op, Ready, Stats, Workload, control_router};
use meshgate::xds::stream::StreamRegistry;
use meshgate::xds::{Debounce, GroupKey, Role, Store, XdsServer};
use parking_lot::Mutex;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Parser, Debug)]
#[command(about = "meshgate's store and xDS server with a synthetic workload, for benchmarks")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value = "127.0.0.1:0")]
    xds: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    /// Debounce of the store in milliseconds (0: every change is pushed at once).
    #[arg(long, default_value_t = 0)]
    debounce_ms: u64,
    /// Worker threads of the server's runtime (meshgate serve uses one per core).
    #[arg(long)]
    workers: Option<usize>,
}

struct Bench {
    store: Store,
    group: GroupKey,
    workload: Mutex<Workload>,
    streams: Arc<StreamRegistry>,
}

impl Control for Bench {
    fn apply(&self, op: Op) -> Result<Applied, String> {
        let start = Instant::now();
        let mut workload = self.workload.lock();
        let (update, mut applied) = workload.apply(op)?;
        self.store
            .publish(&self.group, update)
            .map_err(|e| format!("publish: {e}"))?;
        applied.server_us = start.elapsed().as_micros() as u64;
        Ok(applied)
    }

    fn stats(&self) -> Stats {
        let a = GLOBAL.stats();
        Stats {
            pid: std::process::id(),
            streams: self.streams.len() as u64,
            allocations: (a.allocations + a.reallocations) as u64,
            allocated_bytes: (a.bytes_allocated + a.bytes_reallocated.max(0) as usize) as u64,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let metrics = Arc::new(meshgate::metrics::Metrics::new());
    let debounce = if args.debounce_ms == 0 {
        Debounce::NONE
    } else {
        let quiet = std::time::Duration::from_millis(args.debounce_ms);
        Debounce {
            quiet,
            max: quiet * 10,
        }
    };
    let store = Store::new(debounce, metrics);
    let group = GroupKey::new(Role::Ingress, &args.datacenter, None);
    let workload = Workload::new(args.services, args.endpoints);
    store.publish(&group, workload.full())?;
    let streams = Arc::new(StreamRegistry::default());
    let xds = tokio::net::TcpListener::bind(args.xds).await?;
    let control = tokio::net::TcpListener::bind(args.control).await?;
    let ready = Ready {
        xds: xds.local_addr()?,
        control: control.local_addr()?,
    };
    let server = XdsServer::new(store.clone(), streams.clone(), &args.datacenter);
    let bench = Arc::new(Bench {
        store,
        group,
        workload: Mutex::new(workload),
        streams,
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(control, control_router(bench)).await {
            eprintln!("meshgate-benchserver: control port: {e}");
        }
    });
    let xds = tokio::spawn(server.serve(xds, None, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    println!("{}", serde_json::to_string(&ready)?);
    std::io::stdout().flush()?;
    xds.await??;
    Ok(())
}
