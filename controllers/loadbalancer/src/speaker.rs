//! The speaker: decides which VIPs this node announces and hands them to the layer-2 announcer.
//!
//! ```text
//!   Services ─┐                                         ┌─> l2::Announcer::set(ip -> interfaces)
//!   Nodes ────┤                                         │     (answers ARP/NDP, GARP/NA on takeover)
//!   EndpointSlices (v1 | v1beta1) ──> recompute ──> election::elect per Service
//!   IPPools (l2.interfaces, l2.nodeSelector) ┘   ^      └─> annotation lb.ferrite.dev/announcing-node,
//!   member::Membership (SWIM gossip: live speakers) ┘        Event "Announcing", ferrite_lb_announced
//! ```
//! Every input change (or a tick every few seconds, as a safety net) recomputes the whole desired set;
//! the computation is pure and cheap (one sha256 per Service and node). The speaker is not
//! leader-elected: every node decides for itself, and all decide alike because they see the same
//! objects and the same gossip view. The owner recorded in the annotation keeps the IP while it stays
//! eligible, so a recovered node does not take it back (no flip-back).

use crate::{
    addr::PoolAddresses,
    election::{self, NodeInfo, ServiceView},
    l2::{Announcer, InterfaceFilter},
    member::{MemberConfig, Membership},
    service::{self, ClassPolicy},
};
use anyhow::Context as _;
use ferrite_api::{
    lb::{IPPool, annotations::ANNOUNCING_NODE},
    names,
};
use ferrite_kit::{
    App,
    endpointslice::{Slice, SliceVersion},
    events::Events,
    kube::{
        Api, Client, Resource, ResourceExt,
        api::DynamicObject,
        runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
    },
};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use prometheus::{IntGaugeVec, Opts};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::sync::Notify;

/// Options of the speaker.
#[derive(clap::Args, Clone, Debug)]
pub struct SpeakerArgs {
    /// Name of this node (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// `loadBalancerClass` served besides Services without a class.
    #[arg(long, env = "FERRITE_LB_CLASS", default_value = ferrite_api::lb::DEFAULT_LOAD_BALANCER_CLASS)]
    pub lb_class: String,

    /// UDP port of the gossip between speakers.
    #[arg(long, env = "FERRITE_GOSSIP_PORT", default_value_t = 7946)]
    pub gossip_port: u16,

    /// Address to bind the gossip socket to (defaults to the node's InternalIP).
    #[arg(long, env = "FERRITE_GOSSIP_BIND")]
    pub gossip_bind: Option<IpAddr>,

    /// Secret (in the speaker's namespace) whose key `key` authenticates gossip.
    #[arg(long, env = "FERRITE_GOSSIP_SECRET", default_value = "ferrite-lb-gossip")]
    pub gossip_secret: String,

    /// After start, announce only the Services that already name this node as their announcer, for this
    /// long: the gossip view needs a moment to fill, and a speaker that saw only itself would claim every
    /// address (a restarted fleet would flap).
    #[arg(long, env = "FERRITE_STARTUP_GRACE", value_parser = ferrite_kit::cli::parse_duration, default_value = "3s")]
    pub startup_grace: Duration,

    /// Namespace of the gossip Secret (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrite-system")]
    pub namespace: String,
}

