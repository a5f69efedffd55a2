//! `ferrite-l2-announce`: answers ARP / NDP for the given IPs until SIGTERM, with the speaker's data plane
//! but without Kubernetes. For operators (check that a node can announce on an interface, see which MAC
//! it answers with) and for the layer-2 component test.
//!
//! ```text
//! ferrite-l2-announce --ip 192.0.2.10 [--ip 2001:db8::10] [--interface eth0|/regex/]...
//!                     [--metrics-addr 127.0.0.1:9473] [--stdin] [--log-level debug]
//! ```
//! Prints one `announcing <ip> on <interfaces>` line per IP to stdout once the set is in place (logs go
//! to stdout too). With `--stdin`, each line read replaces the set (`192.0.2.11 2001:db8::11`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;
use clap::Parser;
use ferrite_kit::{admin, cli::LogFormat, shutdown, telemetry};
use ferrite_lb::l2::{Announcer, InterfaceFilter};

#[derive(Debug, Parser)]
#[command(
    name = "ferrite-l2-announce",
    about = "Answer ARP/NDP for the given IPs until SIGTERM"
)]
struct Args {
    /// IP to announce (IPv4: ARP, IPv6: NDP). Repeatable.
    #[arg(long = "ip", required = true)]
    ips: Vec<IpAddr>,
    /// Interface name or /regex/ (whole-name match). Repeatable; none = every eligible interface not on
    /// the default exclusion list (docker*, veth*, cni*, flannel*, kube-ipvs*, ...).
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9473).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Also read replacement IP sets from stdin, one per line (IPs separated by spaces; an empty line
    /// announces nothing). For failover drills and tests: the old set stops being answered at once.
    #[arg(long)]
    stdin: bool,
    /// Log filter in tracing's EnvFilter syntax.
    #[arg(long, env = "FERRITE_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(LogFormat::Plain, &args.log_level)?;
    let filter = InterfaceFilter::new(args.interfaces.iter().cloned())?;
    let stop = shutdown::on_signals()?;
    let registry = admin::registry();
    let announcer = Announcer::start_with_shutdown(&registry, stop.clone())
        .await
        .context("starting the announcer (needs CAP_NET_RAW and a netlink socket)")?;
    if let Some(addr) = args.metrics_addr {
        let server = admin::AdminServer::bind(addr).await?;
        let readiness = admin::Readiness::default();
        readiness.gate("announcer").open();
        tokio::spawn(server.serve(registry.clone(), readiness, stop.clone()));
    }
    announce(&announcer, &filter, &args.ips);
    if args.stdin {
        // A plain thread: `set` is synchronous and this tool's runtime has no stdin support.
        let (announcer, filter) = (announcer.clone(), filter.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                match line
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<Vec<IpAddr>, _>>()
                {
                    Ok(ips) => announce(&announcer, &filter, &ips),
                    Err(e) => println!("error: {line:?}: {e}"),
                }
            }
        });
    }
    stop.cancelled().await;
    Ok(())
}

/// Replaces the announced set and reports, per IP, where it is answered.
fn announce(announcer: &Announcer, filter: &InterfaceFilter, ips: &[IpAddr]) {
    announcer.set(
        ips.iter()
            .map(|ip| (*ip, filter.clone()))
            .collect::<BTreeMap<_, _>>(),
    );
    let announced = announcer.announced();
    for ip in ips {
        match announced.get(ip) {
            Some(ifaces) => println!("announcing {ip} on {}", ifaces.join(",")),
            None => {
                println!("not announcing {ip}: no eligible interface (yet)");
                for (iface, why) in announcer.interfaces(filter) {
                    if let Err(why) = why {
                        tracing::info!(interface = %iface.name, reason = %why, "interface not used");
                    }
                }
            }
        }
    }
    if ips.is_empty() {
        println!("announcing nothing");
    }
}
