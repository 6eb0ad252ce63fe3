// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Per-packet NodePort load balancing in tc (tcx), for traffic that does not start at a local
 * socket. Both programs are attached to each node interface (ingress and egress), loaded once
 * per interface with NODE_IP = that interface's address; they share every map.
 *
 * `nodeport_in` (ingress):
 *  - a TCP/UDP packet to NODE_IP:nodePort is matched against the NodePort frontends of svc4
 *    (key address 0); a backend is chosen once per flow and remembered in the ct4 LRU map
 *    (CT_FORWARD), and the packet is DNATed to it. A new flow also records its reply tuple
 *    (CT_REPLY) and, when the backend is on another node (LB4_BACKEND_F_REMOTE), a CT_SNAT
 *    entry for the egress program. externalTrafficPolicy: Local frontends name only local
 *    backends, so their flows are never SNATed and the backend sees the client address.
 *  - a reply of an SNATed flow (to NODE_IP:snat port, CT_UNSNAT) gets its destination
 *    rewritten back to the client; the stack then forwards it towards the client.
 * `nodeport_out` (egress):
 *  - a reply of a tracked flow (backend -> client, CT_REPLY) gets its source rewritten to
 *    NODE_IP:nodePort (reverse NAT). On egress, not ingress: a forwarded packet with the
 *    node's own source address would be dropped by the stack as martian.
 *  - a forwarded packet of a flow with a CT_SNAT entry gets its source rewritten to
 *    NODE_IP:port, NODE_IP being the address of the interface it leaves by. The port is chosen
 *    on the flow's first packet from SNAT_PORT_MIN..SNAT_PORT_MAX so that (backend, NODE_IP,
 *    port) is unique: the CT_UNSNAT entry is inserted with BPF_NOEXIST. The range lies above
 *    Linux's default ephemeral ports (32768-60999), away from the node's own connections.
 * L3 and L4 checksums are fixed with the kernel helpers. Entries are refreshed per packet and
 * removed by the agent's GC after an idle time (or evicted by the LRU).
 */
#include "skiff/common.h"
#include "skiff/lb.h"
#include "skiff/lb_maps.h"

#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>

volatile const __be32 NODE_IP = 0;

struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 flags; /* enum ct_dir */
	__u16 pad;
};

enum ct_dir {
	CT_FORWARD = 0, /* client -> NODE_IP:nodePort; value: backend */
	CT_REPLY = 1, /* backend -> client; value: node address and nodePort to restore */
	CT_SNAT = 2, /* client -> backend (after DNAT); value: SNAT address and port, 0 until chosen */
	CT_UNSNAT = 3, /* backend -> SNAT address:port; value: client address and port */
};

#define SNAT_PORT_MIN 61000
#define SNAT_PORT_MAX 65535
#define SNAT_TRIES 32

/* ct4_val.flags */
#define CT_F_SNAT 1 /* CT_FORWARD of a flow to a remote backend: it has a CT_SNAT entry */

struct ct4_val {
	__be32 addr; /* see enum ct_dir */
	__be16 port;
	__u16 flags; /* CT_F_* */
	__u32 svc_id;
	__u32 backend_id; /* CT_FORWARD: be4 key of the backend (was padding: 0 in older entries) */
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct4_key);
	__type(value, struct ct4_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct4 SEC(".maps");

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))

struct flow {
	__be32 saddr, daddr;
	__be16 sport, dport;
	__u8 proto;
	__u8 syn; /* TCP SYN without ACK: a new connection */
	__u32 l4_off;
	__u32 csum_off;
};

static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__be16 *ports;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff))
		return -1; /* fragments are left alone */
	f->proto = ip->protocol;
	if (f->proto == IPPROTO_TCP)
		f->csum_off = offsetof(struct tcphdr, check);
	else if (f->proto == IPPROTO_UDP)
		f->csum_off = offsetof(struct udphdr, check);
	else
		return -1;
	ports = (void *)(ip + 1);
	if ((void *)(ports + 2) > data_end)
		return -1;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->sport = ports[0];
	f->dport = ports[1];
	if (f->proto == IPPROTO_TCP && (void *)ports + offsetof(struct tcphdr, window) <= data_end) {
		__u8 flags = *((__u8 *)ports + 13); /* the byte with FIN SYN RST PSH ACK URG */

		f->syn = (flags & 0x12) == 0x02;
	}
	f->l4_off = ETH_HLEN + sizeof(struct iphdr);
	return 0;
}

/* Rewrites the address at `ip_off` and the port at `port_off` (both in the packet), fixing the
 * IPv4 header checksum and the L4 checksum (pseudo-header included). */
