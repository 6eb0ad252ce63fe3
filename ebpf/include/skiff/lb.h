/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service load-balancer map layout (IPv4), shared by the socket-LB programs (sock_lb.c) and the
 * agent. Every struct here has a #[repr(C)] mirror with a size assertion in
 * agent/src/kernel/bpf_lb.rs; change both together and bump SKIFF_LB_LAYOUT (the pin directory
 * is versioned by it, because aya reuses a pinned map without checking its layout).
 * Addresses and ports are in network byte order everywhere. Padding is always zero: hash maps
 * compare raw key bytes.
 */
#ifndef SKIFF_LB_H
#define SKIFF_LB_H

#include <linux/types.h>

#define SKIFF_LB_LAYOUT 2

/* svc4 key: slot 0 is the frontend, slots 1..count hold backend ids. */
struct lb4_svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 scope; /* lb4_scope */
	__u16 slot;
	__u16 pad;
};

enum lb4_scope {
	LB4_SCOPE_EXTERNAL = 0,
	/* A NodePort (address 0) of an externalTrafficPolicy: Local Service for clients on this
	 * node (socket LB): every endpoint, where the external frontend names only local ones. */
	LB4_SCOPE_INTERNAL = 1,
};

enum lb4_svc_flags {
	LB4_SVC_AFFINITY = 1 << 0, /* ClientIP session affinity; affinity_s holds the timeout */
	LB4_SVC_MAGLEV = 1 << 1, /* per-packet path: backend from the Maglev table, not random */
};

/* Maglev lookup table size (prime); "maglev4" maps a service id to M backend ids. */
#define LB4_MAGLEV_M 1021

struct lb4_maglev_row {
	__u32 backend_ids[LB4_MAGLEV_M];
};

struct lb4_svc_val {
	__u32 id; /* slot 0: service (frontend) id = revnat4 key; slot i: backend id */
	__u16 count; /* slot 0: number of backend slots; 0 = refuse */
	__u16 flags; /* slot 0: lb4_svc_flags */
	__u32 affinity_s; /* slot 0: affinity timeout in seconds */
};

enum lb4_backend_state {
	LB4_BACKEND_ACTIVE = 0,
	LB4_BACKEND_TERMINATING = 1, /* kept for existing flows, in no slot */
};

enum lb4_backend_flags {
	/* Not on this node (EndpointSlice nodeName is another node, or unknown): NodePort traffic
	 * to it from outside is SNATed to the node, so the reply comes back through this node. */
	LB4_BACKEND_F_REMOTE = 1 << 0,
};

struct lb4_backend {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 state; /* lb4_backend_state */
	__u8 flags; /* lb4_backend_flags */
	__u8 pad[3];
};

struct lb4_revnat {
	__be32 vip;
	__be16 port;
	__u16 pad;
};

/* Socket reverse NAT: which frontend a socket's backend address stands for. */
struct lb4_sk_revkey {
	__u64 cookie;
	__be32 ip;
	__be16 port;
	__u16 pad;
};

struct lb4_sk_revval {
	__be32 vip;
	__be16 port;
	__u16 pad;
	__u32 svc_id;
};

/* ClientIP affinity at socket level: the client identity is the network namespace cookie. */
struct lb4_aff_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};

struct lb4_aff_val {
	__u64 last_ns; /* bpf_ktime_get_ns() of the last use */
	__u32 backend_id;
	__u16 slot;
	__u16 pad;
};

/* Per-CPU counters (PERCPU_ARRAY "lb_stats"); the agent names them in its metrics. */
enum lb_stat {
	LB_STAT_CONNECT_XLATE = 0,
	LB_STAT_SENDMSG_XLATE = 1,
	LB_STAT_REFUSED = 2,
	LB_STAT_REVNAT = 3,
	LB_STAT_BACKEND_MISSING = 4,
	LB_STAT_AFFINITY_HIT = 5,
	LB_STAT_SKREV_FAIL = 6,
	LB_STAT_NODEPORT_NEW = 7, /* tc: new NodePort flows */
	LB_STAT_SNAT = 8, /* tc: SNAT ports chosen (flows to backends on other nodes) */
	LB_STAT_SNAT_FAIL = 9, /* tc: no free SNAT port found: packet dropped */
	LB_STAT_BIND_REFUSED = 10, /* post_bind4: bind to a NodePort refused */
	LB_STAT_MAX = 11,
};

enum lb_event_kind {
	LB_EVENT_REFUSED = 1, /* frontend without backends: connect/sendmsg refused */
	LB_EVENT_BACKEND_MISSING = 2, /* a slot names a backend id absent from be4 */
	LB_EVENT_SKREV_FAIL = 3, /* sock_revnat4 update failed */
};

/* Fixed-size record in the "lb_events" ring buffer. */
struct lb_event {
	__u64 ts_ns;
	__u32 kind;
	__u32 svc_id;
	__be32 vip;
	__be16 vport;
	__u8 proto;
	__u8 pad;
	__s32 err;
	__u32 pad2;
};

#endif /* SKIFF_LB_H */
