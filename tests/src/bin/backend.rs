//! A demo/test target: HTTP on one port answering its own name, UDP echo on another.
use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The name every HTTP response body carries.
    #[arg(long)]
    name: String,
    #[arg(long)]
    http: String,
    #[arg(long)]
    udp: String,
}

/// Idle keep-alive connections are closed after this long.
const IDLE: Duration = Duration::from_secs(120);

fn serve_http(stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    loop {
        let mut close = false;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let body = format!("{name}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        // One write: a response split over segments meets Nagle + delayed ACK.
        w.write_all(resp.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let http = TcpListener::bind(&args.http)?;
    let udp = UdpSocket::bind(&args.udp)?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    println!("{} ready: http {} udp {}", args.name, args.http, args.udp);
    for stream in http.incoming().flatten() {
        let name = args.name.clone();
        std::thread::spawn(move || {
            let _ = serve_http(stream, &name);
        });
    }
    Ok(())
}
