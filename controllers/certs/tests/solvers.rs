//! Box test of the challenge solvers: a real kube-apiserver (the box), the solvers of one order run
//! in-process against it, the objects they make read back with the API as a user would. For each kind of
//! solver: the Challenge (owned by the Certificate, controller=true, status presented), what is made for
//! it (temporary Ingress + selector-less Service + Endpoints to this pod's listener for another
//! IngressClass; nothing for ferrite's class; one DNSRecord TXT per name for ferriteDNS; a TXT value in a
//! real `named` for rfc2136 with the TSIG key read from the issuer's Secret), each owned by its Challenge,
//! and all of it gone after cleanup. A presentation that fails leaves nothing behind.
//!
//! One test function: the steps share one namespace and run in order. Needs the box
//! (e2e/scripts/install-deps.sh) and `named`/`dig` (bind9, bind9-dnsutils).
//! Run: `cargo test -p ferrite-certs --test solvers`.

use std::net::{IpAddr, Ipv4Addr};

use ferrite_api::certs::{AcmeSolver, Certificate, Challenge, ChallengeType, IssuerKind, IssuerRef};
use ferrite_api::dns::DNSRecord;
use ferrite_certs::acme::{AuthzInfo, ChallengeInfo, ChallengeKind, ChallengeSolver, Presented, dns_value};
use ferrite_certs::solvers::{CHALLENGE_LABEL, Http01Tokens, OrderSolver, SolverArgs, Solvers, serve_http01};
use ferrite_e2e::KubeBox;
use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

const TSIG_KEY: &str = "ferrite-certs-box";
const TSIG_SECRET: &[u8] = b"ferrite-certs box test secret, 32+ bytes";

fn presented(identifier: &str, wildcard: bool, kind: ChallengeKind, token: &str) -> Presented {
    let key_authorization = format!("{token}.thumbprint");
    let challenge = ChallengeInfo {
        kind,
        url: format!("https://ca/chall/{token}"),
        token: token.to_string(),
        dns_txt_value: dns_value(&key_authorization),
        key_authorization,
        status: "pending".into(),
        error: None,
    };
    let mut offered = vec![challenge.clone()];
    if !wildcard {
        // The CA offers both for a plain name; the solver picks by its configuration.
        let other = if challenge.kind == ChallengeKind::Http01 {
            ChallengeKind::Dns01
        } else {
            ChallengeKind::Http01
        };
        offered.push(ChallengeInfo {
            kind: other,
            url: format!("https://ca/chall/{token}-other"),
            ..challenge.clone()
        });
    }
    Presented {
        authz: AuthzInfo {
            url: format!("https://ca/authz/{token}"),
            identifier: identifier.to_string(),
            wildcard,
            is_ip: false,
            status: "pending".into(),
            challenges: offered,
        },
        challenge,
    }
}

fn solvers_from(v: serde_json::Value) -> Vec<AcmeSolver> {
    serde_json::from_value(v).expect("solvers parse")
}

async fn order(
    solvers: &Solvers,
    cert: &Certificate,
    issuer_ns: &str,
    config: serde_json::Value,
) -> OrderSolver {
    let issuer = IssuerRef {
        name: "le".into(),
        kind: IssuerKind::Issuer,
        group: None,
    };
    solvers
        .for_order(cert, &issuer, issuer_ns, &solvers_from(config))
        .expect("order solver")
}

/// The one Challenge in `ns` (there must be exactly `n`).
async fn challenges(api: &Api<Challenge>, n: usize) -> Vec<Challenge> {
    let list = api
        .list(&ListParams::default())
        .await
        .expect("list Challenges")
        .items;
    assert_eq!(
        list.len(),
        n,
        "{:?}",
        list.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    );
    list
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.uid == uid))
}

