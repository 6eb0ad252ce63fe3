//! The Skiff node agent: a kubelet that runs pods through CRI (containerd + runc) and cgroups, the
//! `skiff-cni` plugin for pod networking, and the Service proxy (eBPF programs or iptables rules).
//!
//! Today it holds the kernel seam ([`kernel`]: network namespaces, links, the eBPF loader) and the
//! configuration of its private containerd ([`containerd`]). The kubelet, CNI and proxy arrive
//! with their issues.

pub mod containerd;
pub mod kernel;
pub mod proxy;
