//! ferrite-lb: `type: LoadBalancer` Services on bare metal.
//!
//! ```text
//!   allocator (Deployment, leader-elected)            speaker (DaemonSet, host network, NET_RAW)
//!   ┌──────────────────────────────────┐              ┌────────────────────────────────────────┐
//!   │ IPPools + Services ──> alloc      │  Service     │ Services + Nodes + EndpointSlices      │
//!   │ (pure state machine) ──> status   │ ─status────> │   + member (SWIM gossip: who is alive)  │
//!   │ Events, pool status, metrics      │              │   ──> election (who announces each IP)  │
//!   └──────────────────────────────────┘              │   ──> l2 (ARP / NDP answers, GARP/NA)   │
//!                                                     └────────────────────────────────────────┘
//! ```
//! Pure logic (`addr`, `alloc`, `election`, `l2::packet`, `l2::iface` eligibility) has no I/O and is
//! unit-tested; the I/O lives in `controller`, `speaker`, `member` and `l2`.
#![deny(unsafe_code)]

pub mod addr;
pub mod alloc;
pub mod controller;
pub mod election;
pub mod heartbeat;
pub mod import;
pub mod l2;
pub mod member;
pub mod pacing;
pub mod service;
pub mod speaker;