/// Runs the speaker until shutdown.
pub async fn run(app: App, args: SpeakerArgs) -> anyhow::Result<()> {
    let client = app.client.clone();
    let me = args.node_name.clone();
    anyhow::ensure!(
        !me.is_empty(),
        "--node-name (NODE_NAME) is empty: set it from spec.nodeName"
    );

    let nodes_api: Api<Node> = Api::all(client.clone());
    let my_node = nodes_api
        .get_opt(&me)
        .await?
        .with_context(|| format!("Node {me:?} does not exist: --node-name must be this node's name"))?;
    let my_ip = args
        .gossip_bind
        .or_else(|| internal_ip(&my_node))
        .with_context(|| format!("Node {me} has no InternalIP address; pass --gossip-bind"))?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let secret = secrets.get_opt(&args.gossip_secret).await?.with_context(|| {
        format!(
            "gossip Secret {}/{} does not exist (the chart creates it)",
            args.namespace, args.gossip_secret
        )
    })?;
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get("key"))
        .map(|b| b.0.clone())
        .with_context(|| {
            format!(
                "gossip Secret {}/{} has no key \"key\"",
                args.namespace, args.gossip_secret
            )
        })?;

    let bind = SocketAddr::new(my_ip, args.gossip_port);
    let membership = Membership::start(
        MemberConfig::new(me.clone(), bind, key),
        &app.registry,
        app.shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let announcer = Announcer::start_with_shutdown(&app.registry, app.shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let announced_metric = IntGaugeVec::new(
        Opts::new("ferrite_lb_announced", "1 for each address this node announces."),
        &["ip", "node"],
    )?;
    app.registry.register(Box::new(announced_metric.clone()))?;

    let wake = Arc::new(Notify::new());
    let services = watch_store::<Service>(&app, Api::all(client.clone()), "services", wake.clone());
    let nodes = watch_store::<Node>(&app, nodes_api, "nodes", wake.clone());
    let pools = watch_store::<IPPool>(&app, Api::all(client.clone()), "ippools", wake.clone());
    let node_leases = watch_store::<Lease>(
        &app,
        Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        "node leases",
        wake.clone(),
    );
    let version = SliceVersion::detect(&client).await?;
    let ar = version.api_resource();
    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let slices = writer.as_reader();
    {
        let wake = wake.clone();
        let stream = reflector::reflector(
            writer,
            watcher(version.api_all(client.clone()), Default::default()),
        )
        .default_backoff()
        .touched_objects();
        app.readiness
            .gate("watch endpointslices")
            .open_when_synced(slices.clone());
        tokio::spawn(stream.for_each(move |_| {
            wake.notify_one();
            async {}
        }));
    }
    {
        let wake = wake.clone();
        let mut alive = membership.alive();
        tokio::spawn(async move {
            while alive.changed().await.is_ok() {
                wake.notify_one();
            }
        });
    }

    let speaker = Speaker {
        me: me.clone(),
        client: client.clone(),
        policy: ClassPolicy { class: args.lb_class },
        events: app.events(names::LB_SPEAKER_REPORTER),
        announcer,
        membership,
        announced_metric,
        services,
        nodes,
        pools,
        node_leases,
        slices,
        gossip_port: args.gossip_port,
        grace_until: tokio::time::Instant::now() + args.startup_grace,
        leadership: app.leadership.clone(),
    };
    tracing::info!(node = %me, gossip = %bind, "speaker starting");
    let mut state = Announced::default();
    loop {
        ferrite_kit::admin::wait_synced(&speaker.services).await;
        speaker.step(&mut state).await;
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = wake.notified() => {}
            // Safety net, and the end of the startup grace.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // Stop answering before the process goes away; the gossip task sends its leave on the same token.
    speaker.announcer.set(BTreeMap::new());
    app.finish().await;
    Ok(())
}

fn watch_store<K>(app: &App, api: Api<K>, name: &str, wake: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    // managedFields are large and unused here: drop them before they reach the cache.
    let stream = reflector::reflector(
        writer,
        watcher(api, Default::default()).modify(|o| o.meta_mut().managed_fields = None),
    )
    .default_backoff()
    .touched_objects();
    app.readiness
        .gate(format!("watch {name}"))
        .open_when_synced(store.clone());
    tokio::spawn(stream.for_each(move |_| {
        wake.notify_one();
        async {}
    }));
    store
}

fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

struct Speaker {
    me: String,
    client: Client,
    policy: ClassPolicy,
    events: Events,
    announcer: Announcer,
    membership: Membership,
    announced_metric: IntGaugeVec,
    services: Store<Service>,
    nodes: Store<Node>,
    pools: Store<IPPool>,
    node_leases: Store<Lease>,
    slices: Store<DynamicObject>,
    gossip_port: u16,
    grace_until: tokio::time::Instant,
    /// Always a writer: every speaker records its own announcements.
    leadership: ferrite_kit::leader::Leadership,
}

/// What this node announced after the last step: Service -> its IPs.
#[derive(Default, Debug)]
struct Announced {
    services: BTreeMap<(String, String), Vec<IpAddr>>,
    peers: BTreeSet<SocketAddr>,
    /// When this speaker last recorded itself as a Service's announcer. During a partition two speakers
    /// may both win; this keeps them from rewriting the annotation back and forth on every event.
    claimed: BTreeMap<(String, String), tokio::time::Instant>,
    /// Nodes gossip has shown alive at least once since this speaker started.
    ever_seen: BTreeSet<String>,
}

/// Where kubelets keep their node Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How stale a kubelet Lease may be before the node counts as gone (kube-controller-manager's
/// node-monitor-grace-period default).
const NODE_LEASE_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(40);

/// The fallback signal: the Node's Ready condition is True and, when the node has a kubelet Lease, the
/// Lease was renewed within [`NODE_LEASE_GRACE`].
fn node_healthy(node: &Node, lease: Option<&Lease>, now: jiff::Timestamp) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let lease_fresh = match lease.and_then(|l| l.spec.as_ref()) {
        None => true, // no kubelet Lease (old or kubelet-less clusters): Ready alone decides
        Some(spec) => spec
            .renew_time
            .as_ref()
            .is_some_and(|t| now.duration_since(t.0) <= NODE_LEASE_GRACE),
    };
    ready && lease_fresh
}

/// How often a speaker may re-record itself as a Service's announcer.
const CLAIM_INTERVAL: Duration = Duration::from_secs(30);

/// A parsed pool: its addresses and layer-2 settings, or why its addresses are not announced.
struct PoolL2 {
    name: String,
    addresses: PoolAddresses,
    l2: Result<(InterfaceFilter, Option<LabelSelector>), String>,
}

/// One address (or one set of addresses) and the Services that use it. Services sharing an address
/// (allow-shared-ip) are elected together, so one node answers for it.
struct Group {
    services: Vec<Arc<Service>>,
    ips: Vec<IpAddr>,
}

impl Speaker {
    fn pools(&self) -> Vec<PoolL2> {
        self.pools
            .state()
            .iter()
            .filter_map(|p| {
                // The allocator reports an unparsable pool in its status; it hands out nothing from it.
                let addresses = PoolAddresses::parse(&p.spec.addresses).ok()?;
                let l2 = p.spec.l2.clone().unwrap_or_default();
                let l2 = InterfaceFilter::new(l2.interfaces.iter())
                    .map(|f| (f, l2.node_selector.clone()))
                    .map_err(|e| e.to_string());
                Some(PoolL2 {
                    name: p.name_any(),
                    addresses,
                    l2,
                })
            })
            .collect()
    }

    async fn step(&self, prev: &mut Announced) {
        // Speakers find each other through the Nodes' InternalIPs.
        let peers: BTreeSet<SocketAddr> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| internal_ip(n).map(|ip| SocketAddr::new(ip, self.gossip_port)))
            .collect();
        if peers != prev.peers {
            self.membership.join(peers.iter().copied());
            prev.peers = peers;
        }

        let alive = self.membership.alive().borrow().clone();
        prev.ever_seen.extend(alive.iter().cloned());
        let node_objs = self.nodes.state();
        let nodes: Vec<NodeInfo> = node_objs.iter().map(|n| node_info(n, &alive)).collect();
        let pools = self.pools();
        let mut slices_by_service: BTreeMap<(String, String), Vec<Slice>> = BTreeMap::new();
        for obj in self.slices.state() {
            let s = Slice::from_dynamic(&obj);
            if let Some(svc) = s.service.clone() {
                slices_by_service
                    .entry((s.namespace.clone(), svc))
                    .or_default()
                    .push(s);
            }
        }

        // Group Services by their first address (the ranking key), oldest first.
        let mut groups: BTreeMap<IpAddr, Group> = BTreeMap::new();
        let mut services: Vec<Arc<Service>> = self
            .services
            .state()
            .into_iter()
            .filter(|s| self.policy.serves(s))
            .collect();
        services.sort_by_key(|s| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                s.namespace(),
                s.name_any(),
            )
        });
        for svc in services {
            let ips = service::current_ips(&svc);
            let Some(first) = ips.first().copied() else {
                continue;
            };
            let g = groups.entry(first).or_insert_with(|| Group {
                services: vec![],
                ips: vec![],
            });
            for ip in ips {
                if !g.ips.contains(&ip) {
                    g.ips.push(ip);
                }
            }
            g.services.push(svc);
        }

        let converging = tokio::time::Instant::now() < self.grace_until;
        let mut desired: BTreeMap<IpAddr, InterfaceFilter> = BTreeMap::new();
        let mut mine: BTreeMap<(String, String), (Arc<Service>, Vec<IpAddr>)> = BTreeMap::new();
        for (first, group) in &groups {
            let pool = pools.iter().find(|p| p.addresses.contains(*first));
            let (filter, node_selector) = match pool.map(|p| &p.l2) {
                // Addresses outside every pool (pool shrunk or deleted) stay announced everywhere eligible.
                None => (InterfaceFilter::all(), None),
                Some(Ok((f, sel))) => (f.clone(), sel.clone()),
                Some(Err(e)) => {
                    tracing::warn!(pool = %pool.map(|p| p.name.as_str()).unwrap_or_default(), error = %e, ip = %first, "IPPool l2 is invalid; not announcing its addresses");
                    continue;
                }
            };
            let slices: Vec<&Slice> = group
                .services
                .iter()
                .filter_map(|s| slices_by_service.get(&(s.namespace().unwrap_or_default(), s.name_any())))
                .flatten()
                .collect();
            let oldest = &group.services[0];
            let view = ServiceView {
                ips: group.ips.clone(),
                local_traffic_policy: oldest
                    .spec
                    .as_ref()
                    .and_then(|s| s.external_traffic_policy.as_deref())
                    == Some("Local"),
                ready_endpoint_nodes: slices
                    .iter()
                    .flat_map(|s| s.serving_nodes().map(String::from))
                    .collect(),
                has_serving_endpoint: slices.iter().any(|s| s.has_serving()),
                // The recorded owner of the group: the oldest Service that names one.
                current_owner: group
                    .services
                    .iter()
                    .find_map(|s| s.annotations().get(ANNOUNCING_NODE).cloned()),
                pool_node_selector: node_selector,
            };
            // Fallback liveness for the recorded owner when gossip cannot tell: a node this speaker has
            // never seen in gossip (UDP blocked between some nodes, or we just restarted) keeps its
            // addresses while its Node is Ready and its kubelet Lease is fresh. A node gossip has seen
            // and then lost is dead at once (the fast path).
            let owner_by_fallback = view.current_owner.as_ref().filter(|o| {
                !alive.contains(*o)
                    && !prev.ever_seen.contains(*o)
                    && node_objs.iter().find(|n| n.name_any() == **o).is_some_and(|n| {
                        let lease = self
                            .node_leases
                            .get(&reflector::ObjectRef::new(o).within(NODE_LEASE_NAMESPACE));
                        node_healthy(n, lease.as_deref(), jiff::Timestamp::now())
                    })
            });
            let with_fallback: Vec<NodeInfo>;
            let nodes = match owner_by_fallback {
                Some(o) => {
                    with_fallback = nodes
                        .iter()
                        .cloned()
                        .map(|mut n| {
                            if &n.name == o {
                                n.speaker_alive = true;
                            }
                            n
                        })
                        .collect();
                    &with_fallback
                }
                None => &nodes,
            };
            match election::elect(&view, nodes) {
                Ok(Some(winner))
                    if winner == self.me
                        && (!converging || view.current_owner.as_deref() == Some(&self.me)) =>
                {
                    for ip in &group.ips {
                        desired.insert(*ip, filter.clone());
                    }
                    for svc in &group.services {
                        let ips = service::current_ips(svc);
                        mine.insert(
                            (svc.namespace().unwrap_or_default(), svc.name_any()),
                            (svc.clone(), ips),
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(ip = %first, error = %e, "IPPool l2.nodeSelector is invalid"),
            }
        }
        self.announcer.set(desired);

        // Record ownership, tell people, keep the metric.
        let announced_on = self.announcer.announced();
        let now = tokio::time::Instant::now();
        for (key, (svc, ips)) in &mine {
            let newly = prev.services.get(key) != Some(ips);
            let recent = prev
                .claimed
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < CLAIM_INTERVAL);
            if svc.annotations().get(ANNOUNCING_NODE) != Some(&self.me) && !recent {
                self.claim(svc).await;
                prev.claimed.insert(key.clone(), now);
            }
            if newly {
                let ifaces: BTreeSet<&String> = ips
                    .iter()
                    .filter_map(|ip| announced_on.get(ip))
                    .flatten()
                    .collect();
                let ip_list = ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                let note = if ifaces.is_empty() {
                    format!(
                        "node {} is elected for {ip_list} but has no eligible interface (see the speaker log)",
                        self.me
                    )
                } else {
                    let names: Vec<&str> = ifaces.iter().map(|s| s.as_str()).collect();
                    format!("node {} announces {ip_list} on {}", self.me, names.join(", "))
                };
                self.events
                    .normal(&svc.object_ref(&()), "Announcing", "Announce", note)
                    .await;
                tracing::info!(service = %key.1, namespace = %key.0, ips = %ip_list, "announcing");
                for ip in ips {
                    self.announced_metric
                        .with_label_values(&[&ip.to_string(), &self.me])
                        .set(1);
                }
            }
        }
        for (key, ips) in &prev.services {
            let still: BTreeSet<IpAddr> = mine
                .get(key)
                .map(|(_, v)| v.iter().copied().collect())
                .unwrap_or_default();
            for ip in ips.iter().filter(|ip| !still.contains(ip)) {
                let _ = self
                    .announced_metric
                    .remove_label_values(&[&ip.to_string(), &self.me]);
                tracing::info!(service = %key.1, namespace = %key.0, ip = %ip, "stopped announcing");
            }
        }
        prev.claimed.retain(|k, _| mine.contains_key(k));
        prev.services = mine.into_iter().map(|(k, (_, ips))| (k, ips)).collect();
    }

    /// Records this node as the announcer, so it keeps the IP while eligible (no flip-back).
    async fn claim(&self, svc: &Service) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
        let name = svc.name_any();
        let body = serde_json::json!({"metadata": {"annotations": {ANNOUNCING_NODE: self.me}}});
        let res = ferrite_kit::status::apply(&api, &name, names::LB_SPEAKER_MANAGER, body, &self.leadership);
        if let Err(e) = res.await {
            tracing::warn!(service = %svc.name_any(), error = %e, "could not record the announcing node");
        }
    }
}

