//! What the `layerpager` command is built from, apart from the pager itself:
//! a policy simulator, synthetic llama-shaped models, demo workloads that run
//! forward passes and measure them, a seeded MoE routing generator, the
//! routing traces engines record, and
//! memory cgroups to measure under a kernel limit. No
//! engine needs any of this; the library crate `layerpager` carries only the
//! pager.

#![warn(missing_docs)]

pub mod cgroup;
pub mod moe;
pub mod routing_trace;
pub mod sim;
pub mod synth;
pub mod workload;
