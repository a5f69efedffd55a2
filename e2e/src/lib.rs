//! ferrite-e2e: test support for tier-3 tests and the demo.
//!
//! ```ignore
//! let kb = ferrite_e2e::KubeBox::shared();      // one box per test binary, started on first use
//! let ns = kb.namespace("lb").await;            // a fresh namespace
//! let client = kb.client().await;               // admin client
//! let kc = kb.service_account_kubeconfig(&ns, "ferrite-lb").await?; // run as the chart's account
//! ```
#![forbid(unsafe_code)]

pub mod chart;
pub mod demo;
pub mod http;
pub mod kubebox;
pub mod named;
pub mod netlab;
pub mod partition;
pub mod pebble;
pub mod process;
pub mod wait;

pub use http::http_get;
pub use kubebox::{KubeBox, cache_dir, tool};
pub use process::Supervised;