static __always_inline int rewrite(struct __sk_buff *skb, const struct flow *f, __u32 ip_off, __be32 old_ip,
				   __be32 new_ip, __u32 port_off, __be16 old_port, __be16 new_port)
{
	__u64 mangled = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 l4_csum = f->l4_off + f->csum_off;

	if (bpf_l4_csum_replace(skb, l4_csum, old_ip, new_ip, BPF_F_PSEUDO_HDR | sizeof(new_ip) | mangled))
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, sizeof(new_ip)))
		return -1;
	if (bpf_skb_store_bytes(skb, ip_off, &new_ip, sizeof(new_ip), 0))
		return -1;
	if (bpf_l4_csum_replace(skb, l4_csum, old_port, new_port, sizeof(new_port) | mangled))
		return -1;
	if (bpf_skb_store_bytes(skb, f->l4_off + port_off, &new_port, sizeof(new_port), 0))
		return -1;
	return 0;
}

/* A per-flow hash that is the same on every node (no per-boot seed). */
static __always_inline __u32 flow_hash(const struct flow *f)
{
	__u64 h = ((__u64)f->saddr << 32) | f->daddr;

	h ^= (((__u64)f->sport << 24) | ((__u64)f->dport << 8) | f->proto) * 0x9e3779b97f4a7c15ULL;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (__u32)h;
}

static __always_inline void ct_key(struct ct4_key *key, const struct flow *f, __u8 dir)
{
	key->saddr = f->saddr;
	key->daddr = f->daddr;
	key->sport = f->sport;
	key->dport = f->dport;
	key->proto = f->proto;
	key->flags = dir;
	key->pad = 0;
}

/* Refreshes the entry at `key` (another direction of the flow a packet belongs to), so the
 * agent's idle GC removes a flow's entries only when it is idle both ways. */
static __always_inline void ct_touch(const struct ct4_key *key, __u64 now)
{
	struct ct4_val *v = bpf_map_lookup_elem(&ct4, key);

	if (v)
		v->last_ns = now;
}

/* A reply to an SNATed flow (backend -> NODE_IP:snat port): destination back to the client. */
static __always_inline int unsnat(struct __sk_buff *skb, const struct flow *f)
{
	struct ct4_key key = {};
	struct ct4_val *ct;
	__u64 now = bpf_ktime_get_ns();

	ct_key(&key, f, CT_UNSNAT);
	ct = bpf_map_lookup_elem(&ct4, &key);
	if (!ct)
		return SKIFF_TCX_NEXT;
	ct->last_ns = now;
	{
		/* The flow's CT_SNAT entry (client -> backend), refreshed by its replies too. */
		struct ct4_key sk = { .saddr = ct->addr, .daddr = f->saddr, .sport = ct->port, .dport = f->sport,
				      .proto = f->proto, .flags = CT_SNAT };

		ct_touch(&sk, now);
	}
	if (rewrite(skb, f, IP_DST_OFF, f->daddr, ct->addr, offsetof(struct tcphdr, dest), f->dport, ct->port))
		return SKIFF_TCX_DROP;
	return SKIFF_TCX_NEXT;
}

/* An established flow (its CT_FORWARD entry `fwd` found): refreshes its CT_REPLY entry and
 * puts back the CT_REPLY and CT_SNAT entries if the LRU evicted them (or the GC removed them
 * while the flow was idle the other way); without them replies would leave with the backend
 * address, and requests to a remote backend without SNAT. A re-created CT_SNAT entry gets a
 * new port on egress (a TCP flow then ends with a reset from the backend; UDP carries on). */
static __always_inline void ct_restore(const struct flow *f, const struct ct4_val *fwd, __u64 now)
{
	struct ct4_key rk = { .saddr = fwd->addr, .daddr = f->saddr, .sport = fwd->port, .dport = f->sport,
			      .proto = f->proto, .flags = CT_REPLY };
	struct ct4_val *r = bpf_map_lookup_elem(&ct4, &rk);

	if (r) {
		r->last_ns = now;
	} else {
		struct ct4_val rv = { .addr = f->daddr, .port = f->dport, .svc_id = fwd->svc_id, .last_ns = now };

		bpf_map_update_elem(&ct4, &rk, &rv, BPF_NOEXIST);
	}
	if (fwd->flags & CT_F_SNAT) {
		struct ct4_key snk = { .saddr = f->saddr, .daddr = fwd->addr, .sport = f->sport, .dport = fwd->port,
				       .proto = f->proto, .flags = CT_SNAT };

		if (!bpf_map_lookup_elem(&ct4, &snk)) {
			struct ct4_val snv = { .svc_id = fwd->svc_id, .last_ns = now };

			bpf_map_update_elem(&ct4, &snk, &snv, BPF_NOEXIST);
		}
	}
}

