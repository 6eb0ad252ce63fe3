//! Test helper process for the data-plane tests: `serve` runs TCP and UDP servers that answer
//! with their own id (and, asked `src`, the source address they see; `--netns` may repeat, each
//! server binds in the namespace named last before it); `client` joins a cgroup and a network namespace and runs probe commands read
//! from stdin, one line of result per command.
//!
//! Client commands (results start with `ok` or `err <kind>`):
//! - `tcp IP PORT N`: N sequential connections; `ok ID,ID,... peer=IP:PORT` (last peer address)
//! - `tcpports IP PORT N`: N connections; `ok ID:LOCALPORT,...`
//! - `tcpsrc IP PORT N`: N connections, each asks the server which source address it saw;
//!   `ok ID@SRCIP:SRCPORT,... peer=IP:PORT`
//! - `udpsrc IP PORT N`: N new sockets, one `src` datagram each; `ok ID@SRC,... from=ADDR,...`
//! - `udp IP PORT N`: N new unconnected sockets, one datagram each; `ok ID,... from=ADDR,...`
//! - `udpconn IP PORT N`: one connected socket, N datagrams; `ok ID,... peer=ADDR`
//! - `tcpfrom IP PORT SRCPORT`: one connection from local port SRCPORT, closed with a reset
//!   (no `TIME_WAIT`, so the same tuple can be used again at once); `ok ID`
//! - `udpfrom IP PORT SRCPORT`: one datagram from a socket on local port SRCPORT; `ok ID`
//! - `hold IP PORT`: opens a connection and keeps it; `ok INDEX ID`
//! - `bind IP PORT` / `bindudp IP PORT`: binds a TCP listener / UDP socket and closes it;
//!   `ok bound`
//! - `ping INDEX`: a round trip on a held connection; `ok ECHO`

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("client") => client(&args[1..]),
        _ => Err("usage: skiff-netprobe serve|client ...".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-netprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn join_netns(path: &str) -> Result<(), String> {
    let f = fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))
}

/// `serve --netns PATH (--tcp|--udp) IP:PORT=ID ...`
fn serve(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    let mut handles = Vec::new();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--netns" => join_netns(value)?,
            "--tcp" | "--udp" => {
                let (addr, id) = value.split_once('=').ok_or(format!("bad server spec {value}"))?;
                let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
                let id = id.to_owned();
                if flag == "--tcp" {
                    let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
                    handles.push(std::thread::spawn(move || tcp_server(&l, &id)));
                } else {
                    let s = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
                    handles.push(std::thread::spawn(move || udp_server(&s, &id)));
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn tcp_server(l: &TcpListener, id: &str) {
    for conn in l.incoming().flatten() {
        let id = id.to_owned();
        std::thread::spawn(move || {
            let mut w = conn;
            if writeln!(w, "{id}").is_err() {
                return;
            }
            let src = w.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let Ok(r) = w.try_clone() else { return };
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                let answer = if line == "src" { &src } else { &line };
                if writeln!(w, "{id} {answer}").is_err() {
                    return;
                }
            }
        });
    }
}

fn udp_server(s: &UdpSocket, id: &str) {
    let mut buf = [0u8; 1500];
    while let Ok((len, from)) = s.recv_from(&mut buf) {
        if &buf[..len] == b"src" {
            let _ = s.send_to(format!("{id}@{from}").as_bytes(), from);
        } else {
            let _ = s.send_to(id.as_bytes(), from);
        }
    }
}

/// `client --cgroup DIR --netns PATH`, commands on stdin.
fn client(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            // Before any socket exists: the cgroup of a socket is fixed when it is created.
            "--cgroup" => {
                fs::write(format!("{value}/cgroup.procs"), std::process::id().to_string())
                    .map_err(|e| format!("join cgroup {value}: {e}"))?;
            }
            "--netns" => join_netns(value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let mut held: Vec<(BufReader<TcpStream>, TcpStream)> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = run(&words, &mut held).unwrap_or_else(|e| format!("err {e}"));
        writeln!(out, "{answer}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

fn target(words: &[&str]) -> Result<(SocketAddr, usize), String> {
    let ip = words.get(1).ok_or("missing ip")?;
    let port = words.get(2).ok_or("missing port")?;
    let addr: SocketAddr =
        format!("{ip}:{port}").parse().map_err(|e| format!("bad address: {e}"))?;
    let n = words.get(3).map_or(Ok(1), |n| n.parse::<usize>()).map_err(|e| e.to_string())?;
    Ok((addr, n))
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut s = String::new();
    r.read_line(&mut s).map_err(|e| kind(&e))?;
    if s.is_empty() {
        return Err("Eof".into());
    }
    Ok(s.trim().to_owned())
}

fn connect(addr: SocketAddr) -> Result<(BufReader<TcpStream>, TcpStream), String> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| kind(&e))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| kind(&e))?;
    let r = s.try_clone().map_err(|e| kind(&e))?;
    Ok((BufReader::new(r), s))
}

/// `tcpfrom IP PORT SRCPORT`.
fn tcp_from(words: &[&str]) -> Result<String, String> {
    let (addr, src) = target(words)?;
    let src = u16::try_from(src).map_err(|e| format!("bad source port: {e}"))?;
    let s = connect_from(addr, src)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| kind(&e))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| kind(&e))?);
    Ok(format!("ok {}", read_line(&mut r)?))
}

