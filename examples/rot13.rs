//! A legacy filter: reads lines on stdin, writes them ROT13'd on stdout,
//! and knows nothing about sockets. One config entry makes it a network
//! service (see conf/summond.toml, service "rot13"): summond hands each
//! connection over as stdin and stdout, the inetd way.

use std::io::{BufRead, Write};

fn rot13(c: u8) -> u8 {
    match c {
        b'a'..=b'z' => (c - b'a' + 13) % 26 + b'a',
        b'A'..=b'Z' => (c - b'A' + 13) % 26 + b'A',
        _ => c,
    }
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().split(b'\n') {
        let Ok(mut line) = line else { break };
        line.iter_mut().for_each(|c| *c = rot13(*c));
        line.push(b'\n');
        // Flush per line: the client is waiting for each answer.
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}
