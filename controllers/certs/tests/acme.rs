//! The ACME layer against a real Pebble + pebble-challtestsrv (Debian's `pebble`) on 127.0.0.1:
//! one Pebble per test binary, shared by the tests, which run in parallel with distinct names.
//! Pebble runs strict, with PEBBLE_VA_NOSLEEP=1, no authorization reuse and its 5% nonce rejection.
// A test binary: a failed unwrap in a helper is a failed test.
#![allow(clippy::unwrap_used)]

use ferrite_certs::acme::{
    AcmeAccount, AcmeError, ChallengeKind, ChallengeSolver, ClientConfig, DriveOptions, Eab,
    NewAccountRequest, OrderRequest, OrderState, Presented, RequestCounts, SelfCheck, USER_AGENT,
    certificate_id,
};
use ferrite_e2e::pebble::{Pebble, PebbleOptions};
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

/// HTTP-01 answers: token -> key authorization, served on Pebble's VA port by a thread.
type Tokens = Arc<Mutex<HashMap<String, String>>>;

struct Fixture {
    pebble: Pebble,
    tokens: Tokens,
    http_port: u16,
}

/// Serves `/.well-known/acme-challenge/<token>` from `tokens` on `listener` (one thread per
/// connection, each bounded by 5 s socket timeouts).
fn serve_tokens(listener: TcpListener, tokens: Tokens) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tokens = tokens.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let answer = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|t| tokens.lock().unwrap().get(t).cloned());
                let rsp = match answer {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    }
                };
                let _ = conn.write_all(rsp.as_bytes());
            });
        }
    });
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP-01 server");
        let http_port = listener.local_addr().unwrap().port();
        let tokens = Tokens::default();
        serve_tokens(listener, tokens.clone());
        let pebble = Pebble::start(PebbleOptions {
            http_port,
            certificate_validity: Some(Duration::from_secs(3600)),
            ..Default::default()
        })
        .expect("start Pebble");
        Fixture {
            pebble,
            tokens,
            http_port,
        }
    })
}

fn config(p: &Pebble, counts: &RequestCounts) -> ClientConfig {
    let mut c = ClientConfig::new(p.directory_url());
    c.ca_bundle = Some(p.ca_pem().to_string());
    c.request_timeout = Duration::from_secs(10);
    c.on_request = Some(counts.hook());
    c
}

fn drive_opts(f: &Fixture) -> DriveOptions {
    DriveOptions {
        self_check: SelfCheck {
            enabled: true,
            timeout: Duration::from_secs(10),
            interval: Duration::from_millis(100),
            http_port: f.http_port,
            http_address: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, f.http_port))),
            // challtestsrv answers TXT but is no zone's authority: ask it directly.
            nameservers: vec![f.pebble.dns_addr()],
            recursive_only: true,
            authoritative_port: 53,
        },
        poll_timeout: Duration::from_secs(30),
        poll_initial_delay: Duration::from_millis(100),
    }
}

/// Solves with `kind` (wildcards always DNS-01), through the fixture's HTTP server and challtestsrv.
struct TestSolver {
    kind: ChallengeKind,
    /// False: present nothing (to see the CA fail the challenge).
    really: bool,
    presented: Mutex<Vec<String>>,
    cleaned: Mutex<Vec<String>>,
}

impl TestSolver {
    fn new(kind: ChallengeKind) -> Self {
        Self {
            kind,
            really: true,
            presented: Mutex::default(),
            cleaned: Mutex::default(),
        }
    }
}

impl ChallengeSolver for TestSolver {
    fn choose(&self, authz: &ferrite_certs::acme::AuthzInfo) -> Option<ChallengeKind> {
        if authz.wildcard {
            Some(ChallengeKind::Dns01)
        } else {
            Some(self.kind.clone())
        }
    }

    async fn present(&self, p: &Presented) -> anyhow::Result<()> {
        let f = fixture();
        self.presented.lock().unwrap().push(p.authz.name());
        if !self.really {
            return Ok(());
        }
        match p.challenge.kind {
            ChallengeKind::Http01 => {
                f.tokens
                    .lock()
                    .unwrap()
                    .insert(p.challenge.token.clone(), p.challenge.key_authorization.clone());
            }
            ChallengeKind::Dns01 => f
                .pebble
                .set_txt(&p.dns_record_name(), &p.challenge.dns_txt_value)?,
            ref k => anyhow::bail!("unexpected challenge {}", k.as_str()),
        }
        Ok(())
    }