/// `udpfrom IP PORT SRCPORT`.
fn udp_from(words: &[&str]) -> Result<String, String> {
    let (addr, src) = target(words)?;
    let src = u16::try_from(src).map_err(|e| format!("bad source port: {e}"))?;
    let s = UdpSocket::bind(("0.0.0.0", src)).map_err(|e| kind(&e))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| kind(&e))?;
    s.send_to(b"x", addr).map_err(|e| kind(&e))?;
    let mut buf = [0u8; 1500];
    let (len, _) = s.recv_from(&mut buf).map_err(|e| kind(&e))?;
    Ok(format!("ok {}", String::from_utf8_lossy(&buf[..len])))
}

/// A TCP connection from local port `port` to `addr` whose close sends a reset (linger 0).
fn connect_from(addr: SocketAddr, port: u16) -> Result<TcpStream, String> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(v4) = addr else { return Err("IPv4 only".into()) };
    let e = |e: nix::Error| format!("{:?}", std::io::Error::from(e).kind());
    let fd =
        socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(e)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(e)?;
    setsockopt(&fd, sockopt::Linger, &nix::libc::linger { l_onoff: 1, l_linger: 0 }).map_err(e)?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port)).map_err(e)?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).map_err(e)?;
    Ok(TcpStream::from(fd))
}

fn run(
    words: &[&str],
    held: &mut Vec<(BufReader<TcpStream>, TcpStream)>,
) -> Result<String, String> {
    match words.first().copied() {
        Some("tcp") => {
            let (addr, n) = target(words)?;
            let mut ids = Vec::new();
            let mut peer = String::new();
            for _ in 0..n {
                let (mut r, s) = connect(addr)?;
                peer = s.peer_addr().map_err(|e| kind(&e))?.to_string();
                ids.push(read_line(&mut r)?);
            }
            Ok(format!("ok {} peer={peer}", ids.join(",")))
        }
        Some("tcpfrom") => tcp_from(words),
        Some("udpfrom") => udp_from(words),
        Some("tcpports") => {
            let (addr, n) = target(words)?;
            let mut out = Vec::new();
            for _ in 0..n {
                let (mut r, s) = connect(addr)?;
                let local = s.local_addr().map_err(|e| kind(&e))?.port();
                out.push(format!("{}:{local}", read_line(&mut r)?));
            }
            Ok(format!("ok {}", out.join(",")))
        }
        Some("tcpsrc") => {
            let (addr, n) = target(words)?;
            let mut out = Vec::new();
            let mut peer = String::new();
            for _ in 0..n {
                let (mut r, mut s) = connect(addr)?;
                peer = s.peer_addr().map_err(|e| kind(&e))?.to_string();
                let id = read_line(&mut r)?;
                writeln!(s, "src").map_err(|e| kind(&e))?;
                let answer = read_line(&mut r)?;
                let src = answer.strip_prefix(&format!("{id} ")).unwrap_or(&answer).to_owned();
                out.push(format!("{id}@{src}"));
            }
            Ok(format!("ok {} peer={peer}", out.join(",")))
        }
        Some(cmd @ ("udp" | "udpsrc")) => {
            let payload: &[u8] = if cmd == "udpsrc" { b"src" } else { b"x" };
            let (addr, n) = target(words)?;
            let mut ids = Vec::new();
            let mut froms = BTreeSet::new();
            let mut buf = [0u8; 1500];
            for _ in 0..n {
                let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| kind(&e))?;
                s.set_read_timeout(Some(TIMEOUT)).map_err(|e| kind(&e))?;
                s.send_to(payload, addr).map_err(|e| kind(&e))?;
                let (len, from) = s.recv_from(&mut buf).map_err(|e| kind(&e))?;
                ids.push(String::from_utf8_lossy(&buf[..len]).into_owned());
                froms.insert(from.to_string());
            }
            Ok(format!(
                "ok {} from={}",
                ids.join(","),
                froms.into_iter().collect::<Vec<_>>().join(",")
            ))
        }
        Some("udpconn") => {
            let (addr, n) = target(words)?;
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| kind(&e))?;
            s.set_read_timeout(Some(TIMEOUT)).map_err(|e| kind(&e))?;
            s.connect(addr).map_err(|e| kind(&e))?;
            let mut ids = Vec::new();
            let mut buf = [0u8; 1500];
            for _ in 0..n {
                s.send(b"x").map_err(|e| kind(&e))?;
                let len = s.recv(&mut buf).map_err(|e| kind(&e))?;
                ids.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
            let peer = s.peer_addr().map_err(|e| kind(&e))?;
            Ok(format!("ok {} peer={peer}", ids.join(",")))
        }
        Some(cmd @ ("bind" | "bindudp")) => {
            let (addr, _) = target(words)?;
            if cmd == "bind" {
                drop(TcpListener::bind(addr).map_err(|e| kind(&e))?);
            } else {
                drop(UdpSocket::bind(addr).map_err(|e| kind(&e))?);
            }
            Ok("ok bound".to_owned())
        }
        Some("hold") => {
            let (addr, _) = target(words)?;
            let (mut r, s) = connect(addr)?;
            let id = read_line(&mut r)?;
            held.push((r, s));
            Ok(format!("ok {} {id}", held.len() - 1))
        }
        Some("ping") => {
            let i: usize = words.get(1).ok_or("missing index")?.parse().map_err(|_| "bad index")?;
            let (r, s) = held.get_mut(i).ok_or("no such connection")?;
            writeln!(s, "ping").map_err(|e| kind(&e))?;
            Ok(format!("ok {}", read_line(r)?))
        }
        _ => Err("unknown command".into()),
    }
}
