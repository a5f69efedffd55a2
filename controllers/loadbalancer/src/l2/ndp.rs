//! The NDP worker of one interface: joins the solicited-node group of each announced IPv6 VIP, answers
//! Neighbor Solicitations for them and sends unsolicited Neighbor Advertisements on takeover.
//!
//! ```text
//!   plan changes ──> VIPs on this iface ──> join/leave ff02::1:ffXX:XXXX (RFC 4291 §2.7.1; several VIPs
//!                                           may share a group, so membership follows the set of groups)
//!                                       └─> new VIPs ──> Bursts ──> unsolicited NA to ff02::1 (§7.2.6)
//!   Icmpv6Socket (NS only) ──> NeighborSolicitation::parse (§7.1.1) ──> VIP in the current plan?
//!                                └─ yes: NA S+O with target link-layer option to the source (§7.2.4)
//! ```
//!
//! The NA's source address is the VIP itself, as the kernel does for addresses it owns (see
//! `rawsock::Icmpv6Socket::send_to`); the kernel computes the checksum.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use tokio::time::{Instant, sleep_until};

use super::burst::Bursts;
use super::packet::{
    ALL_NODES, Ipv6Envelope, MacAddr, NeighborAdvertisement, NeighborSolicitation, solicited_node,
};
use super::rawsock::Icmpv6Socket;
use super::{Family, WorkerCtx};

/// Runs until the interface leaves the plan (the supervisor aborts us) or the announcer stops. Dropping
/// the socket leaves every group.
pub(crate) async fn run(mut ctx: WorkerCtx) {
    let sock = match Icmpv6Socket::open(ctx.ifindex, &ctx.name) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(interface = %ctx.name, error = %e, "cannot open ICMPv6 socket (needs CAP_NET_RAW); will retry");
            return;
        }
    };
    let mut known: BTreeSet<Ipv6Addr> = BTreeSet::new();
    let mut known_mac: Option<MacAddr> = None;
    let mut groups: BTreeSet<Ipv6Addr> = BTreeSet::new();
    let mut bursts = Bursts::new();
    let mut buf = [0u8; 1500];
    loop {
        let (ips, mac) = {
            let plan = ctx.plan.borrow_and_update();
            let p = plan.by_ifindex.get(&ctx.ifindex);
            let ips: BTreeSet<Ipv6Addr> = p
                .into_iter()
                .flat_map(|p| p.ips.iter())
                .filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                })
                .collect();
            (ips, p.map(|p| p.mac))
        };
        let wanted: BTreeSet<Ipv6Addr> = ips.iter().copied().map(solicited_node).collect();
        for g in groups.difference(&wanted) {
            if let Err(e) = sock.leave(g) {
                tracing::debug!(interface = %ctx.name, group = %g, error = %e, "leaving solicited-node group");
            }
        }
        groups.retain(|g| wanted.contains(g));
        for g in wanted.difference(&groups.clone()) {
            match sock.join(g) {
                Ok(()) => {
                    groups.insert(*g);
                }
                // Retried on the next plan change or by the supervisor's restart.
                Err(e) => {
                    tracing::warn!(interface = %ctx.name, group = %g, error = %e, "joining solicited-node group failed")
                }
            }
        }
        let now = Instant::now();
        bursts.follow(&known, &ips, mac != known_mac, now);
        known = ips;
        known_mac = mac;

        let next = bursts.next_due();
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            changed = ctx.plan.changed() => if changed.is_err() { return },
            _ = sleep_until(next.unwrap_or(now)), if next.is_some() => {
                for ip in bursts.take_due(Instant::now()) {
                    unsolicited(&ctx, &sock, ip).await;
                }
            }
            res = sock.recv(&mut buf) => match res {
                Ok((n, env)) => handle(&ctx, &sock, &buf[..n.min(buf.len())], &env).await,
                Err(e) => {
                    tracing::warn!(interface = %ctx.name, error = %e, "ICMPv6 socket failed");
                    return;
                }
            }
        }
    }
}

async fn handle(ctx: &WorkerCtx, sock: &Icmpv6Socket, msg: &[u8], env: &Ipv6Envelope) {
    let ns = match NeighborSolicitation::parse(msg, env) {
        Ok(ns) => ns,
        Err(e) => {
            ctx.count(&ctx.metrics.invalid, Family::Ndp);
            tracing::debug!(interface = %ctx.name, reason = e.reason(), error = %e, from = %env.source, "ignored NDP packet");
            return;
        }
    };
    // The per-packet check against the current plan.
    let Some(mac) = ctx.answers(IpAddr::V6(ns.target)) else {
        return;
    };
    ctx.count(&ctx.metrics.requests, Family::Ndp);
    let (na, dst) = NeighborAdvertisement::answer(&ns, env.source, mac);
    match sock.send_to(&na.encode(), dst, ns.target).await {
        Ok(()) => {
            ctx.count(&ctx.metrics.responses, Family::Ndp);
            tracing::debug!(interface = %ctx.name, ip = %ns.target, to = %dst, %mac, "Neighbor Advertisement sent");
        }
        Err(e) => {
            tracing::warn!(interface = %ctx.name, ip = %ns.target, error = %e, "sending Neighbor Advertisement failed")
        }
    }
}

async fn unsolicited(ctx: &WorkerCtx, sock: &Icmpv6Socket, ip: Ipv6Addr) {
    let Some(mac) = ctx.answers(IpAddr::V6(ip)) else {
        return;
    };
    match sock
        .send_to(
            &NeighborAdvertisement::unsolicited(ip, mac).encode(),
            ALL_NODES,
            ip,
        )
        .await
    {
        Ok(()) => {
            ctx.count(&ctx.metrics.gratuitous, Family::Ndp);
            tracing::debug!(interface = %ctx.name, %ip, %mac, "unsolicited Neighbor Advertisement sent");
        }
        Err(e) => tracing::warn!(interface = %ctx.name, %ip, error = %e, "sending unsolicited NA failed"),
    }
}
