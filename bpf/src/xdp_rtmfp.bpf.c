// SPDX-License-Identifier: Apache-2.0 OR MIT
// Updraft's XDP program: steers RTMFP datagrams to the AF_XDP socket of the receiving queue.
//
// The decision is the one of `classify.rs` (its Rust reference):
// - anything that is not IPv4 or IPv6 UDP to a configured port passes, untouched;
// - a source in the deny list (LPM tries, IPv4 and IPv6) is dropped;
// - a UDP payload that cannot be RTMFP is dropped: under 20 bytes, or not the 4-byte session ID
//   and whole 16-byte cipher blocks (RFC 7016 §2.2.2, RFC 7425 §4.6.4);
// - the rest is redirected to the XSKMAP slot of the receiving queue, or passes if it is empty.
// Each verdict is counted in a per-CPU array.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_PORTS 8
#define MAX_QUEUES 64
#define MAX_DENY 65536
#define VLAN_TAG_LEN 4
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IPV4_FRAGMENT_MASK 0x3FFF
#define RTMFP_MIN_LEN 20
#define RTMFP_SSID_LEN 4
#define RTMFP_BLOCK_MASK 15

enum verdict { V_PASS, V_DROP_DENIED, V_DROP_MALFORMED, V_REDIRECT, V_REDIRECT_EMPTY, V_COUNT };

struct config {
	__u16 ports[MAX_PORTS];
	__u32 nports;
};

struct deny_v4_key {
	__u32 prefixlen;
	__u32 addr;
};

struct deny_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_DENY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct deny_v4_key);
	__type(value, __u8);
} deny_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_DENY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct deny_v6_key);
	__type(value, __u8);
} deny_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, V_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

static __always_inline int count(__u32 v, int action)
{
	__u64 *n = bpf_map_lookup_elem(&verdicts, &v);
	if (n)
		*n += 1;
	return action;
}

static __always_inline int port_served(const struct config *c, __u16 port)
{
#pragma unroll
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i < c->nports && c->ports[i] == port)
			return 1;
	}
	return 0;
}

SEC("xdp")
int xdp_rtmfp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return count(V_PASS, XDP_PASS);
	__u16 proto = eth->h_proto;
	void *at = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
			if (at + VLAN_TAG_LEN > end)
				return count(V_PASS, XDP_PASS);
			proto = *(__u16 *)(at + 2);
			at += VLAN_TAG_LEN;
		}
	}

	struct deny_v4_key k4 = {};
	struct deny_v6_key k6 = {};
	int v6 = 0;
	struct udphdr *udp;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = at;
		if ((void *)(ip + 1) > end || ip->version != 4 || ip->protocol != IPPROTO_UDP)
			return count(V_PASS, XDP_PASS);
		if (ip->frag_off & bpf_htons(IPV4_FRAGMENT_MASK))
			return count(V_PASS, XDP_PASS);
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return count(V_PASS, XDP_PASS);
		udp = at + ihl;
		k4.prefixlen = 32;
		k4.addr = ip->saddr;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = at;
		if ((void *)(ip6 + 1) > end || ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
			return count(V_PASS, XDP_PASS);
		udp = (void *)(ip6 + 1);
		v6 = 1;
		k6.prefixlen = 128;
		__builtin_memcpy(k6.addr, &ip6->saddr, 16);
	} else {
		return count(V_PASS, XDP_PASS);
	}
	if ((void *)(udp + 1) > end)
		return count(V_PASS, XDP_PASS);
	__u32 udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) || (void *)udp + udp_len > end)
		return count(V_PASS, XDP_PASS);

	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&config, &zero);
	if (!c || !port_served(c, bpf_ntohs(udp->dest)))
		return count(V_PASS, XDP_PASS);

	if (v6 ? bpf_map_lookup_elem(&deny_v6, &k6) != 0 : bpf_map_lookup_elem(&deny_v4, &k4) != 0)
		return count(V_DROP_DENIED, XDP_DROP);

	__u32 payload = udp_len - sizeof(*udp);
	if (payload < RTMFP_MIN_LEN || ((payload - RTMFP_SSID_LEN) & RTMFP_BLOCK_MASK) != 0)
		return count(V_DROP_MALFORMED, XDP_DROP);

	int action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	return count(action == XDP_REDIRECT ? V_REDIRECT : V_REDIRECT_EMPTY, action);
}

// No GPL-only helper is used, so the project's licence stands.
char LICENSE[] SEC("license") = "Apache-2.0 OR MIT";