    async fn cleanup(&self, p: &Presented) -> anyhow::Result<()> {
        let f = fixture();
        self.cleaned.lock().unwrap().push(p.authz.name());
        match p.challenge.kind {
            ChallengeKind::Http01 => {
                f.tokens.lock().unwrap().remove(&p.challenge.token);
            }
            ChallengeKind::Dns01 => f.pebble.clear_txt(&p.dns_record_name())?,
            _ => {}
        }
        Ok(())
    }
}

fn csr(names: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).unwrap().der().to_vec()
}

async fn new_account(p: &Pebble, counts: &RequestCounts) -> (AcmeAccount, Vec<u8>) {
    AcmeAccount::create(
        &config(p, counts),
        &NewAccountRequest {
            email: Some("certs@example.test".into()),
            eab: None,
        },
    )
    .await
    .expect("create an account")
}

fn order_for(names: &[&str]) -> OrderRequest {
    let mut req = OrderRequest::default();
    for n in names {
        match n.parse::<IpAddr>() {
            Ok(ip) => req.ip_addresses.push(ip),
            Err(_) => req.dns_names.push(n.to_string()),
        }
    }
    req
}

/// `openssl verify` of the chain's leaf against Pebble's root, the chain's rest as intermediates;
/// returns the leaf's text (`openssl x509 -text`).
fn openssl_verify(chain: &str, root: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let leaf_end = chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    std::fs::write(dir.path().join("leaf.pem"), &chain[..leaf_end]).unwrap();
    std::fs::write(dir.path().join("chain.pem"), chain).unwrap();
    std::fs::write(dir.path().join("root.pem"), root).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args(["x509", "-noout", "-text", "-in", "leaf.pem"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&text.stdout).into_owned()
}

/// Issues for `names` with `kind`; checks the chain with openssl and returns it.
async fn issue(names: &[&str], kind: ChallengeKind) -> (String, RequestCounts) {
    let f = fixture();
    let counts = RequestCounts::default();
    let (account, _) = new_account(&f.pebble, &counts).await;
    let mut order = account.new_order(&order_for(names)).await.expect("new order");
    assert_eq!(order.state(), OrderState::Pending);
    let authzs = order.authorizations().await.unwrap();
    assert_eq!(authzs.len(), names.len());
    for a in &authzs {
        let http = a.challenge(&ChallengeKind::Http01);
        let dns = a.challenge(&ChallengeKind::Dns01);
        if a.wildcard {
            assert!(http.is_none(), "no HTTP-01 for a wildcard");
        }
        if let Some(c) = http.or(dns) {
            assert!(c.key_authorization.starts_with(&format!("{}.", c.token)));
        }
    }
    let solver = TestSolver::new(kind);
    let start = Instant::now();
    let chain = order
        .drive(&solver, &csr(names), &drive_opts(f))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "issuing {names:?}: {e} ({})\n{}",
                e.reason(),
                f.pebble.log_tail(20)
            )
        });
    let took = start.elapsed();
    assert_eq!(order.state(), OrderState::Valid);
    assert!(
        chain.matches("BEGIN CERTIFICATE").count() >= 2,
        "full chain: {chain}"
    );
    let text = openssl_verify(&chain, &f.pebble.root_pem().unwrap());
    for n in names {
        let needle = match n.parse::<IpAddr>() {
            Ok(ip) => format!("IP Address:{ip}"),
            Err(_) => format!("DNS:{n}"),
        };
        assert!(text.contains(&needle), "{needle} missing from\n{text}");
    }
    let mut presented = solver.presented.lock().unwrap().clone();
    let mut cleaned = solver.cleaned.lock().unwrap().clone();
    presented.sort();
    cleaned.sort();
    assert_eq!(presented, cleaned, "every presented challenge cleaned up");
    eprintln!(
        "issued {names:?} in {took:?} with {} ACME requests (account included): {:?}",
        counts.total(),
        counts.snapshot()
    );
    (chain, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_create_and_reload_from_bytes() {
    let f = fixture();
    let counts = RequestCounts::default();
    let (account, bytes) = new_account(&f.pebble, &counts).await;
    assert!(account.uri().starts_with("https://"), "{}", account.uri());
    assert!(counts.endpoint("newAccount") >= 1);
    let reloaded = AcmeAccount::load(&config(&f.pebble, &counts), &bytes)
        .await
        .unwrap();
    assert_eq!(reloaded.uri(), account.uri());
    // Debian's Pebble 2.4 offers no profiles.
    assert!(reloaded.profiles().is_empty());

    let mut other = config(&f.pebble, &counts);
    other.directory_url = "https://127.0.0.1:1/dir".into();
    let e = AcmeAccount::load(&other, &bytes).await.unwrap_err();
    assert_eq!(e.reason(), "InvalidInput", "{e}");
    let e = AcmeAccount::load(&config(&f.pebble, &counts), b"not json")
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "InvalidInput", "{e}");
    let e = AcmeAccount::create(
        &config(&f.pebble, &counts),
        &NewAccountRequest {
            email: Some("no-at-sign".into()),
            eab: None,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.reason(), "InvalidInput");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_chain_verifies_with_openssl() {
    let (_, counts) = issue(&["http01.example.test"], ChallengeKind::Http01).await;
    for endpoint in [
        "directory",
        "newNonce",
        "newAccount",
        "newOrder",
        "authz",
        "challenge",
        "finalize",
        "certificate",
    ] {
        assert!(
            counts.endpoint(endpoint) >= 1,
            "no {endpoint} request: {:?}",
            counts.snapshot()
        );
    }
    assert_eq!(counts.endpoint("other"), 0, "{:?}", counts.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_issuance_via_challtestsrv() {
    issue(&["dns01.example.test"], ChallengeKind::Dns01).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_by_dns01_with_its_base_name_by_http01() {
    issue(
        &["*.wild.example.test", "wild.example.test"],
        ChallengeKind::Http01,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_name_with_an_ip_address() {
    issue(
        &[
            "a.multi.example.test",
            "b.multi.example.test",
            "c.multi.example.test",
            "127.0.0.1",
        ],
        ChallengeKind::Http01,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_resumed_by_url_after_the_client_is_gone() {
    let f = fixture();
    let counts = RequestCounts::default();
    let (account, creds) = new_account(&f.pebble, &counts).await;
    let names = ["resume.example.test"];
    let url = {
        let order = account.new_order(&order_for(&names)).await.unwrap();
        order.url().to_string()
    };
    drop(account);

    // "Restart": a new client from the Secret's bytes and the URL from status.
    let counts2 = RequestCounts::default();
    let account = AcmeAccount::load(&config(&f.pebble, &counts2), &creds)
        .await
        .unwrap();
    let mut order = account.resume_order(&url).await.unwrap();
    assert_eq!(order.url(), url);
    assert_eq!(order.state(), OrderState::Pending);
    let chain = order
        .drive(
            &TestSolver::new(ChallengeKind::Http01),
            &csr(&names),
            &drive_opts(f),
        )
        .await
        .unwrap();
    assert_eq!(
        counts2.endpoint("newOrder"),
        0,
        "resumed, not re-ordered: {:?}",
        counts2.snapshot()
    );
    openssl_verify(&chain, &f.pebble.root_pem().unwrap());

    // A valid order resumed again hands out the same chain without new challenges.
    let mut again = account.resume_order(&url).await.unwrap();
    assert_eq!(again.state(), OrderState::Valid);
    let solver = TestSolver::new(ChallengeKind::Http01);
    let chain2 = again.drive(&solver, &csr(&names), &drive_opts(f)).await.unwrap();
    assert_eq!(chain, chain2);
    assert!(solver.presented.lock().unwrap().is_empty());

    let e = account.resume_order("not a url").await.unwrap_err();
    assert_eq!(e.reason(), "InvalidInput");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_falls_back_on_a_ca_without_renewal_info() {
    let f = fixture();
    let (chain, _) = issue(&["ari.example.test"], ChallengeKind::Http01).await;
    let id = certificate_id(chain.as_bytes()).unwrap();
    let (aki, serial) = id.split_once('.').expect("aki.serial");
    assert!(!aki.is_empty() && !serial.is_empty());
    assert!(certificate_id(b"garbage").is_err());

    let counts = RequestCounts::default();
    let (account, _) = new_account(&f.pebble, &counts).await;
    // Debian's Pebble 2.4 has no renewalInfo in its directory: no window, and `replaces` is dropped.
    assert!(!account.supports_ari());
    assert_eq!(account.renewal_info(&id).await.unwrap(), None);
    let mut req = order_for(&["ari.example.test"]);
    req.replaces = Some(id);
    let mut order = account.new_order(&req).await.unwrap();
    assert!(order.replaces_dropped());
    assert_eq!(order.replaces(), None);
    assert_eq!(counts.endpoint("renewalInfo"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_challenge_and_self_check_are_typed() {
    let f = fixture();
    let counts = RequestCounts::default();
    let (account, _) = new_account(&f.pebble, &counts).await;

    // Nothing served, self-check on: our check fails first, and the CA is never asked.
    let mut order = account
        .new_order(&order_for(&["nothing.example.test"]))
        .await
        .unwrap();
    let mut solver = TestSolver::new(ChallengeKind::Http01);
    solver.really = false;
    let mut opts = drive_opts(f);
    opts.self_check.timeout = Duration::from_millis(500);
    let e = order
        .drive(&solver, &csr(&["nothing.example.test"]), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "SelfCheckFailed", "{e}");
    assert!(e.message().contains("404"), "{}", e.message());
    assert_eq!(
        solver.cleaned.lock().unwrap().len(),
        1,
        "cleaned up after a failure"
    );
    assert_eq!(counts.endpoint("challenge"), 0);

    // Self-check skipped: the CA fails the challenge; its problem document is the message.
    let mut order = account
        .new_order(&order_for(&["nothing2.example.test"]))
        .await
        .unwrap();
    opts.self_check.enabled = false;
    let e = order
        .drive(&solver, &csr(&["nothing2.example.test"]), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "ChallengeFailed", "{e}");
    let msg = e.message();
    assert!(msg.contains("nothing2.example.test"), "{msg}");
    assert!(msg.chars().count() <= 2 * ferrite_certs::acme::MAX_MESSAGE);
    assert!(!msg.chars().any(char::is_control));
    assert_eq!(order.refresh().await.unwrap(), OrderState::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_identifier_comes_from_the_problem_document() {
    let f = fixture();
    let counts = RequestCounts::default();
    let (account, _) = new_account(&f.pebble, &counts).await;
    let e = account
        .new_order(&order_for(&["bad_name..example.test"]))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "Rejected", "{e}");
    let msg = e.message();
    assert!(
        msg.contains("rejectedIdentifier") || msg.contains("malformed"),
        "problem type in {msg}"
    );
    assert!(msg.chars().count() <= 2 * ferrite_certs::acme::MAX_MESSAGE);
    let e = account.new_order(&OrderRequest::default()).await.unwrap_err();
    assert_eq!(e.reason(), "InvalidInput");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trust_choices() {
    let f = fixture();
    let counts = RequestCounts::default();
    // System roots do not trust Pebble's test CA.
    let mut c = config(&f.pebble, &counts);
    c.ca_bundle = None;
    let e = AcmeAccount::create(&c, &NewAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "AcmeUnreachable", "{e}");
    // skipTLSVerify works against it.
    c.skip_tls_verify = true;
    AcmeAccount::create(&c, &NewAccountRequest::default())
        .await
        .unwrap();
    // A caBundle that is not PEM is bad input.
    let mut c = config(&f.pebble, &counts);
    c.ca_bundle = Some("not pem".into());
    let e = AcmeAccount::create(&c, &NewAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "InvalidInput", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eab_required_wrong_key_is_typed_right_key_works() {
    use base64::Engine as _;
    let hmac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let wrong = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([8u8; 32]);
    let pebble = tokio::task::spawn_blocking(move || {
        Pebble::start(PebbleOptions {
            eab: Some(("kid-ferrite".into(), hmac)),
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .expect("start the EAB Pebble");
    let (kid, hmac) = pebble.eab().unwrap();
    let counts = RequestCounts::default();
    let c = config(&pebble, &counts);

    let e = AcmeAccount::create(&c, &NewAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "Unauthorized", "no EAB: {e}");
    let e = AcmeAccount::create(
        &c,
        &NewAccountRequest {
            email: None,
            eab: Some(Eab {
                key_id: kid.into(),
                hmac_key_b64url: wrong,
            }),
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e.reason(), "Unauthorized" | "Rejected"),
        "wrong EAB key: {e} ({})",
        e.reason()
    );
    eprintln!("wrong EAB key: {} / {}", e.reason(), e.message());
    let e = AcmeAccount::create(
        &c,
        &NewAccountRequest {
            email: None,
            eab: Some(Eab {
                key_id: kid.into(),
                hmac_key_b64url: "!!not base64!!".into(),
            }),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.reason(), "InvalidInput");
    let (account, _) = AcmeAccount::create(
        &c,
        &NewAccountRequest {
            email: Some("eab@example.test".into()),
            eab: Some(Eab {
                key_id: kid.into(),
                hmac_key_b64url: hmac.into(),
            }),
        },
    )
    .await
    .expect("right EAB key");
    assert!(account.uri().starts_with("https://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_unreachable_before_and_mid_order() {
    let counts = RequestCounts::default();
    let port = ferrite_e2e::process::free_port().unwrap();
    let c = ClientConfig {
        request_timeout: Duration::from_secs(3),
        on_request: Some(counts.hook()),
        ..ClientConfig::new(format!("https://127.0.0.1:{port}/dir"))
    };
    let e = AcmeAccount::create(&c, &NewAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "AcmeUnreachable", "{e}");
    assert!(e.is_transient());
    assert_eq!(
        counts.snapshot().get(&("directory".into(), "error".into())),
        Some(&1)
    );

    // Mid-order: the CA goes away after the order was placed.
    let mut pebble = tokio::task::spawn_blocking(|| Pebble::start(PebbleOptions::default()))
        .await
        .unwrap()
        .expect("start Pebble");
    let (account, _) = new_account(&pebble, &counts).await;
    let mut order = account
        .new_order(&order_for(&["down.example.test"]))
        .await
        .unwrap();
    let url = order.url().to_string();
    pebble.stop();
    let e = order.refresh().await.unwrap_err();
    assert_eq!(e.reason(), "AcmeUnreachable", "{e}");
    let e = account.resume_order(&url).await.unwrap_err();
    assert_eq!(e.reason(), "AcmeUnreachable", "{e}");
}

/// A fake CA over plain HTTP: a directory, nonces, and newAccount answering 429 with Retry-After
/// and a problem document; `/html-dir` answers 500 with an HTML page. Records User-Agents.
fn fake_ca() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let agents = Arc::new(Mutex::new(Vec::new()));
    let seen = agents.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                buf.extend_from_slice(&chunk[..n]);
                                continue;
                            }
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + len);
                    if let Some(ua) = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("user-agent:")
                            .then(|| l[11..].trim().to_string())
                    }) {
                        seen.lock().unwrap().push(ua);
                    }
                    let mut parts = head.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let base = format!("http://{addr}");
                    let (status, ctype, extra, body) = match (method, path) {
                        ("GET", "/dir") => (
                            "200 OK",
                            "application/json",
                            String::new(),
                            format!(
                                r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/acct","newOrder":"{base}/order","revokeCert":"{base}/revoke","keyChange":"{base}/key"}}"#
                            ),
                        ),
                        ("GET", "/html-dir") => (
                            "500 Internal Server Error",
                            "text/html",
                            String::new(),
                            "<html>SECRET internal stack trace\u{1b}[31m</html>".to_string(),
                        ),
                        ("GET", "/limited-dir") => (
                            "429 Too Many Requests",
                            "text/plain",
                            "Retry-After: 9\r\n".to_string(),
                            "slow".to_string(),
                        ),
                        ("HEAD", "/nonce") => (
                            "200 OK",
                            "text/plain",
                            "Replay-Nonce: abc\r\n".to_string(),
                            String::new(),
                        ),
                        ("POST", "/acct") => (
                            "429 Too Many Requests",
                            "application/problem+json",
                            "Retry-After: 7\r\nReplay-Nonce: def\r\n".to_string(),
                            format!(
                                r#"{{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new accounts\n{}","status":429}}"#,
                                "x".repeat(2000)
                            ),
                        ),
                        // A CA with ARI: the account is created, renewalInfo answers a window.
                        ("GET", "/ari-dir") => (
                            "200 OK",
                            "application/json",
                            String::new(),
                            format!(
                                r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/acct-ok","newOrder":"{base}/order","renewalInfo":"{base}/ari"}}"#
                            ),
                        ),
                        ("POST", "/acct-ok") => (
                            "201 Created",
                            "application/json",
                            format!("Location: {base}/acct/1\r\nReplay-Nonce: ghi\r\n"),
                            r#"{"status":"valid"}"#.to_string(),
                        ),
                        ("GET", p) if p.starts_with("/ari/") => (
                            "200 OK",
                            "application/json",
                            "Retry-After: 3600\r\n".to_string(),
                            r#"{"suggestedWindow":{"start":"2030-01-01T00:00:00Z","end":"2030-01-02T00:00:00Z"},"explanationURL":"https://ca.example/why"}"#.to_string(),
                        ),
                        _ => ("404 Not Found", "text/plain", String::new(), String::new()),
                    };
                    let body_len = if method == "HEAD" { 0 } else { body.len() };
                    let rsp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {body_len}\r\n{extra}\r\n{}",
                        if method == "HEAD" { "" } else { &body }
                    );
                    if conn.write_all(rsp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_untrusted_bodies_and_ari_on_a_fake_ca() {
    let (addr, agents) = fake_ca();
    let counts = RequestCounts::default();
    let cfg = |path: &str| ClientConfig {
        request_timeout: Duration::from_secs(5),
        on_request: Some(counts.hook()),
        ..ClientConfig::new(format!("http://{addr}{path}"))
    };

    // 429 with a problem document and Retry-After on newAccount.
    let e = AcmeAccount::create(&cfg("/dir"), &NewAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "RateLimited", "{e}");
    let after = e.retry_after().expect("Retry-After kept");
    assert!(
        after <= Duration::from_secs(7) && after >= Duration::from_secs(5),
        "{after:?}"
    );
    let msg = e.message();
    assert!(msg.contains("rateLimited: too many new accounts"), "{msg}");
    assert!(
        msg.chars().count() <= 2 * ferrite_certs::acme::MAX_MESSAGE,
        "{}",
        msg.len()
    );
    assert!(!msg.chars().any(char::is_control));
    assert_eq!(
        counts.snapshot().get(&("newAccount".into(), "429".into())),
        Some(&1)
    );

    // 429 on the directory, no problem document.
    let e = AcmeAccount::create(&cfg("/limited-dir"), &NewAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "RateLimited", "{e}");
    assert!(
        e.retry_after()
            .is_some_and(|d| d <= Duration::from_secs(9) && d >= Duration::from_secs(7))
    );

    // An HTML error page is never reflected: only the status code.
    let e = AcmeAccount::create(&cfg("/html-dir"), &NewAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "AcmeUnreachable", "{e}");
    assert!(e.message().contains("HTTP 500"), "{}", e.message());
    assert!(!e.message().contains("SECRET"), "{}", e.message());

    // A CA that offers ARI: the suggested window and when to ask again.
    let (account, _) = AcmeAccount::create(&cfg("/ari-dir"), &NewAccountRequest::default())
        .await
        .unwrap();
    assert!(account.supports_ari());
    let w = account
        .renewal_info("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        .await
        .unwrap()
        .expect("a window");
    assert_eq!(
        w.start,
        "2030-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap()
    );
    assert_eq!(w.end, "2030-01-02T00:00:00Z".parse::<jiff::Timestamp>().unwrap());
    assert!(w.retry_after > Duration::from_secs(3500), "{:?}", w.retry_after);
    assert_eq!(w.explanation_url.as_deref(), Some("https://ca.example/why"));
    assert_eq!(counts.endpoint("renewalInfo"), 1);
    let e = account.renewal_info("not-an-id").await.unwrap_err();
    assert_eq!(e.reason(), "InvalidInput");

    let agents = agents.lock().unwrap();
    assert!(!agents.is_empty());
    assert!(agents.iter().all(|a| a == USER_AGENT), "{agents:?}");
    assert!(USER_AGENT.starts_with("ferrite-certs/"));
}

#[test]
fn errors_have_reasons() {
    let e = AcmeError::RateLimited {
        retry_after: Some(Duration::from_secs(3)),
        message: "x".into(),
    };
    assert_eq!(e.reason(), "RateLimited");
    assert!(e.message().contains("retry after 3s"));
}
