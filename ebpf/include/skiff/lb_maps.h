/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The Service maps both load-balancing programs share (socket LB in sock_lb.c, NodePort in
 * tc_nodeport.c). Pinned by name, so whichever object loads first creates each pin and the
 * other reuses it; defining them once keeps the two definitions identical, which pin reuse
 * requires. The agent sizes them before loading (max_entries here are defaults). */
#ifndef SKIFF_LB_MAPS_H
#define SKIFF_LB_MAPS_H

#include "skiff/lb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb4_svc_key);
	__type(value, struct lb4_svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} be4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct lb4_maglev_row);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} maglev4 SEC(".maps");

/* Per-CPU counters of both programs (enum lb_stat). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_stats SEC(".maps");

static __always_inline void stat_inc(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&lb_stats, &which);

	if (c)
		*c += 1; /* per-CPU value: no other CPU writes it */
}

#endif