static __always_inline int nodeport_forward(struct __sk_buff *skb)
{
	struct flow f = {};
	struct ct4_key key = {};
	struct ct4_val *ct, val = {};
	struct lb4_svc_key sk = {};
	struct lb4_svc_val *svc, *slot;
	struct lb4_backend *be;

	if (parse(skb, &f) || f.daddr != NODE_IP)
		return SKIFF_TCX_NEXT;
	if (bpf_ntohs(f.dport) >= SNAT_PORT_MIN)
		return unsnat(skb, &f); /* NodePorts are below 32768: never ambiguous */
	sk.vip = 0;
	sk.port = f.dport;
	sk.proto = f.proto;
	svc = bpf_map_lookup_elem(&svc4, &sk);
	if (!svc)
		return SKIFF_TCX_NEXT;
	ct_key(&key, &f, CT_FORWARD);
	ct = bpf_map_lookup_elem(&ct4, &key);
	if (ct && (f.syn || f.proto == IPPROTO_UDP)) {
		/* A new connection on the tuple of an earlier one (the client reused its port) keeps
		 * that backend only while it is still there and active; a UDP flow (no connection to
		 * keep, as kube-proxy deletes the conntrack entries of a removed UDP endpoint) only
		 * while it is there. Else the flow chooses anew: without this it would go to a removed
		 * endpoint until the entry idles out. */
		be = bpf_map_lookup_elem(&be4, &ct->backend_id);
		if (!be || be->ip != ct->addr || be->port != ct->port ||
		    (f.syn && be->state != LB4_BACKEND_ACTIVE))
			ct = NULL;
	}
	if (ct) {
		__u64 now = bpf_ktime_get_ns();

		ct->last_ns = now; /* idle time for the agent's GC */
		val = *ct;
		ct_restore(&f, &val, now);
	} else {
		if (svc->count == 0)
			return SKIFF_TCX_DROP; /* no endpoints */
		if (svc->flags & LB4_SVC_MAGLEV) {
			__u32 svc_id = svc->id;
			struct lb4_maglev_row *row = bpf_map_lookup_elem(&maglev4, &svc_id);
			__u32 idx = flow_hash(&f) % LB4_MAGLEV_M;

			/* clang drops a bound it can prove; the verifier needs to see it: hide idx. */
			asm volatile("" : "+r"(idx));
			if (!row || idx >= LB4_MAGLEV_M)
				return SKIFF_TCX_NEXT;
			val.backend_id = row->backend_ids[idx];
			be = bpf_map_lookup_elem(&be4, &val.backend_id);
		} else {
			sk.slot = (__u16)(bpf_get_prandom_u32() % svc->count) + 1;
			slot = bpf_map_lookup_elem(&svc4, &sk);
			if (!slot) {
				stat_inc(LB_STAT_BACKEND_MISSING);
				return SKIFF_TCX_NEXT;
			}
			val.backend_id = slot->id;
			be = bpf_map_lookup_elem(&be4, &val.backend_id);
		}
		if (!be) {
			stat_inc(LB_STAT_BACKEND_MISSING); /* the agent writes backends first: a bug */
			return SKIFF_TCX_NEXT;
		}
		val.addr = be->ip;
		val.port = be->port;
		val.svc_id = svc->id;
		val.flags = be->flags & LB4_BACKEND_F_REMOTE ? CT_F_SNAT : 0;
		val.last_ns = bpf_ktime_get_ns();
		{
			/* Reply direction: backend -> client, restore the node address and port. */
			struct ct4_key rk = { .saddr = be->ip, .daddr = f.saddr, .sport = be->port, .dport = f.sport,
					      .proto = f.proto, .flags = CT_REPLY };
			struct ct4_val rv = { .addr = f.daddr, .port = f.dport, .svc_id = svc->id, .last_ns = val.last_ns };

			bpf_map_update_elem(&ct4, &rk, &rv, BPF_ANY);
		}
		if (be->flags & LB4_BACKEND_F_REMOTE) {
			/* After DNAT: client -> backend; the egress program picks the SNAT port. */
			struct ct4_key snk = { .saddr = f.saddr, .daddr = be->ip, .sport = f.sport, .dport = be->port,
					       .proto = f.proto, .flags = CT_SNAT };
			struct ct4_val snv = { .svc_id = svc->id, .last_ns = val.last_ns };

			bpf_map_update_elem(&ct4, &snk, &snv, BPF_ANY);
		}
		bpf_map_update_elem(&ct4, &key, &val, BPF_ANY);
		stat_inc(LB_STAT_NODEPORT_NEW);
	}
	if (rewrite(skb, &f, IP_DST_OFF, f.daddr, val.addr, offsetof(struct tcphdr, dest), f.dport, val.port))
		return SKIFF_TCX_DROP;
	return SKIFF_TCX_NEXT;
}