fn node_info(n: &Node, alive: &BTreeSet<String>) -> NodeInfo {
    let name = n.name_any();
    let network_unavailable = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
        });
    NodeInfo {
        speaker_alive: alive.contains(&name),
        name,
        labels: n.labels().clone(),
        network_unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(ready: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
        .expect("node")
    }

    fn lease(renewed: &str) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"renewTime": renewed}}))
            .expect("lease")
    }

    #[test]
    fn fallback_liveness_needs_ready_and_a_fresh_kubelet_lease() {
        let now: jiff::Timestamp = "2026-11-22T12:00:00Z".parse().expect("time");
        let cases = [
            (
                "ready, fresh lease",
                node("True"),
                Some(lease("2026-11-22T11:59:50.000000Z")),
                true,
            ),
            ("ready, no lease (kubelet-less)", node("True"), None, true),
            (
                "ready, stale lease",
                node("True"),
                Some(lease("2026-11-22T11:59:00.000000Z")),
                false,
            ),
            (
                "not ready, fresh lease",
                node("False"),
                Some(lease("2026-11-22T11:59:59.000000Z")),
                false,
            ),
            ("unknown", node("Unknown"), None, false),
        ];
        for (name, n, l, want) in cases {
            assert_eq!(node_healthy(&n, l.as_ref(), now), want, "{name}");
        }
    }
}
