//! Proof that the eBPF path works end to end: `ebpf/tc_counters.c`, built by the agent's build
//! script, loaded with aya and attached with tcx to a veth between two network namespaces,
//! counts real traffic exactly; everything is removed afterwards, also when the test fails.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use skiff_agent::kernel::bpf::{Direction, PacketCounter, TcCounters, TrafficClass};
use skiff_agent::kernel::link::{Ip, Ipv4Net};
use skiff_agent::kernel::netns::NetNs;
use skiff_e2e::{privileged, unique_tag};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);
const DATAGRAMS: u64 = 20;
const PAYLOAD: usize = 100;
/// Ethernet (14) + IPv4 (20) + UDP (8) + payload: tc counts whole frames.
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

#[test]
fn tc_counters_count_real_traffic_between_namespaces() {
    if !privileged::privileged("tc_counters_count_real_traffic_between_namespaces") {
        return;
    }
    let tag = unique_tag();
    let (client_ns, server_ns) = (format!("skt-{tag}-client"), format!("skt-{tag}-server"));
    let (client_dev, server_dev) = (format!("skt{tag}c"), format!("skt{tag}s"));
    {
        let client = NetNs::create(&client_ns).unwrap();
        let server = NetNs::create(&server_ns).unwrap();
        Ip::netns(&client).add_veth(&client_dev, &server_dev, Some(&server)).unwrap();
        for (ns, dev, addr) in [(&client, &client_dev, CLIENT), (&server, &server_dev, SERVER)] {
            let ip = Ip::netns(ns);
            // No IPv6 autoconfiguration chatter: the counts below are exact.
            ip.set_sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
            ip.set_sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1").unwrap();
            ip.add_address(dev, Ipv4Net::new(addr, 30)).unwrap();
            ip.set_up(dev).unwrap();
            ip.set_up("lo").unwrap();
        }

        let counters =
            server.run(|| TcCounters::attach(&server_dev, Direction::Ingress)).unwrap().unwrap();
        assert_eq!(counters.read().unwrap()[&TrafficClass::Ipv4Udp], PacketCounter::default());

        // UDP: a known number of datagrams of a known size.
        let rx = server.run(|| UdpSocket::bind((SERVER, 9999))).unwrap().unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = client.run(|| UdpSocket::bind((CLIENT, 0))).unwrap().unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..DATAGRAMS {
            tx.send_to(&[u8::try_from(i).unwrap(); PAYLOAD], (SERVER, 9999)).unwrap();
            let (n, from) = rx.recv_from(&mut buf).expect("datagram arrives");
            assert_eq!((n, from.ip()), (PAYLOAD, CLIENT.into()));
        }

        // TCP: one connection carrying 64 KiB, echoed by a server thread.
        let listener = server.run(|| TcpListener::bind((SERVER, 8080))).unwrap().unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut data = Vec::new();
            s.read_to_end(&mut data).unwrap();
            data.len()
        });
        let mut stream = client
            .run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((SERVER, 8080)),
                    Duration::from_secs(5),
                )
            })
            .unwrap()
            .unwrap();
        stream.write_all(&vec![7u8; 64 * 1024]).unwrap();
        drop(stream);
        assert_eq!(echo.join().unwrap(), 64 * 1024);

        let totals = counters.read().unwrap();
        println!("tc ingress counters on {server_dev}:");
        for (class, c) in &totals {
            println!("  {class:?}: {} packets, {} bytes", c.packets, c.bytes);
        }
        assert_eq!(
            totals[&TrafficClass::Ipv4Udp],
            PacketCounter { packets: DATAGRAMS, bytes: DATAGRAMS * FRAME }
        );
        let tcp = totals[&TrafficClass::Ipv4Tcp];
        assert!(tcp.packets >= 3, "handshake, data and FIN at least: {tcp:?}");
        assert!(tcp.bytes > 64 * 1024, "all 64 KiB passed ingress: {tcp:?}");
        assert!(totals[&TrafficClass::Arp].packets >= 1, "the client resolved the server");
        assert_eq!(totals[&TrafficClass::Ipv6].packets, 0, "IPv6 was disabled");

        drop(counters); // detaches the program
        client.delete().unwrap();
        server.delete().unwrap();
    }
    for ns in [&client_ns, &server_ns] {
        assert!(!Path::new("/run/netns").join(ns).exists(), "{ns} left behind");
    }
}
