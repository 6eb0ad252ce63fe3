// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Per-CPU packet and byte counters by traffic class, for tc (tcx) ingress or egress.
 * The smallest real program of the data plane: it proves the build → load → attach → map-read
 * path end to end and gives the agent per-interface traffic counters.
 */
#include "skiff/common.h"
#include "skiff/counters.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SKIFF_CLASS_MAX);
	__type(key, __u32);
	__type(value, struct skiff_counter);
} skiff_counters SEC(".maps");

static __always_inline __u32 classify(const struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end)
		return SKIFF_CLASS_OTHER;
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP):
		return SKIFF_CLASS_ARP;
	case bpf_htons(ETH_P_IPV6):
		return SKIFF_CLASS_IPV6;
	case bpf_htons(ETH_P_IP):
		break;
	default:
		return SKIFF_CLASS_OTHER;
	}
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return SKIFF_CLASS_OTHER;
	switch (ip->protocol) {
	case IPPROTO_TCP:
		return SKIFF_CLASS_IPV4_TCP;
	case IPPROTO_UDP:
		return SKIFF_CLASS_IPV4_UDP;
	case IPPROTO_ICMP:
		return SKIFF_CLASS_IPV4_ICMP;
	default:
		return SKIFF_CLASS_IPV4_OTHER;
	}
}

static __always_inline int count_packet(struct __sk_buff *skb)
{
	__u32 class = classify(skb);
	struct skiff_counter *c = bpf_map_lookup_elem(&skiff_counters, &class);

	if (c) {
		/* Per-CPU value: no other CPU writes it, so plain increments are race-free. */
		c->packets += 1;
		c->bytes += skb->len;
	}
	return SKIFF_TCX_NEXT;
}

SEC("classifier")
int count_packets(struct __sk_buff *skb)
{
	return count_packet(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
