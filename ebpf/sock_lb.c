// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level Service load balancing (cgroup sock_addr hooks): connect4 and sendmsg4 rewrite a
 * Service frontend (VIP:port) to a backend before the socket is connected or the datagram is
 * sent, so no packet is ever NATed; recvmsg4 and getpeername4 map the backend address back to the
 * VIP so applications only ever see the Service address. A destination that is one of this
 * node's addresses (node_addrs4, written by the agent) and matches no frontend is looked up as a
 * NodePort (address 0): NodePort from pods and the node itself never reaches the tc programs.
 * Map layout: skiff/lb.h.
 */
#include "skiff/common.h"
#include "skiff/lb.h"
#include "skiff/lb_maps.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1
#ifndef EADDRINUSE
#define EADDRINUSE 98
#endif
#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif
#define NSEC_PER_SEC 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct lb4_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} revnat4 SEC(".maps");

/* This node's addresses (NodePort addresses): address -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __be32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} node_addrs4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb4_sk_revkey);
	__type(value, struct lb4_sk_revval);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_revnat4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb4_aff_key);
	__type(value, struct lb4_aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} affinity4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} lb_events SEC(".maps");

static __always_inline void emit(__u32 kind, const struct lb4_svc_key *key, __u32 svc_id, __s32 err)
{
	struct lb_event *e = bpf_ringbuf_reserve(&lb_events, sizeof(*e), 0);

	if (!e)
		return; /* ring full: the counters still tell */
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->svc_id = svc_id;
	e->vip = key->vip;
	e->vport = key->port;
	e->proto = key->proto;
	e->pad = 0;
	e->err = err;
	e->pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;

	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
		return (__u8)proto;
	return 0;
}

/* The frontend for ctx's destination, or NULL when it is not a Service. */
static __always_inline struct lb4_svc_val *frontend(struct bpf_sock_addr *ctx, struct lb4_svc_key *key)
{
	struct lb4_svc_val *svc;

	/* Narrow context loads of user_port are rejected: read the whole 32-bit word. */
	volatile __u32 port = ctx->user_port;

	key->vip = ctx->user_ip4;
	key->port = (__be16)port;
	key->proto = sock_proto(ctx);
	key->scope = 0;
	key->slot = 0;
	key->pad = 0;
	if (!key->proto)
		return NULL;
	svc = bpf_map_lookup_elem(&svc4, key);
	if (svc || !bpf_map_lookup_elem(&node_addrs4, &key->vip))
		return svc;
	key->vip = 0; /* a NodePort on one of this node's addresses */
	key->scope = LB4_SCOPE_INTERNAL; /* eTP Local: clients on this node use every endpoint */
	svc = bpf_map_lookup_elem(&svc4, key);
	if (svc)
		return svc;
	key->scope = LB4_SCOPE_EXTERNAL;
	return bpf_map_lookup_elem(&svc4, key);
}

static __always_inline struct lb4_backend *pick(struct bpf_sock_addr *ctx, struct lb4_svc_key *key,
						 const struct lb4_svc_val *svc, __u32 *backend_id)
{
	struct lb4_aff_key akey = {};
	struct lb4_aff_val *aff = NULL;
	struct lb4_svc_val *slot;
	struct lb4_backend *be;
	__u64 now = 0;
	__u32 sel;

	if (svc->flags & LB4_SVC_AFFINITY) {
		now = bpf_ktime_get_ns();
		akey.netns_cookie = bpf_get_netns_cookie(ctx);
		akey.svc_id = svc->id;
		aff = bpf_map_lookup_elem(&affinity4, &akey);
		if (aff && now - aff->last_ns < (__u64)svc->affinity_s * NSEC_PER_SEC &&
		    aff->slot >= 1 && aff->slot <= svc->count) {
			key->slot = aff->slot;
			slot = bpf_map_lookup_elem(&svc4, key);
			/* Still valid only if the slot still names the same backend. */
			if (slot && slot->id == aff->backend_id) {
				be = bpf_map_lookup_elem(&be4, &slot->id);
				if (be && be->state == LB4_BACKEND_ACTIVE) {
					aff->last_ns = now;
					*backend_id = slot->id;
					stat_inc(LB_STAT_AFFINITY_HIT);
					return be;
				}
			}
		}
	}

	/* UDP: one socket always sticks to one backend (a connected UDP socket never moves). */
	sel = key->proto == IPPROTO_UDP ? (__u32)bpf_get_socket_cookie(ctx) : bpf_get_prandom_u32();
	key->slot = (__u16)(sel % svc->count) + 1;
	slot = bpf_map_lookup_elem(&svc4, key);
	if (!slot)
		return NULL;
	be = bpf_map_lookup_elem(&be4, &slot->id);
	if (!be)
		return NULL;
	*backend_id = slot->id;
	if (svc->flags & LB4_SVC_AFFINITY) {
		struct lb4_aff_val val = { .last_ns = now, .backend_id = slot->id, .slot = key->slot };

		bpf_map_update_elem(&affinity4, &akey, &val, BPF_ANY);
	}
	return be;
}

