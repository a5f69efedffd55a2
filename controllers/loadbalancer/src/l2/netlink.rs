//! Follows the kernel's interfaces over rtnetlink and feeds them to the announcer's state.
//!
//! ```text
//!   subscribe RTNLGRP_LINK ─┐ (first, so no change between the dump and the subscription is lost)
//!   RTM_GETLINK dump ───────┴─> BTreeMap<ifindex, Interface> ──> Shared::update ──> new Plan
//!   RTM_NEWLINK / RTM_DELLINK ──> upsert / remove (a vanished interface's worker is dropped,
//!                                 which closes its sockets)
//!   every RETRY_INTERVAL: full re-dump (netlink multicast may overrun and drop events);
//!   if the socket dies: reconnect after a second
//! ```
//! Addresses are not followed: ARP needs none, and the kernel picks the NA source address itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::{Handle, MulticastGroup, new_multicast_connection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::iface::{Interface, interface_from_link};
use super::{L2Error, RETRY_INTERVAL, Shared};

type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr)>;

/// A netlink route socket subscribed to link changes.
#[derive(Debug)]
pub(crate) struct LinkFollower {
    handle: Handle,
    events: Events,
    conn: JoinHandle<()>,
}

impl Drop for LinkFollower {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl LinkFollower {
    pub(crate) async fn connect() -> Result<LinkFollower, L2Error> {
        let (conn, handle, events) =
            new_multicast_connection(&[MulticastGroup::Link]).map_err(L2Error::Netlink)?;
        let conn = tokio::spawn(conn);
        Ok(LinkFollower { handle, events, conn })
    }

    /// Every interface, from a full dump.
    pub(crate) async fn dump(&self) -> Result<BTreeMap<u32, Interface>, L2Error> {
        let mut links = self.handle.link().get().execute();
        let mut out = BTreeMap::new();
        while let Some(msg) = links.try_next().await.map_err(L2Error::LinkDump)? {
            if let Some(i) = interface_from_link(&msg) {
                out.insert(i.index, i);
            }
        }
        Ok(out)
    }

    /// Applies events and periodic re-dumps to `shared` until `stop`; reconnects when the socket dies.
    pub(crate) async fn run(mut self, shared: Arc<Shared>, stop: CancellationToken) {
        loop {
            self.follow(&shared, &stop).await;
            if stop.is_cancelled() {
                return;
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                match LinkFollower::connect().await {
                    Ok(f) => {
                        self = f;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "reconnecting rtnetlink failed"),
                }
            }
        }
    }

    async fn follow(&mut self, shared: &Shared, stop: &CancellationToken) {
        let mut resync = tokio::time::interval(RETRY_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = resync.tick() => match self.dump().await {
                    Ok(all) => shared.update(|st| st.interfaces = all),
                    Err(e) => {
                        tracing::warn!(error = %e, "re-listing interfaces failed; reconnecting");
                        return;
                    }
                },
                ev = self.events.next() => match ev {
                    None => {
                        tracing::warn!("rtnetlink event stream ended; reconnecting");
                        return;
                    }
                    Some((msg, _)) => match msg.payload {
                        // AF_BRIDGE link messages describe bridge-port state, and an AF_BRIDGE RTM_DELLINK
                        // means "left the bridge", not "gone": only AF_UNSPEC messages describe the link.
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link),
                        ) if link.header.interface_family != AddressFamily::Unspec => {}
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                            if let Some(i) = interface_from_link(&link) {
                                tracing::debug!(interface = %i.name, up = i.up, carrier = i.carrier, master = ?i.master, "link changed");
                                shared.update(|st| {
                                    st.interfaces.insert(i.index, i);
                                });
                            }
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                            tracing::debug!(ifindex = link.header.index, "link removed");
                            shared.update(|st| {
                                st.interfaces.remove(&link.header.index);
                            });
                        }
                        _ => {}
                    },
                },
            }
        }
    }
}
