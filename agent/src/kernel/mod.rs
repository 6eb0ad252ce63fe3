//! The agent's one seam to the kernel: network namespaces ([`netns`]), links, addresses and routes
//! ([`link`]), and eBPF programs and maps ([`bpf`]).
//!
//! Everything above this module talks to these types, never to syscalls, `ip` or aya directly, so
//! the seam can be faked in unit tests of the layers above. `unsafe` is allowed only here, item by
//! item, each with a `SAFETY:` comment.

pub mod bpf;
pub mod bpf_lb;
pub mod iptables;
pub mod link;
pub mod netns;