/* connect4 and sendmsg4: rewrite a Service destination to a backend. */
static __always_inline int xlate_fwd(struct bpf_sock_addr *ctx, __u32 stat)
{
	struct lb4_svc_key key;
	__be32 vip = ctx->user_ip4; /* what the application asked for (a node address for NodePort) */
	struct lb4_svc_val *svc = frontend(ctx, &key);
	struct lb4_backend *be;
	__u32 backend_id = 0;
	__be16 vport = key.port;

	if (!svc)
		return SYS_PROCEED;
	if (svc->count == 0) {
		/* As kube-proxy's REJECT: the caller sees ECONNREFUSED. */
		stat_inc(LB_STAT_REFUSED);
		emit(LB_EVENT_REFUSED, &key, svc->id, -ECONNREFUSED);
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	{
		__u32 svc_id = svc->id;

		be = pick(ctx, &key, svc, &backend_id);
		if (!be) {
			/* An update in flight (make-before-break makes this rare): leave it alone. */
			stat_inc(LB_STAT_BACKEND_MISSING);
			emit(LB_EVENT_BACKEND_MISSING, &key, svc_id, 0);
			return SYS_PROCEED;
		}
		{
			struct lb4_sk_revkey rk = {
				.cookie = bpf_get_socket_cookie(ctx),
				.ip = be->ip,
				.port = be->port,
			};
			struct lb4_sk_revval rv = { .vip = vip, .port = vport, .svc_id = svc_id };
			long err = bpf_map_update_elem(&sock_revnat4, &rk, &rv, BPF_ANY);

			if (err) {
				stat_inc(LB_STAT_SKREV_FAIL);
				emit(LB_EVENT_SKREV_FAIL, &key, svc_id, (__s32)err);
			}
		}
		ctx->user_ip4 = be->ip;
		ctx->user_port = (__u32)be->port;
		stat_inc(stat);
	}
	return SYS_PROCEED;
}

/* recvmsg4 and getpeername4: show the Service address instead of the backend's. */
static __always_inline int xlate_rev(struct bpf_sock_addr *ctx)
{
	volatile __u32 port = ctx->user_port;
	struct lb4_sk_revkey rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip = ctx->user_ip4,
		.port = (__be16)port,
	};
	struct lb4_sk_revval *rv = bpf_map_lookup_elem(&sock_revnat4, &rk);
	struct lb4_revnat *rn;

	if (!rv)
		return SYS_PROCEED;
	/* The frontend may have gone (or its id been reused): translate only if it still matches.
	 * A NodePort frontend (address 0) stands for every node address. */
	rn = bpf_map_lookup_elem(&revnat4, &rv->svc_id);
	if (!rn || (rn->vip != rv->vip && rn->vip != 0) || rn->port != rv->port) {
		bpf_map_delete_elem(&sock_revnat4, &rk);
		return SYS_PROCEED;
	}
	ctx->user_ip4 = rv->vip;
	ctx->user_port = (__u32)rv->port;
	stat_inc(LB_STAT_REVNAT);
	return SYS_PROCEED;
}

/* post_bind4: a socket bound to a NodePort on one of this node's addresses would never see its
 * traffic (the socket and tc programs balance it to the backends first), so the bind fails
 * with EADDRINUSE, as if the NodePort were a socket of its own. The wildcard address is let
 * through: these hooks also run for pods, whose 0.0.0.0 is their own network namespace's
 * (Cilium checks for the host namespace there; we have no cookie of it yet). */
static __always_inline int nodeport_bind_guard(struct bpf_sock *ctx)
{
	struct lb4_svc_key key = {};
	__be32 ip = ctx->src_ip4;
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	if (!bpf_map_lookup_elem(&node_addrs4, &ip))
		return SYS_PROCEED;
	key.port = bpf_htons((__u16)ctx->src_port); /* src_port is in host byte order */
	key.proto = (__u8)proto;
	if (!bpf_map_lookup_elem(&svc4, &key))
		return SYS_PROCEED;
	stat_inc(LB_STAT_BIND_REFUSED);
	bpf_set_retval(-EADDRINUSE);
	return SYS_REJECT;
}

SEC("cgroup/post_bind4")
int sock4_post_bind(struct bpf_sock *ctx)
{
	return nodeport_bind_guard(ctx);
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return xlate_fwd(ctx, LB_STAT_CONNECT_XLATE);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return xlate_fwd(ctx, LB_STAT_SENDMSG_XLATE);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return xlate_rev(ctx);
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return xlate_rev(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
