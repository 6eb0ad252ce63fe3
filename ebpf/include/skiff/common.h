/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes and constants shared by every Skiff eBPF program. */
#ifndef SKIFF_COMMON_H
#define SKIFF_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/*
 * tcx return codes. TC_ACT_OK (0) means TCX_PASS, which *stops* the tcx chain; a program that
 * only observes returns TCX_NEXT so programs attached after it still run.
 */
#define SKIFF_TCX_NEXT (-1)
#define SKIFF_TCX_PASS 0
#define SKIFF_TCX_DROP 2

#endif /* SKIFF_COMMON_H */
