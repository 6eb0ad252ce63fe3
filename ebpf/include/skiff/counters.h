/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet/byte counters by traffic class. The agent mirrors `struct skiff_counter` and the class
 * numbering in agent/src/ebpf/counters.rs; change both together.
 */
#ifndef SKIFF_COUNTERS_H
#define SKIFF_COUNTERS_H

#include <linux/types.h>

enum skiff_class {
	SKIFF_CLASS_OTHER = 0, /* not IPv4, IPv6 or ARP, or truncated */
	SKIFF_CLASS_ARP = 1,
	SKIFF_CLASS_IPV4_TCP = 2,
	SKIFF_CLASS_IPV4_UDP = 3,
	SKIFF_CLASS_IPV4_ICMP = 4,
	SKIFF_CLASS_IPV4_OTHER = 5,
	SKIFF_CLASS_IPV6 = 6,
	SKIFF_CLASS_MAX = 7,
};

struct skiff_counter {
	__u64 packets;
	__u64 bytes; /* skb->len: the whole frame as tc sees it, L2 header included */
};

#endif /* SKIFF_COUNTERS_H */
