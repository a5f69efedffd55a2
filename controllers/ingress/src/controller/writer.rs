//! The leader's writes: `status.loadBalancer` of Ingresses and Warning Events, off the snapshot path.
//!
//! Each build hands its served Ingresses and problems over a latest-wins channel; the writer works on
//! the newest, so a burst of builds is one pass, and a slow API server never delays a route change.
//!
//! - Status: every served Ingress gets the publish addresses (`--publish-service`'s addresses, see
//!   [`service_addresses`], or `--publish-status-address`) when its status differs; an Ingress
//!   no longer served whose status this replica wrote, or that carries exactly our addresses, is
//!   cleared. Without either flag no status is written. JSON merge patches of the status subresource,
//!   at most [`WRITE_CONCURRENCY`] at once, each bounded by the leader fence.
//! - Events: one Warning per distinct (Ingress, reason, message); a problem still present at the next
//!   build is not told again, one that went away and comes back is. A replica that becomes leader
//!   tells the current problems once.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use ferrite_kit::events::Events;
use ferrite_kit::leader::Leadership;
use ferrite_kit::metrics::ReconcileMetrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use super::build::Problem;
use crate::routes::IngressRef;

/// Status writes in flight at once.
pub const WRITE_CONCURRENCY: usize = 16;
/// A pass with failed writes runs again after this long (or at the next build, if sooner).
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the addresses written into Ingress status come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// `--publish-service NAMESPACE/NAME`: that Service's addresses ([`service_addresses`]).
    Service { namespace: String, name: String },
    /// `--publish-status-address`: fixed IPs or hostnames.
    Addresses(Vec<String>),
    /// Neither: status is left alone.
    Off,
}

/// One address of `status.loadBalancer.ingress`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Address {
    Ip(String),
    Hostname(String),
    /// An entry with both (a cloud load balancer reporting its IP and DNS name).
    IpAndHostname {
        ip: String,
        hostname: String,
    },
}

impl Address {
    fn json(&self) -> serde_json::Value {
        match self {
            Address::Ip(ip) => serde_json::json!({ "ip": ip }),
            Address::Hostname(h) => serde_json::json!({ "hostname": h }),
            Address::IpAndHostname { ip, hostname } => serde_json::json!({ "ip": ip, "hostname": hostname }),
        }
    }

    /// The address of a `status.loadBalancer.ingress` entry: both fields kept; `None` when empty.
    fn of_entry(ip: Option<&str>, hostname: Option<&str>) -> Option<Address> {
        let ip = ip.filter(|s| !s.is_empty());
        let hostname = hostname.filter(|s| !s.is_empty());
        match (ip, hostname) {
            (Some(ip), Some(h)) => Some(Address::IpAndHostname {
                ip: ip.to_owned(),
                hostname: h.to_owned(),
            }),
            (Some(ip), None) => Some(Address::Ip(ip.to_owned())),
            (None, Some(h)) => Some(Address::Hostname(h.to_owned())),
            (None, None) => None,
        }
    }

    fn ip(&self) -> Option<&str> {
        match self {
            Address::Ip(ip) | Address::IpAndHostname { ip, .. } => Some(ip),
            Address::Hostname(_) => None,
        }
    }

    /// An IP if it parses as one, else a hostname.
    pub fn parse(s: &str) -> Address {
        if s.parse::<std::net::IpAddr>().is_ok() {
            Address::Ip(s.to_owned())
        } else {
            Address::Hostname(s.to_owned())
        }
    }
}

/// What one build hands to the writer.
#[derive(Debug, Default)]
pub struct Job {
    pub served: Vec<IngressRef>,
    pub problems: Vec<Problem>,
}

/// The state of the writer task.
pub struct Writer {
    pub ingresses: Store<Ingress>,
    pub services: Store<Service>,
    pub client: kube::Client,
    pub publish: Publish,
    pub events: Events,
    pub leadership: Leadership,
    pub metrics: ReconcileMetrics,
    /// Ingresses whose status this replica wrote (to clear them when they leave).
    written: HashSet<IngressRef>,
    /// Problems told, with the uid of their Ingress.
    emitted: BTreeSet<(Problem, String)>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("publish", &self.publish).finish()
    }
}

fn current(ing: &Ingress) -> Vec<Address> {
    let mut v: Vec<Address> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| Address::of_entry(a.ip.as_deref(), a.hostname.as_deref()))
        .collect();
    v.sort();
    v
}

