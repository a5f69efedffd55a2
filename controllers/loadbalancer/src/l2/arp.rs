//! The ARP worker of one interface: answers "who-has VIP" and sends gratuitous ARP on takeover.
//!
//! ```text
//!   PacketSocket(ETH_P_ARP, ifindex) ──> ArpPacket::parse ──> request for a VIP in the current plan?
//!                                                              └─ yes: reply "VIP is-at <this iface MAC>"
//!   plan changes ──> new IPv4 VIPs on this interface ──> Bursts ──> gratuitous request + reply, 5 rounds
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use tokio::time::{Instant, sleep_until};

use super::burst::Bursts;
use super::packet::{ArpOp, ArpPacket, ETH_P_ARP, MacAddr};
use super::rawsock::{PacketMeta, PacketSocket};
use super::{Family, WorkerCtx};

/// Runs until the interface leaves the plan (the supervisor aborts us) or the announcer stops.
pub(crate) async fn run(mut ctx: WorkerCtx) {
    let sock = match PacketSocket::open(ctx.ifindex, ETH_P_ARP) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(interface = %ctx.name, error = %e, "cannot open ARP socket (needs CAP_NET_RAW); will retry");
            return;
        }
    };
    let mut known: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut known_mac: Option<MacAddr> = None;
    let mut bursts = Bursts::new();
    let mut buf = [0u8; 1500];
    loop {
        // Takeover detection: IPs (or a MAC) this interface did not announce before.
        let (ips, mac) = {
            let plan = ctx.plan.borrow_and_update();
            let p = plan.by_ifindex.get(&ctx.ifindex);
            let ips: BTreeSet<Ipv4Addr> = p
                .into_iter()
                .flat_map(|p| p.ips.iter())
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect();
            (ips, p.map(|p| p.mac))
        };
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
                    gratuitous(&ctx, &sock, ip).await;
                }
            }
            res = sock.recv(&mut buf) => match res {
                Ok((n, meta)) => handle(&ctx, &sock, &buf[..n.min(buf.len())], meta).await,
                Err(e) => {
                    // ENETDOWN/ENXIO when the interface goes away: the supervisor restarts or drops us.
                    tracing::warn!(interface = %ctx.name, error = %e, "ARP socket failed");
                    return;
                }
            }
        }
    }
}

async fn handle(ctx: &WorkerCtx, sock: &PacketSocket, frame: &[u8], meta: PacketMeta) {
    if meta.is_outgoing() || meta.ifindex != ctx.ifindex {
        return;
    }
    let req = match ArpPacket::parse(frame) {
        Ok(p) => p,
        Err(e) => {
            ctx.count(&ctx.metrics.invalid, Family::Arp);
            tracing::debug!(interface = %ctx.name, reason = e.reason(), error = %e, "ignored ARP packet");
            return;
        }
    };
    // Someone else claims a VIP we announce (a reply or gratuitous ARP with it as sender): two nodes
    // announcing one IP, or a host configured with it. Worth a warning, never an answer.
    if let Some(mac) = ctx.answers(IpAddr::V4(req.sender_ip))
        && req.sender_mac != mac
    {
        tracing::warn!(
            interface = %ctx.name, ip = %req.sender_ip, other_mac = %req.sender_mac, our_mac = %mac,
            "another host claims an IP we announce (duplicate VIP on the LAN?)"
        );
    }
    // Only questions: not replies, not announcements (ours or anyone's).
    if req.op != ArpOp::Request || req.is_gratuitous() || !req.sender_mac.is_unicast() {
        return;
    }
    // The per-packet check: the IP may have been removed a moment ago.
    let Some(mac) = ctx.answers(IpAddr::V4(req.target_ip)) else {
        return;
    };
    if req.sender_mac == mac {
        return;
    }
    ctx.count(&ctx.metrics.requests, Family::Arp);
    let reply = req.reply(mac);
    match sock.send(&reply.encode(), req.sender_mac).await {
        Ok(()) => {
            ctx.count(&ctx.metrics.responses, Family::Arp);
            tracing::debug!(interface = %ctx.name, ip = %req.target_ip, to = %req.sender_ip, %mac, "ARP reply sent");
        }
        Err(e) => {
            tracing::warn!(interface = %ctx.name, ip = %req.target_ip, error = %e, "sending ARP reply failed")
        }
    }
}

async fn gratuitous(ctx: &WorkerCtx, sock: &PacketSocket, ip: Ipv4Addr) {
    let Some(mac) = ctx.answers(IpAddr::V4(ip)) else {
        return;
    };
    for op in [ArpOp::Request, ArpOp::Reply] {
        match sock
            .send(&ArpPacket::gratuitous(op, mac, ip).encode(), MacAddr::BROADCAST)
            .await
        {
            Ok(()) => ctx.count(&ctx.metrics.gratuitous, Family::Arp),
            Err(e) => tracing::warn!(interface = %ctx.name, %ip, error = %e, "sending gratuitous ARP failed"),
        }
    }
    tracing::debug!(interface = %ctx.name, %ip, %mac, "gratuitous ARP sent");
}