/* Chooses the SNAT port of a flow leaving by this interface: the first free one from a
 * per-flow starting point, free meaning no other flow to the same backend uses
 * (NODE_IP, port). Returns 0 when none was found. */
static __always_inline __be16 snat_port(const struct flow *f, __u64 now)
{
	const __u32 range = SNAT_PORT_MAX - SNAT_PORT_MIN + 1;
	struct ct4_key uk = { .saddr = f->daddr, .daddr = NODE_IP, .sport = f->dport, .proto = f->proto,
			      .flags = CT_UNSNAT };
	struct ct4_val uv = { .addr = f->saddr, .port = f->sport, .last_ns = now };
	__u32 start = flow_hash(f);

	for (__u32 i = 0; i < SNAT_TRIES; i++) {
		__be16 port = bpf_htons((__u16)(SNAT_PORT_MIN + (start + i) % range));

		uk.dport = port;
		if (bpf_map_update_elem(&ct4, &uk, &uv, BPF_NOEXIST) == 0)
			return port;
	}
	return 0;
}

/* Whether the flow keeps its SNAT port `port`: its CT_UNSNAT entry still names this flow's
 * client (refreshed here, so a flow whose replies are rare keeps it), or was missing (LRU
 * eviction, GC of an entry idle one way) and could be put back. Without this check a lost
 * reverse entry would free the port for another flow to the same backend while this one still
 * used it, and both flows' replies would go to one client. */
static __always_inline int snat_keep(const struct flow *f, __be16 port, __u64 now)
{
	struct ct4_key uk = { .saddr = f->daddr, .daddr = NODE_IP, .sport = f->dport, .dport = port,
			      .proto = f->proto, .flags = CT_UNSNAT };
	struct ct4_val uv = { .addr = f->saddr, .port = f->sport, .last_ns = now };
	struct ct4_val *u = bpf_map_lookup_elem(&ct4, &uk);

	if (u) {
		if (u->addr != f->saddr || u->port != f->sport)
			return 0; /* taken by another flow meanwhile */
		u->last_ns = now;
		return 1;
	}
	return bpf_map_update_elem(&ct4, &uk, &uv, BPF_NOEXIST) == 0;
}

static __always_inline int nodeport_reverse(struct __sk_buff *skb)
{
	struct flow f = {};
	struct ct4_key key = {};
	struct ct4_val *ct;
	__u64 now;

	if (parse(skb, &f))
		return SKIFF_TCX_NEXT;
	now = bpf_ktime_get_ns();
	ct_key(&key, &f, CT_REPLY);
	ct = bpf_map_lookup_elem(&ct4, &key);
	if (ct) {
		/* The flow's CT_FORWARD entry (client -> NODE_IP:nodePort), refreshed by replies too. */
		struct ct4_key fk = { .saddr = f.daddr, .daddr = ct->addr, .sport = f.dport, .dport = ct->port,
				      .proto = f.proto, .flags = CT_FORWARD };

		ct->last_ns = now;
		ct_touch(&fk, now);
		if (rewrite(skb, &f, IP_SRC_OFF, f.saddr, ct->addr, offsetof(struct tcphdr, source), f.sport, ct->port))
			return SKIFF_TCX_DROP;
		return SKIFF_TCX_NEXT;
	}
	ct_key(&key, &f, CT_SNAT);
	ct = bpf_map_lookup_elem(&ct4, &key);
	if (!ct)
		return SKIFF_TCX_NEXT;
	ct->last_ns = now;
	if (ct->addr != NODE_IP || !ct->port || !snat_keep(&f, ct->port, now)) {
		/* First packet out (or the route moved to another interface, or the port was lost):
		 * choose a port here. */
		__be16 port = snat_port(&f, now);

		if (!port) {
			stat_inc(LB_STAT_SNAT_FAIL);
			return SKIFF_TCX_DROP; /* every tried port is taken */
		}
		stat_inc(LB_STAT_SNAT);
		ct->addr = NODE_IP;
		ct->port = port;
	}
	if (rewrite(skb, &f, IP_SRC_OFF, f.saddr, ct->addr, offsetof(struct tcphdr, source), f.sport, ct->port))
		return SKIFF_TCX_DROP;
	return SKIFF_TCX_NEXT;
}

SEC("classifier")
int nodeport_in(struct __sk_buff *skb)
{
	return nodeport_forward(skb);
}

SEC("classifier")
int nodeport_out(struct __sk_buff *skb)
{
	return nodeport_reverse(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