/// The addresses `--publish-service` publishes, as ingress-nginx's `statusAddressFromService`:
/// LoadBalancer: every `status.loadBalancer.ingress` entry (ip and hostname both), then the
/// `spec.externalIPs` not listed yet; NodePort: `spec.externalIPs`, or the ClusterIP when there are none;
/// ClusterIP (or no type): the ClusterIP (none for a headless Service); ExternalName: its
/// `externalName` as a hostname.
pub fn service_addresses(svc: &Service) -> Vec<Address> {
    let spec = svc.spec.as_ref();
    fn text(v: Option<&String>) -> Option<&str> {
        v.map(String::as_str).filter(|s| !s.is_empty())
    }
    let cluster_ip = || {
        text(spec.and_then(|s| s.cluster_ip.as_ref()))
            .filter(|ip| *ip != "None")
            .map(|ip| Address::Ip(ip.to_owned()))
            .into_iter()
            .collect::<Vec<_>>()
    };
    let external_ips: Vec<&str> = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    match spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP") {
        "ExternalName" => text(spec.and_then(|s| s.external_name.as_ref()))
            .map(|h| Address::Hostname(h.to_owned()))
            .into_iter()
            .collect(),
        "NodePort" if !external_ips.is_empty() => external_ips
            .iter()
            .map(|ip| Address::Ip((*ip).to_owned()))
            .collect(),
        "LoadBalancer" => {
            let mut v: Vec<Address> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|a| Address::of_entry(a.ip.as_deref(), a.hostname.as_deref()))
                .collect();
            for ip in external_ips {
                if !v.iter().any(|a| a.ip() == Some(ip)) {
                    v.push(Address::Ip(ip.to_owned()));
                }
            }
            v
        }
        _ => cluster_ip(),
    }
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ingresses: Store<Ingress>,
        services: Store<Service>,
        client: kube::Client,
        publish: Publish,
        events: Events,
        leadership: Leadership,
        metrics: ReconcileMetrics,
    ) -> Self {
        Writer {
            ingresses,
            services,
            client,
            publish,
            events,
            leadership,
            metrics,
            written: HashSet::new(),
            emitted: BTreeSet::new(),
        }
    }

    /// The addresses to publish; `None` when status is not managed.
    fn addresses(&self) -> Option<Vec<Address>> {
        let mut v = match &self.publish {
            Publish::Off => return None,
            Publish::Addresses(a) => a.iter().map(|s| Address::parse(s)).collect::<Vec<_>>(),
            Publish::Service { namespace, name } => self
                .services
                .get(&ObjectRef::new(name).within(namespace))
                .map(|svc| service_addresses(&svc))
                .unwrap_or_default(),
        };
        v.sort();
        v.dedup();
        Some(v)
    }

    /// Runs until the channel closes: one pass per newest job, one when leadership is gained, and
    /// one [`RETRY`] after a pass with failed writes.
    pub async fn run(mut self, mut jobs: watch::Receiver<Arc<Job>>) {
        let mut leader = self.leadership.subscribe();
        let mut retry: Option<tokio::time::Instant> = None;
        loop {
            let again = async {
                match retry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = jobs.changed() => if r.is_err() { return },
                r = leader.changed() => {
                    if r.is_err() { return }
                    // A new term: tell the current problems again, look at every status.
                    self.emitted.clear();
                    if !*leader.borrow_and_update() {
                        self.written.clear();
                        continue;
                    }
                }
                _ = again => {}
            }
            retry = None;
            let job = jobs.borrow_and_update().clone();
            if !self.leadership.is_leader() {
                continue;
            }
            if !self.pass(&job).await {
                retry = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }

    /// One pass; false when a write failed.
    async fn pass(&mut self, job: &Job) -> bool {
        // Events first: they are few, and tell a user at once what is wrong. Keyed by the Ingress's
        // uid too: a recreated Ingress with the same problem is told again.
        let mut now: BTreeSet<(Problem, String)> = BTreeSet::new();
        for p in &job.problems {
            let Some(ing) = self
                .ingresses
                .get(&ObjectRef::new(&p.ingress.name).within(&p.ingress.namespace))
            else {
                continue;
            };
            let uid = ing.metadata.uid.clone().unwrap_or_default();
            let key = (p.clone(), uid.clone());
            if !self.emitted.contains(&key) {
                let on = ObjectReference {
                    api_version: Some("networking.k8s.io/v1".into()),
                    kind: Some("Ingress".into()),
                    name: Some(p.ingress.name.clone()),
                    namespace: Some(p.ingress.namespace.clone()),
                    uid: Some(uid),
                    resource_version: ing.metadata.resource_version.clone(),
                    ..Default::default()
                };
                self.events
                    .warning(&on, p.reason, "Route", p.message.clone())
                    .await;
            }
            now.insert(key);
        }
        self.emitted = now;

        let Some(addresses) = self.addresses() else {
            return true;
        };
        let writes = plan(
            &self.ingresses.state(),
            &job.served,
            &addresses,
            &mut self.written,
        );
        if writes.is_empty() {
            return true;
        }
        let client = self.client.clone();
        let leadership = self.leadership.clone();
        let metrics = self.metrics.clone();
        let results: Vec<(IngressRef, bool, bool)> = futures::stream::iter(writes)
            .map(|(me, addrs)| {
                let client = client.clone();
                let leadership = leadership.clone();
                let metrics = metrics.clone();
                async move {
                    let set = addrs.is_some();
                    let ok = write_status(&client, &leadership, &metrics, &me, addrs.as_deref()).await;
                    (me, set, ok)
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let all_ok = results.iter().all(|(_, _, ok)| *ok);
        for (me, set, ok) in results {
            match (set, ok) {
                (true, true) => {
                    self.written.insert(me);
                }
                (false, true) => {
                    self.written.remove(&me);
                }
                _ => {}
            }
        }
        all_ok
    }
}

/// The status writes of one pass: served Ingresses whose addresses differ get `Some(addresses)`;
/// Ingresses no longer served that this replica wrote, or that carry exactly our addresses, get `None`
/// (cleared). `written` forgets Ingresses that need nothing and remembers served ones already right.
pub fn plan(
    ingresses: &[Arc<Ingress>],
    served: &[IngressRef],
    addresses: &[Address],
    written: &mut HashSet<IngressRef>,
) -> Vec<(IngressRef, Option<Vec<Address>>)> {
    let served: HashSet<&IngressRef> = served.iter().collect();
    let mut writes = Vec::new();
    for ing in ingresses {
        let me = IngressRef::of(ing);
        let cur = current(ing);
        if served.contains(&me) {
            if cur != addresses {
                writes.push((me, Some(addresses.to_vec())));
            } else {
                written.insert(me);
            }
        } else if !cur.is_empty() && (written.contains(&me) || cur == addresses) {
            writes.push((me, None));
        } else {
            written.remove(&me);
        }
    }
    writes
}

async fn write_status(
    client: &kube::Client,
    leadership: &Leadership,
    metrics: &ReconcileMetrics,
    me: &IngressRef,
    addresses: Option<&[Address]>,
) -> bool {
    let started = Instant::now();
    let api: Api<Ingress> = Api::namespaced(client.clone(), &me.namespace);
    let ingress = match addresses {
        Some(a) => serde_json::Value::Array(a.iter().map(Address::json).collect()),
        None => serde_json::Value::Null,
    };
    let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": ingress } } });
    let res = leadership
        .bounded(async {
            Ok(api
                .patch_status(&me.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?)
        })
        .await;
    match res {
        Ok(_) => {
            tracing::debug!(ingress = %me, ?addresses, "status.loadBalancer written");
            metrics.success(started.elapsed());
            true
        }
        // Deleted meanwhile: nothing to write.
        Err(ferrite_kit::Error::Kube(kube::Error::Api(e))) if e.code == 404 => true,
        Err(e) => {
            let reason = ferrite_kit::ReasonedError::reason(&e);
            tracing::warn!(ingress = %me, error = %e, "writing status.loadBalancer failed; retried at the next pass");
            metrics.error(reason, started.elapsed());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ing(name: &str, ips: &[&str]) -> Arc<Ingress> {
        let lb: Vec<serde_json::Value> = ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns"},
                "status": {"loadBalancer": {"ingress": lb}}
            }))
            .expect("ingress"),
        )
    }

    fn r(name: &str) -> IngressRef {
        IngressRef {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    #[test]
    fn publish_service_addresses_follow_ingress_nginx() {
        use Address::*;
        let ip = |s: &str| Ip(s.to_owned());
        let cases: Vec<(serde_json::Value, Vec<Address>)> = vec![
            (
                serde_json::json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1",
                    "externalIPs": ["192.0.2.5", "192.0.2.1"]},
                    "status": {"loadBalancer": {"ingress": [
                        {"ip": "192.0.2.1", "hostname": "lb.example.com"}, {"hostname": "other.example.com"},
                        {"ip": "192.0.2.2"}, {}]}}}),
                vec![
                    IpAndHostname {
                        ip: "192.0.2.1".into(),
                        hostname: "lb.example.com".into(),
                    },
                    Hostname("other.example.com".into()),
                    ip("192.0.2.2"),
                    ip("192.0.2.5"),
                ],
            ),
            // No address assigned yet: nothing (not the ClusterIP).
            (
                serde_json::json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1"}}),
                vec![],
            ),
            (
                serde_json::json!({"spec": {"type": "NodePort", "clusterIP": "10.0.0.1",
                    "externalIPs": ["192.0.2.7"]}}),
                vec![ip("192.0.2.7")],
            ),
            (
                serde_json::json!({"spec": {"type": "NodePort", "clusterIP": "10.0.0.1"}}),
                vec![ip("10.0.0.1")],
            ),
            (
                serde_json::json!({"spec": {"type": "ClusterIP", "clusterIP": "10.0.0.1",
                    "externalIPs": ["192.0.2.7"]}}),
                vec![ip("10.0.0.1")],
            ),
            (
                serde_json::json!({"spec": {"clusterIP": "10.0.0.2"}}),
                vec![ip("10.0.0.2")],
            ),
            (serde_json::json!({"spec": {"clusterIP": "None"}}), vec![]),
            (
                serde_json::json!({"spec": {"type": "ExternalName", "externalName": "proxy.example.com"}}),
                vec![Hostname("proxy.example.com".into())],
            ),
            (serde_json::json!({}), vec![]),
        ];
        for (v, want) in cases {
            assert_eq!(service_addresses(&svc(v.clone())), want, "{v}");
        }
        assert_eq!(
            IpAndHostname {
                ip: "192.0.2.1".into(),
                hostname: "lb.example.com".into()
            }
            .json(),
            serde_json::json!({"ip": "192.0.2.1", "hostname": "lb.example.com"})
        );
        // An Ingress whose status already has both fields is read back as equal (no rewrite loop).
        let ing: Ingress = serde_json::from_value(serde_json::json!({"metadata": {"name": "x"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "hostname": "lb.example.com"}]}}}))
        .expect("ingress");
        assert_eq!(
            current(&ing),
            vec![IpAndHostname {
                ip: "192.0.2.1".into(),
                hostname: "lb.example.com".into()
            }]
        );
    }

    #[test]
    fn served_ingresses_get_our_addresses_and_the_ones_that_left_are_cleared() {
        let ours = vec![Address::parse("192.0.2.1"), Address::parse("lb.example.com")];
        let all = vec![
            ing("new", &[]),
            ing("right", &["192.0.2.1"]),
            ing("stale", &["192.0.2.9"]),
            ing("left-ours", &["192.0.2.1"]),
            ing("left-written", &["192.0.2.7"]),
            ing("other-controller", &["198.51.100.1"]),
            ing("never", &[]),
        ];
        let served = vec![r("new"), r("right"), r("stale")];
        let mut written: HashSet<IngressRef> = [r("left-written"), r("never")].into();
        let right = vec![Address::parse("192.0.2.1")];
        // "right" carries exactly `right`: no write; the others as documented.
        let plan_right = plan(&all, &served, &right, &mut written.clone());
        let names: Vec<(&str, bool)> = plan_right
            .iter()
            .map(|(i, a)| (i.name.as_str(), a.is_some()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("new", true),
                ("stale", true),
                ("left-ours", false),
                ("left-written", false)
            ]
        );
        let p = plan(&all, &served, &ours, &mut written);
        let names: Vec<&str> = p.iter().map(|(i, _)| i.name.as_str()).collect();
        assert_eq!(names, vec!["new", "right", "stale", "left-written"]);
        assert!(p.iter().all(|(i, a)| (i.name == "left-written") == a.is_none()));
        assert!(!written.contains(&r("never")), "forgotten: nothing to clear");
        assert!(!written.contains(&r("other-controller")));
        assert_eq!(
            Address::parse("lb.example.com"),
            Address::Hostname("lb.example.com".into())
        );
    }
}