/// `GET path` with Host `host` against the listener: (status, body).
async fn http_get(port: u16, host: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solvers_make_and_remove_their_objects() {
    let kb = KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let ns = kb.namespace("solvers").await;

    // The HTTP-01 listener, as the binary runs it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tokens = Http01Tokens::default();
    let server = tokio::spawn(serve_http01(listener, tokens.clone()));
    let args = SolverArgs {
        pod_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        ..SolverArgs::default()
    };
    let solvers = Solvers::new(client.clone(), args, port, tokens.clone());

    // IngressClasses: ferrite's and another controller's.
    let classes: Api<IngressClass> = Api::all(client.clone());
    for (name, controller) in [
        ("ferrite-box", "ferrite.dev/ingress"),
        ("nginx-box", "k8s.io/ingress-nginx"),
    ] {
        let ic: IngressClass = serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": name}, "spec": {"controller": controller}
        }))
        .expect("IngressClass");
        classes
            .patch(
                name,
                &PatchParams::apply("solvers-test").force(),
                &Patch::Apply(&ic),
            )
            .await
            .expect("IngressClass applied");
    }

    // The Certificate the challenges belong to.
    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let cert: Certificate = serde_json::from_value(json!({
        "apiVersion": "certs.ferrite.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"name": "shop", "namespace": ns, "labels": {"team": "a"}},
        "spec": {"secretName": "shop-tls", "issuerRef": {"name": "le"},
                 "dnsNames": ["shop.example.test", "*.example.test", "example.test"]}
    }))
    .expect("Certificate");
    let cert = certs
        .create(&PostParams::default(), &cert)
        .await
        .expect("Certificate created");
    let cert_uid = cert.meta().uid.clone().expect("uid");
    let ch_api: Api<Challenge> = Api::namespaced(client.clone(), &ns);
    let ing_api: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let svc_api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let ep_api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let rec_api: Api<DNSRecord> = Api::namespaced(client.clone(), &ns);

    // 1. HTTP-01 through another IngressClass: Challenge + Ingress + Service + Endpoints.
    let s = order(
        &solvers,
        &cert,
        &ns,
        json!([{"http01": {"ingress": {"ingressClassName": "nginx-box"}}}]),
    )
    .await;
    let p = presented("shop.example.test", false, ChallengeKind::Http01, "tok-http");
    assert_eq!(s.choose(&p.authz), Some(ChallengeKind::Http01));
    s.present(&p).await.expect("present HTTP-01");
    let ch = challenges(&ch_api, 1).await.remove(0);
    let ch_uid = ch.meta().uid.clone().expect("uid");
    let own = ch.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        own.iter()
            .any(|o| o.uid == cert_uid && o.controller == Some(true) && o.kind == "Certificate"),
        "{own:?}"
    );
    assert_eq!(ch.spec.challenge_type, ChallengeType::Http01);
    assert_eq!(ch.spec.dns_name, "shop.example.test");
    assert_eq!(ch.spec.token, "tok-http");
    assert_eq!(ch.spec.key, "tok-http.thumbprint");
    assert_eq!(ch.spec.ingress_class_name.as_deref(), Some("nginx-box"));
    let st = ch.status.clone().expect("status");
    assert!(st.presented, "{st:?}");
    assert!(!st.processing, "{st:?}");
    assert_eq!(st.state.as_deref(), Some("pending"));
    // acme::AcmeOrder::drive calls validating() before asking the CA to validate.
    s.validating(&p).await;
    let st = ch_api
        .get(&ch.name_any())
        .await
        .expect("get")
        .status
        .expect("status");
    assert!(st.presented && st.processing, "{st:?}");
    let ings = ing_api.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(ings.len(), 1);
    let ing = &ings[0];
    assert!(owned_by(&ing.metadata, &ch_uid), "Ingress owned by the Challenge");
    assert_eq!(ing.labels().get(CHALLENGE_LABEL), Some(&ch.name_any()));
    let spec = ing.spec.clone().expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx-box"));
    let rule = &spec.rules.expect("rules")[0];
    assert_eq!(rule.host.as_deref(), Some("shop.example.test"));
    let path = &rule.http.as_ref().expect("http").paths[0];
    assert_eq!(path.path.as_deref(), Some("/.well-known/acme-challenge/tok-http"));
    assert_eq!(path.path_type, "Exact");
    let backend = path.backend.service.clone().expect("service backend");
    let svc = svc_api
        .get(&backend.name)
        .await
        .expect("the backend Service exists");
    assert!(owned_by(&svc.metadata, &ch_uid));
    let svc_spec = svc.spec.clone().expect("spec");
    assert!(svc_spec.selector.is_none_or(|s| s.is_empty()), "no selector");
    assert_eq!(backend.port.and_then(|p| p.number), Some(i32::from(port)));
    let ep = ep_api.get(&backend.name).await.expect("Endpoints exist");
    assert!(owned_by(&ep.metadata, &ch_uid));
    let subset = &ep.subsets.clone().expect("subsets")[0];
    assert_eq!(subset.addresses.as_ref().expect("addresses")[0].ip, "10.1.2.3");
    assert_eq!(subset.ports.as_ref().expect("ports")[0].port, i32::from(port));
    // The listener serves the token meanwhile.
    assert_eq!(
        http_get(port, "shop.example.test", "/.well-known/acme-challenge/tok-http").await,
        (200, "tok-http.thumbprint".to_string())
    );
    s.cleanup(&p).await.expect("cleanup HTTP-01");
    challenges(&ch_api, 0).await;
    assert!(
        ing_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(svc_api.get_opt(&backend.name).await.expect("get").is_none());
    assert!(ep_api.get_opt(&backend.name).await.expect("get").is_none());
    assert_eq!(
        http_get(port, "shop.example.test", "/.well-known/acme-challenge/tok-http")
            .await
            .0,
        404
    );

    // 1b. The older `class` (an annotation value): a temporary Ingress with the annotation, no
    //     ingressClassName, and no IngressClass looked up.
    let s = order(
        &solvers,
        &cert,
        &ns,
        json!([{"http01": {"ingress": {"class": "legacy-box"}}}]),
    )
    .await;
    let p = presented("shop.example.test", false, ChallengeKind::Http01, "tok-legacy");
    s.present(&p).await.expect("present with class");
    let ings = ing_api.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(ings.len(), 1);
    assert_eq!(
        ings[0]
            .annotations()
            .get("kubernetes.io/ingress.class")
            .map(String::as_str),
        Some("legacy-box")
    );
    assert!(
        ings[0]
            .spec
            .as_ref()
            .is_some_and(|s| s.ingress_class_name.is_none())
    );
    s.cleanup(&p).await.expect("cleanup");
    assert!(
        ing_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    challenges(&ch_api, 0).await;

    // 2. HTTP-01 through ferrite's class: only the Challenge (ferrite-ingress serves from it).
    let s = order(
        &solvers,
        &cert,
        &ns,
        json!([{"http01": {"ingress": {"ingressClassName": "ferrite-box"}}}]),
    )
    .await;
    let p = presented("shop.example.test", false, ChallengeKind::Http01, "tok-ferrite");
    s.present(&p).await.expect("present via ferrite's class");
    let ch = challenges(&ch_api, 1).await.remove(0);
    assert_eq!(ch.spec.ingress_class_name.as_deref(), Some("ferrite-box"));
    assert!(ch.status.as_ref().is_some_and(|s| s.presented));
    assert!(
        ing_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(
        svc_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    s.cleanup(&p).await.expect("cleanup");
    challenges(&ch_api, 0).await;

    // 3. DNS-01 ferriteDNS, chosen by a zone selector over a labels-only HTTP-01 solver: the apex and
    //    its wildcard share one DNSRecord with both values, owned by both Challenges.
    let s = order(
        &solvers,
        &cert,
        &ns,
        json!([
            {"selector": {"matchLabels": {"team": "a"}}, "http01": {"ingress": {"ingressClassName": "nginx-box"}}},
            {"selector": {"dnsZones": ["example.test"]}, "dns01": {"ferriteDNS": {"ttl": 120}}}
        ]),
    )
    .await;
    let apex = presented("example.test", false, ChallengeKind::Dns01, "tok-apex");
    let wild = presented("example.test", true, ChallengeKind::Dns01, "tok-wild");
    assert_eq!(s.choose(&apex.authz), Some(ChallengeKind::Dns01));
    assert_eq!(s.choose(&wild.authz), Some(ChallengeKind::Dns01));
    s.present(&apex).await.expect("present the apex");
    s.present(&wild).await.expect("present the wildcard");
    let chs = challenges(&ch_api, 2).await;
    assert!(chs.iter().all(|c| c.spec.challenge_type == ChallengeType::Dns01));
    assert!(chs.iter().any(|c| c.spec.wildcard));
    let recs = rec_api.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(recs.len(), 1, "one DNSRecord per name");
    let rec = &recs[0];
    assert_eq!(rec.spec.name, "_acme-challenge.example.test");
    assert_eq!(rec.spec.ttl, Some(120));
    let mut want = vec![
        apex.challenge.dns_txt_value.clone(),
        wild.challenge.dns_txt_value.clone(),
    ];
    want.sort();
    let mut got = rec.spec.targets.clone();
    got.sort();
    assert_eq!(got, want);
    for c in &chs {
        assert!(
            owned_by(&rec.metadata, c.meta().uid.as_deref().expect("uid")),
            "owned by {}",
            c.name_any()
        );
    }
    s.cleanup(&apex).await.expect("cleanup the apex");
    let rec = rec_api
        .get(&rec.name_any())
        .await
        .expect("still there for the wildcard");
    assert_eq!(
        rec.spec.targets,
        std::slice::from_ref(&wild.challenge.dns_txt_value)
    );
    s.cleanup(&wild).await.expect("cleanup the wildcard");
    assert!(
        rec_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    challenges(&ch_api, 0).await;

    // 4. DNS-01 rfc2136 into a real named, the TSIG key from a Secret in the issuer's namespace.
    let issuer_ns = kb.namespace("issuer").await;
    let named = Named::start(NamedConfig {
        keys: vec![NamedKey::new(TSIG_KEY, "hmac-sha256", TSIG_SECRET)],
        zones: vec![
            NamedZone::primary("example.test", "").update_policy(&format!("grant {TSIG_KEY} zonesub TXT;")),
        ],
        ..NamedConfig::default()
    })
    .expect("named starts");
    let rfc = json!([{"dns01": {"rfc2136": {
        "nameserver": format!("127.0.0.1:{}", named.port()), "tsigKeyName": TSIG_KEY,
        "tsigSecretSecretRef": {"name": "tsig", "key": "tsig-secret"}, "tsigAlgorithm": "HMACSHA256"}}}]);
    let s = order(&solvers, &cert, &issuer_ns, rfc.clone()).await;
    let p = presented("shop.example.test", false, ChallengeKind::Dns01, "tok-rfc");
    // No Secret yet: the presentation fails and leaves nothing.
    let e = s.present(&p).await.unwrap_err();
    assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
    challenges(&ch_api, 0).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &issuer_ns);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(TSIG_SECRET);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tsig"},
        "stringData": {"tsig-secret": b64}
    }))
    .expect("Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("Secret created");
    s.present(&p).await.expect("present over RFC2136");
    let txt: Vec<String> = named
        .answers("_acme-challenge.shop.example.test.", "TXT")
        .into_iter()
        .map(|v| v.trim_matches('"').to_string())
        .collect();
    assert_eq!(txt, std::slice::from_ref(&p.challenge.dns_txt_value));
    assert!(
        challenges(&ch_api, 1).await[0]
            .status
            .as_ref()
            .is_some_and(|s| s.presented)
    );
    s.cleanup(&p).await.expect("cleanup RFC2136");
    assert!(
        named
            .answers("_acme-challenge.shop.example.test.", "TXT")
            .is_empty()
    );
    challenges(&ch_api, 0).await;

    // 4b. A Challenge left behind by a controller killed mid-order: remove_challenges clears it.
    let s = order(&solvers, &cert, &ns, json!([{"dns01": {"ferriteDNS": {}}}])).await;
    s.present(&presented(
        "shop.example.test",
        false,
        ChallengeKind::Dns01,
        "tok-left",
    ))
    .await
    .expect("present");
    challenges(&ch_api, 1).await;
    ferrite_certs::solvers::remove_challenges(client.clone(), &ns, "shop")
        .await
        .expect("remove leftovers");
    challenges(&ch_api, 0).await;

    // 5. No solver for a name: none chosen (the order then fails with SolverFailed).
    let s = order(
        &solvers,
        &cert,
        &ns,
        json!([{"selector": {"dnsNames": ["other.example.test"]}, "dns01": {"ferriteDNS": {}}}]),
    )
    .await;
    assert_eq!(
        s.choose(&presented("shop.example.test", false, ChallengeKind::Dns01, "t").authz),
        None
    );

    server.abort();
}
